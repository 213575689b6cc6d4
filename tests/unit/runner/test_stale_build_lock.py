"""A JIT-build lock left by a killed build makes every later rank wait forever: the runner refuses
to launch, naming the file and the fix, and leaves a build under way (a fresh lock) alone."""
import os
import time

import pytest

from orchestrator.config.run import load_run_config
from orchestrator.runner.pipeline import run_pipeline
from orchestrator.runner.prepare import STALE_BUILD_SECONDS, stale_build_locks


def lock_in(root, name, *, age):
    path = root / name / "lock"
    path.parent.mkdir(parents=True)
    path.touch()
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_only_locks_older_than_a_build_are_stale(tmp_path):
    old = lock_in(tmp_path, "deepspeed_shm_comm", age=STALE_BUILD_SECONDS + 60)
    lock_in(tmp_path, "other_op", age=5)                                         # a build under way
    assert stale_build_locks({"TORCH_EXTENSIONS_DIR": str(tmp_path)}) == [old]
    assert stale_build_locks({"TORCH_EXTENSIONS_DIR": str(tmp_path / "none")}) == []


def test_a_run_with_a_stale_lock_is_refused_before_any_launch(tmp_path, monkeypatch):
    old = lock_in(tmp_path / "ext", "deepspeed_shm_comm", age=STALE_BUILD_SECONDS + 60)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    config = load_run_config({"name": "t", "run_dir": str(tmp_path / "run"), "model": {"preset": "tiny"},
                              "phases": ["pretrain"]})
    with pytest.raises(ValueError, match=rf"{old}: a JIT build .* left its lock.* remove it \(`rm {old}`\)"):
        run_pipeline(config, only="pretrain")
    assert not (tmp_path / "run" / "pretrain").exists()
