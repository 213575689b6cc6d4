"""The run-directory lock on its own: held, released, left by a dead holder, and on a filesystem
without locks (where the holder's pid and host decide)."""
import errno
import fcntl
import io
import socket
import subprocess
import sys

import pytest

from orchestrator.runner import lock as run_lock
from orchestrator.runner.lock import LOCK_FILE, Holder, RunDirectoryInUse, RunLock, current_holder, lock_path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_held_directory_is_refused_with_the_holders_pid_and_host_and_free_again_after(tmp_path):
    with RunLock(tmp_path):
        assert current_holder(tmp_path).pid == run_lock.os.getpid()
        with pytest.raises(RunDirectoryInUse, match=rf"in use by `orchestrate run`, pid {run_lock.os.getpid()} on "
                                                    rf"host {socket.gethostname()} \(started "):
            with RunLock(tmp_path):
                pass
    assert current_holder(tmp_path) is None and (tmp_path / LOCK_FILE).read_text() == ""
    out = io.StringIO()
    with RunLock(tmp_path, out=out):
        pass
    assert out.getvalue() == ""   # a cleanly released lock is taken without a word


def test_node_ranks_hold_their_own_lock(tmp_path):
    with RunLock(tmp_path, node_rank=0), RunLock(tmp_path, node_rank=1):
        assert lock_path(tmp_path, node_rank=1).name == f"{LOCK_FILE}.node-1"
        with pytest.raises(RunDirectoryInUse):
            RunLock(tmp_path, node_rank=1).__enter__()


@pytest.fixture
def no_flock(monkeypatch):
    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)


def test_without_flock_a_live_holder_on_this_host_refuses_and_a_dead_one_is_taken_over(tmp_path, no_flock):
    path = tmp_path / LOCK_FILE
    path.write_text(Holder(pid=run_lock.os.getpid(), host=socket.gethostname(), started="now").line())
    with pytest.raises(RunDirectoryInUse, match="pid .* on host"):
        RunLock(tmp_path).__enter__()
    stale = dead_pid()
    path.write_text(Holder(pid=stale, host=socket.gethostname(), started="then").line())
    out = io.StringIO()
    with RunLock(tmp_path, out=out):
        assert f"pid={run_lock.os.getpid()} " in path.read_text()
    assert f"taking over {path} from pid {stale} on host {socket.gethostname()} (started then)" in out.getvalue()


def test_without_flock_a_holder_on_another_host_refuses(tmp_path, no_flock):
    (tmp_path / LOCK_FILE).write_text(Holder(pid=1, host="elsewhere", started="now").line())
    with pytest.raises(RunDirectoryInUse, match="pid 1 on host elsewhere"):
        RunLock(tmp_path).__enter__()
