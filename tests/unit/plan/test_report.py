"""A fully fixed layout is reported in full, refused or not; the GPT-4 seed layout as the worked example."""
import dataclasses
import json

import pytest

from orchestrator.cli import main
from orchestrator.config.cluster import GiB, make_cluster
from orchestrator.config.model import get_model
from orchestrator.plan.evaluate import evaluate
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.report import layout_report
from orchestrator.plan.search import Fixed, search

SEED_ARGS = ["plan", "--model", "gpt4-moe", "--gpus", "25088", "--gpu", "a100-80g", "--global-batch-tokens", "60e6",
             "--seq", "8192", "--micro-batch", "1", "--tp", "8", "--pp", "16", "--dp", "196", "--ep", "1", "--zero", "0",
             "--uneven-pipeline", "--json"]


def seed_job() -> Job:
    return Job(model=get_model("gpt4-moe"), cluster=make_cluster(gpu="a100-80g", gpus=25088), seq=8192,
               batch=BatchTarget.from_tokens(60e6, seq=8192))


SEED = Layout(tp=8, pp=16, dp=196, ep=1, zero_stage=0, micro_batch=1, recompute="full", uneven_pipeline=True)


def test_the_seed_layout_has_its_bubble_and_parameters_and_does_not_fit():
    report = layout_report(evaluate(SEED, seed_job(), numbers_when_refused=True), seed_job())
    # 7252 sequences / dp 196 = 37 micro-batches: 1F1B bubble 15 / (37 + 15)
    assert report.prediction.bubble_fraction == pytest.approx(15 / 52, abs=1e-3)
    # 1.83T / (tp 8 × pp 16) = 14.3B per GPU on average; a first stage holds 8 of the 7.5 average layers
    share = report.params_per_gpu
    assert share.stage == "first" and 14e9 < share.total < 16e9
    assert 26 <= 2 * share.total / GiB <= 29
    assert report.fits is False and not report.runnable
    # too much memory, and (bf16, ZeRO 0, 37 micro-batches) gradients DeepSpeed would sum in bf16
    assert [issue["code"] for issue in report.errors] == ["memory", "bf16_accumulation"]
    assert "use more ep" in report.errors[0]["message"] and "zero_stage 1" in report.errors[1]["message"]
    assert report.layers_per_stage == [8] * 8 + [7] * 8


def test_expert_parallelism_makes_the_seed_layout_fit():
    for ep in (2, 4):
        evaluation = evaluate(dataclasses.replace(SEED, ep=ep, zero_stage=1), seed_job())
        assert evaluation.ok and evaluation.memory.fits, evaluation.errors
    assert evaluate(dataclasses.replace(SEED, ep=8, zero_stage=1), seed_job()).reason.code == "ep_dp"  # 196 % 8


def test_the_fixed_seed_layout_prints_every_variant_with_numbers_in_json(capsys):
    code = main(SEED_ARGS)
    rows = json.loads(capsys.readouterr().out)
    assert code == 2  # nothing of it fits
    assert [row["recompute"] for row in rows] == ["none", "selective", "full"]
    for row in rows:
        assert row["fits"] is False and row["runnable"] is False and row["errors"][0]["code"] == "memory"
        assert row["bubble_fraction"] == pytest.approx(0.288, abs=1e-3) and row["step_time_s"] > 0
        assert 26 <= row["params_per_gpu"]["gib_16bit"] <= 29
        assert row["memory_gib"] > 80 and set(row["memory_breakdown_gib"]) >= {"params", "grads", "optimizer"}


def test_a_layout_with_errors_still_reports_its_numbers(capsys):
    code = main(["plan", "--model", "gpt3-175b", "--gpus", "1024", "--gpu", "a100-80g", "--tp", "8", "--pp", "16",
                 "--zero", "2", "--micro-batch", "1", "--recompute", "full", "--json"])
    [row] = json.loads(capsys.readouterr().out)
    assert code == 2 and [issue["code"] for issue in row["errors"]] == ["zero_pp"]
    assert row["memory_gib"] > 0 and row["bubble_fraction"] > 0 and row["params_per_gpu"]["total"] > 1e9


def test_a_fixed_layout_in_text_gives_the_verdict_reasons_and_numbers(capsys):
    code = main([arg for arg in SEED_ARGS if arg != "--json"] + ["--recompute", "full"])
    err = capsys.readouterr().err
    assert code == 2
    for fragment in ("tp8 pp16 dp196 zero0 mb1×37 full — refused", "error: memory", "params   ",
                     "GiB in 16-bit", "bubble 28.8%", "stages   [8, 8, 8, 8, 8, 8, 8, 8, 7, 7"):
        assert fragment in err, err


def test_a_search_over_ep_for_the_seed_cluster_ranks_fitting_layouts():
    result = search(seed_job(), Fixed(tp=8, pp=16, dp=196, uneven_pipeline=True))
    assert result.ranked and {e.layout.ep for e in result.ranked} <= {2, 4}
    assert all(e.memory.fits and e.layout.zero_stage <= 1 for e in result.ranked)
    assert result.rejection_counts["ep_dp"] > 0  # ep 8 and 16 do not divide dp 196
