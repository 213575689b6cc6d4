"""The runtime under the real ``deepspeed`` launcher binary (not torchrun), and in a plain
``python`` process (a world of one): both train, and the two agree step for step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from orchestrator.engine.launch.ports import free_port

WORKER = Path(__file__).with_name("runtime_worker.py")
BIN = Path(sys.executable).parent


def run(argv: list[str], cwd: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", OMP_NUM_THREADS="1")
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.distributed
def test_deepspeed_launcher_runs_two_zero2_ranks_that_match_a_plain_single_process(tmp_path):
    launched, plain = tmp_path / "launched.json", tmp_path / "plain.json"
    run([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), str(WORKER),
         "--out", str(launched), "--cases", "dp2_zero2"], tmp_path)
    run([sys.executable, str(WORKER), "--out", str(plain), "--cases", "dp2_zero2", "--reference"], tmp_path)
    launched_run, plain_run = (json.loads(p.read_text()) for p in (launched, plain))
    assert (launched_run["world"], plain_run["world"]) == (2, 1)
    losses = launched_run["results"]["dp2_zero2"]["losses"]
    assert losses[-1] < losses[0]
    assert losses == pytest.approx(plain_run["results"]["dp2_zero2"]["losses"], abs=1e-5, rel=0)
