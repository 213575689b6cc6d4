"""A real full disk (a small tmpfs) during a checkpoint save, and during a run: one message naming
the path and the bytes to free, the previous checkpoint still what ``latest`` names, no staging
directory left behind."""
import json
import subprocess
from pathlib import Path

import pytest
import torch

from orchestrator.cli import main
from orchestrator.faults import EnvironmentFault
from orchestrator.handoff.checkpoint import (LATEST_FILE, commit, read_latest, save_faults, staging_dir, step_tag,
                                             verify_checkpoint)


@pytest.fixture
def small_disk(tmp_path, small_tmpfs):
    """A 1MiB tmpfs to fill."""
    return small_tmpfs(tmp_path / "disk", "1m")


def save(root: Path, step: int, tensor_elements: int) -> None:
    tag = step_tag(step)
    with save_faults(root, tag):
        staging = staging_dir(root, tag)
        torch.save({"w": torch.zeros(tensor_elements)}, staging / "model.pt")   # torch's writer: a RuntimeError
        (staging / "state.json").write_text(json.dumps({"step": step}))
        commit(root, tag, staging)


def test_a_save_that_fills_the_disk_is_one_message_and_the_previous_checkpoint_stays_latest(small_disk):
    root = small_disk / "checkpoints"
    save(root, 1, 200_000)                                                 # 800 kB: fits
    with pytest.raises(EnvironmentFault) as fault:
        save(root, 2, 200_000)                                             # 800 kB more: does not
    message = str(fault.value)
    assert message.startswith(f"no space left on {root} while saving checkpoint step_00000002 (")
    assert "a checkpoint of this phase takes about 801" in message and "free at least " in message
    assert f"the committed checkpoint {root / 'step_00000001'} is intact and a rerun resumes from it" in message
    assert read_latest(root) == root / "step_00000001" and (root / LATEST_FILE).read_text() == "step_00000001\n"
    verify_checkpoint(root / "step_00000001")
    assert sorted(p.name for p in root.iterdir()) == [LATEST_FILE, "step_00000001"]   # staging removed


def test_an_oserror_for_want_of_space_names_the_file(small_disk):
    root = small_disk / "checkpoints"
    with pytest.raises(EnvironmentFault, match=r"no space left on .*checkpoints while saving checkpoint step_00000003 "
                                               r".*no checkpoint of this phase was committed yet"):
        with save_faults(root, step_tag(3)):
            (staging_dir(root, step_tag(3)) / "big").write_bytes(b"x" * (2 << 20))
    assert list(root.iterdir()) == []


def test_a_read_only_checkpoint_directory_is_named_with_the_fix(small_disk):
    root = small_disk / "checkpoints"
    save(root, 1, 10)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(EnvironmentFault, match=r"read-only filesystem on .*checkpoints.* while saving checkpoint "
                                               r"step_00000002: check its owner and mode"):
        save(root, 2, 10)
    assert read_latest(root) == root / "step_00000001"


def test_a_run_on_a_full_disk_exits_1_with_the_path_and_no_traceback(small_disk, tmp_path, capsys):
    (small_disk / "filler").write_bytes(b"x" * ((1 << 20) - 4096))   # a few bytes left
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"name": "t", "model": "tiny", "phases": ["pretrain"],
                                  "run_dir": str(small_disk / "run")}))
    assert main(["run", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"orchestrate run: error: no space left on the device of {small_disk / 'run'}/")
    assert "free space there" in err and "Traceback" not in err
