"""Issue 14: a run checkpointed under one layout resumes under another with its optimizer state.

Each job (``sharded_worker.py``, gloo on CPU) trains the tiny GPT for 3 steps under the source
layout, writes the sharded checkpoint (every rank its own fp32 masters and Adam moments, nothing
gathered), and goes on for 5 steps: the uninterrupted run. The target layout loads the
checkpoint and trains the same 5 steps:

- its losses equal the uninterrupted run's to ≤ 1e-4 (fp32: the layouts differ only in the order
  of floating-point sums; measured ≤ 3e-7);
- the Adam moments of every tensor, as DeepSpeed reports them in each layout
  (``safe_get_full_optimizer_state``), are equal exactly right after the load;
- a control from the same weights with restarted moments (a layout-change resume before this
  issue) misses the uninterrupted losses by far more than 1e-4, so the first check can fail.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.engine.launch.ports import free_port

WORKER = Path(__file__).with_name("sharded_worker.py")
TOL = 1e-4

pytestmark = pytest.mark.distributed


def run_worker(directory: Path, *, nproc: int, case: str, role: str) -> dict:
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
            str(WORKER), "--case", case, "--role", role, "--dir", str(directory)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, env=env, cwd=WORKER.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((directory / f"{role}.json").read_text())


def assert_resumed_with_its_optimizer_state(saved: dict, loaded: dict) -> None:
    uninterrupted = saved["losses_after"]
    assert len(uninterrupted) == 5 and uninterrupted[-1] < saved["losses_before"][0]     # it trained
    assert loaded["losses_after"] == pytest.approx(uninterrupted, abs=TOL, rel=0)
    restarted_miss = max(abs(a - b) for a, b in zip(loaded["restarted_losses_after"], uninterrupted))
    assert restarted_miss > 10 * TOL
    for key, by_name in loaded["moment_diff"].items():
        assert len(by_name) == 28
        assert all(diff == 0.0 for diff in by_name.values()), (key, {n: d for n, d in by_name.items() if d})
    assert min(loaded["moment_size"].values()) > 0                 # every tensor's moments are live, not zeros


def test_a_dp2_zero3_checkpoint_resumes_under_tp2_with_its_adam_moments(tmp_path):
    result = run_worker(tmp_path, nproc=2, case="zero3_to_tp2", role="both")
    assert result["save"]["files"] == ["rank00000.json", "rank00000.safetensors", "rank00001.json",
                                       "rank00001.safetensors"]
    assert result["load"]["layout"] == {"tp": 2, "pp": 1, "dp": 1, "zero_stage": 0, "grad_accum": 4}
    assert_resumed_with_its_optimizer_state(result["save"], result["load"])


def test_a_tp2_pp2_dp2_checkpoint_resumes_under_dp4_zero2_with_its_adam_moments(tmp_path):
    """Eight ranks save (TP2 × PP2 × DP2, ZeRO-1, tied embedding on two stages), four load."""
    saved = run_worker(tmp_path, nproc=8, case="tp2_pp2_dp2_to_dp4_zero2", role="save")["save"]
    assert len(saved["files"]) == 8 * 2                        # every rank its .safetensors and .json
    loaded = run_worker(tmp_path, nproc=4, case="tp2_pp2_dp2_to_dp4_zero2", role="load")["load"]
    assert loaded["layout"] == {"tp": 1, "pp": 1, "dp": 4, "zero_stage": 2, "grad_accum": 2}
    assert_resumed_with_its_optimizer_state(saved, loaded)
