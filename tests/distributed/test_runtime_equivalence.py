"""Every parallel dimension reproduces the single-process run (SPEC §5), and weights move between
layouts through the plain state dict (SPEC §8).

Three torchrun jobs (gloo, CPU) run ``runtime_worker.py``: the single-process references of every
case, all two-rank layouts one after another (DP=2 under ZeRO 1/2/3 and ZeRO-2 with optimizer
offload, EP=2 with 4 experts, TP=2 (also with a vocabulary padded for TP), PP=2 with 4 micro-batches, full recompute, the NaN skip), and
TP2×PP2×DP2 on eight ranks. Same tiny model, data and seed; 4 optimizer steps with gradient
clipping active in each.

Tolerance: fp32 — losses within 1e-5 absolute (about 20 ulps at a loss of 7.6; the runs differ
only in the order of floating-point sums), gradient norms and logits within 1e-5 as well.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.config.model import get_model
from orchestrator.model.gpt import GPT
from orchestrator.engine.launch.ports import free_port

WORKER = Path(__file__).with_name("runtime_worker.py")
TOL = 1e-5
TWO_RANK_CASES = ["dp2_zero1", "dp2_zero2", "dp2_zero3", "dp2_zero2_offload", "ep2", "ep2_zero2",
                  "dp2_recompute_full", "pp2_recompute_full", "tp2", "tp2_padded_vocab", "pp2"]
# (TP and PP run last in their job: they leave DeepSpeed's mpu set)
EIGHT_RANK_CASES = ["tp2_pp2_dp2"]
HANDOFF_CASES = ["tp2", "tp2_padded_vocab", "pp2", "tp2_pp2_dp2"]
VOCAB = {"tp2_padded_vocab": 2047}

pytestmark = pytest.mark.distributed


def run_worker(out: Path, *, nproc: int, cases: list[str], reference: bool = False) -> dict:
    """torchrun ``nproc`` ranks of the worker; returns rank 0's results by case."""
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", str(WORKER), "--out", str(out), "--cases", ",".join(cases)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv + (["--reference"] if reference else []), env=env, cwd=out.parent,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())["results"]


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runtime_equivalence")


@pytest.fixture(scope="module")
def reference(job_dir) -> dict:
    return run_worker(job_dir / "reference.json", nproc=1, cases=TWO_RANK_CASES + EIGHT_RANK_CASES, reference=True)


@pytest.fixture(scope="module")
def two_ranks(job_dir, reference) -> dict:
    return run_worker(job_dir / "two_ranks.json", nproc=2, cases=TWO_RANK_CASES + ["nan_skip"])


@pytest.fixture(scope="module")
def eight_ranks(job_dir, reference) -> dict:
    return run_worker(job_dir / "eight_ranks.json", nproc=8, cases=EIGHT_RANK_CASES)


def assert_same_run(parallel: dict, single: dict) -> None:
    assert parallel["skipped"] == single["skipped"] == [False] * len(single["losses"])
    assert parallel["losses"] == pytest.approx(single["losses"], abs=TOL, rel=0)
    assert parallel["grad_norms"] == pytest.approx(single["grad_norms"], abs=TOL, rel=0)
    assert single["losses"][-1] < single["losses"][0]          # the run trained at all


@pytest.mark.parametrize("case", TWO_RANK_CASES)
def test_two_rank_layout_gives_the_single_process_losses(case, two_ranks, reference):
    assert_same_run(two_ranks[case], reference[case])


def test_tp2_pp2_dp2_on_eight_ranks_gives_the_single_process_losses(eight_ranks, reference):
    layout = eight_ranks["tp2_pp2_dp2"]["layout"]
    assert (layout["tp"], layout["pp"], layout["dp"], layout["grad_accum"]) == (2, 2, 2, 4)
    assert_same_run(eight_ranks["tp2_pp2_dp2"], reference["tp2_pp2_dp2"])


def test_pipeline_case_fills_the_pipeline_with_at_least_four_micro_batches(two_ranks):
    assert two_ranks["pp2"]["layout"]["grad_accum"] >= 4 and two_ranks["pp2"]["layout"]["pp"] == 2


def test_nan_loss_on_one_rank_skips_the_step_on_every_rank_and_keeps_the_weights(two_ranks):
    report = two_ranks["nan_skip"]            # rank 1 alone returns a NaN loss at step 1
    assert report["skipped"] == [False, True, False]
    assert report["unchanged"] == [False, True, False]
    assert report["steps_done"] == [1, 1, 2]   # the LR schedule does not advance on a skipped step


def _probe_logits(state: dict, case: str) -> torch.Tensor:
    model = GPT(dataclasses.replace(get_model("tiny"), vocab=VOCAB.get(case, 2048)))
    model.load_state_dict(state)
    ids = torch.randint(0, model.config.vocab, (2, 32), generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        return model.eval()(ids).logits


def _results_for(case: str, request) -> Path:
    request.getfixturevalue("eight_ranks" if case in EIGHT_RANK_CASES else "two_ranks")
    return request.getfixturevalue("job_dir")


@pytest.mark.parametrize("case", HANDOFF_CASES)
def test_weights_trained_under_a_parallel_layout_give_the_same_logits_on_one_process(case, request):
    job_dir = _results_for(case, request)
    state = torch.load(job_dir / f"{case}_parallel_state.pt")
    expected = torch.load(job_dir / f"{case}_parallel_logits.pt")
    assert expected.shape[-1] == VOCAB.get(case, 2048)           # padding rows are not in the logits
    assert torch.allclose(_probe_logits(state, case), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("case", HANDOFF_CASES)
def test_single_process_weights_give_the_same_logits_under_a_parallel_layout(case, request):
    job_dir = _results_for(case, request)
    expected = torch.load(job_dir / f"{case}_reference_logits.pt")
    loaded = torch.load(job_dir / f"{case}_loaded_reference_logits.pt")
    assert torch.allclose(loaded, expected, atol=TOL, rtol=0)
