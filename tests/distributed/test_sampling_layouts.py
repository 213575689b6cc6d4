"""Sampling under tensor parallelism and ZeRO-3 (SPEC §5): TP ranks of a replica draw the same
tokens, and ZeRO-3's data-parallel ranks run the same number of forwards whatever their prompts.

Three torchrun jobs (gloo, CPU) run ``sampling_worker.py``: tp=1 (one rank), tp=2 (two ranks)
and ZeRO-3 dp=2. Each job is bounded by a timeout: a rank left waiting in a collective by a peer
that stopped early is a hang, and a hang fails the test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.engine.launch.ports import free_port

WORKER = Path(__file__).with_name("sampling_worker.py")
TIMEOUT_S = 540

pytestmark = pytest.mark.distributed


def run_worker(out: Path, *, nproc: int, cases: list[str]) -> dict:
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", str(WORKER), "--out", str(out), "--cases", ",".join(cases)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(argv, env=env, cwd=out.parent, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as hang:
        pytest.fail(f"{cases} on {nproc} ranks did not finish in {TIMEOUT_S} s (a rank waits in a collective): "
                    f"{(hang.stderr or b'')[-2000:]!r}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())["results"]


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sampling_layouts")


@pytest.fixture(scope="module")
def tp1(job_dir) -> dict:
    return run_worker(job_dir / "tp1.json", nproc=1, cases=["rollout"])["rollout"][0]


@pytest.fixture(scope="module")
def tp2(job_dir) -> list[dict]:
    return run_worker(job_dir / "tp2.json", nproc=2, cases=["rollout"])["rollout"]


@pytest.fixture(scope="module")
def zero3(job_dir) -> dict:
    return run_worker(job_dir / "zero3.json", nproc=2, cases=["zero3_eos", "zero3_uneven"])


def test_ppo_rollouts_draw_the_same_tokens_on_both_tp_ranks_as_with_tp1(tp1, tp2):
    assert tp2[0]["tokens"] == tp2[1]["tokens"]
    assert tp2[0]["tokens"] == tp1["tokens"]
    assert tp2[0]["response_mask"] == tp1["response_mask"]
    assert len({tuple(row) for row in tp1["tokens"]}) == len(tp1["tokens"])   # really sampled: rows differ


def test_held_out_oracle_evaluation_is_the_same_under_tp2_as_tp1(tp1, tp2):
    assert tp2[0]["oracle"] == tp2[1]["oracle"]
    assert tp2[0]["oracle"] == pytest.approx(tp1["oracle"], abs=1e-12)


def test_zero3_ranks_whose_rows_end_at_different_steps_run_the_same_forwards(zero3):
    ranks = zero3["zero3_eos"]
    first_of_rank_0, rank_1 = ranks[0]["probes"][0][0], ranks[0]["probes"][1]
    assert first_of_rank_0 not in rank_1                                  # rank 1's row never draws rank 0's EOS
    assert ranks[0]["response_mask"][0][:2] == [1, 0]                     # rank 0 ended at its first token …
    assert ranks[1]["response_mask"][0] == [1] * 6                        # … rank 1 sampled all six
    assert ranks[0]["forwards"] == ranks[1]["forwards"]


def test_zero3_ranks_with_uneven_prompt_shares_run_the_same_forwards(zero3):
    ranks = zero3["zero3_uneven"]
    assert ranks[0]["forwards"] == ranks[1]["forwards"]
    assert ranks[0]["oracle"] == ranks[1]["oracle"]                        # one result, reduced over ranks
