"""Environment faults named: which path, and the fix (``orchestrator/faults.py``), and the data
step's writes on a real full disk (a small tmpfs)."""
import errno

import pytest

from orchestrator.data.task import TaskConfig, write_task_files
from orchestrator.faults import describe, writing_under


@pytest.fixture
def small_disk(tmp_path, small_tmpfs):
    """A 64KiB tmpfs to fill."""
    return small_tmpfs(tmp_path / "disk", "64k")


@pytest.mark.parametrize("code,expected", [
    (errno.ENOSPC, "no space left on the device of {p} while writing: free space there ("),
    (errno.EACCES, "permission denied on {p} while writing: check its owner and mode (`ls -ld "),
    (errno.EROFS, "read-only filesystem on {p} while writing: check its owner and mode"),
    (errno.ENOENT, "{p} does not exist (or one of its parents is not a directory) while writing: create it"),
])
def test_each_fault_names_the_path_and_the_fix(tmp_path, code, expected):
    path = tmp_path / "run" / "pretrain" / "logs" / "launch.log"
    assert describe(OSError(code, "x", str(path))).startswith(expected.format(p=path))


def test_a_write_without_a_file_name_is_given_the_directory_written(tmp_path):
    with pytest.raises(OSError) as raised, writing_under(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert raised.value.filename == str(tmp_path) and raised.value.errno == errno.ENOSPC


def test_the_data_steps_task_files_on_a_full_disk_name_the_file_and_leave_no_temporary(small_disk):
    with pytest.raises(OSError) as raised:
        write_task_files(small_disk, config=TaskConfig(), k=4, seed=0)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename.startswith(str(small_disk) + "/")
    assert not [p for p in small_disk.iterdir() if ".tmp" in p.name]
