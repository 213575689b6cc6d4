"""The planner's price of a sharded checkpoint: bytes per rank, bytes in all, seconds to write."""
import json

import pytest

from orchestrator.cli import main
from orchestrator.config.cluster import make_cluster
from orchestrator.config.model import get_model
from orchestrator.plan.artifact import Plan, make_plan
from orchestrator.plan.checkpoint import STATE_BYTES_PER_PARAM, checkpoint_cost
from orchestrator.plan.evaluate import evaluate
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.partition import stage_params


def job_175b(**storage) -> Job:
    return Job(model=get_model("gpt3-175b"), cluster=make_cluster(gpu="a100-80g", gpus=1024, **storage), seq=2048,
               batch=BatchTarget.from_tokens(3.2e6, seq=2048))


LAYOUT = Layout(tp=8, pp=16, dp=8, zero_stage=1, recompute="full")


def test_the_worked_example_of_the_module_docstring():
    cost = checkpoint_cost(LAYOUT, job_175b())
    first = stage_params(get_model("gpt3-175b"), tp=8, pp=16, ep=1, stage="first")
    assert first.dense == pytest.approx(1.46e9, rel=0.01)
    assert cost.bytes_per_rank == pytest.approx(12 * first.dense / 8)
    assert cost.bytes_per_rank == pytest.approx(2.19e9, rel=0.01)
    assert cost.total_bytes == pytest.approx(2.10e12, rel=0.01)
    assert cost.save_s == pytest.approx(cost.total_bytes / 1e12)  # the aggregate bound: 2.1 s
    assert cost.bound == "aggregate"


def test_the_whole_checkpoint_is_spread_over_the_ranks_not_held_by_one():
    job = job_175b()
    total = checkpoint_cost(LAYOUT, job).total_bytes
    assert total >= STATE_BYTES_PER_PARAM * job.model.params()
    per_rank = [checkpoint_cost(Layout(tp=8, pp=16, dp=dp, zero_stage=1), job).bytes_per_rank for dp in (1, 2, 4, 8)]
    for fewer, more in zip(per_rank, per_rank[1:]):
        assert more == pytest.approx(fewer / 2)  # ZeRO's partitions split the writing
    assert per_rank[0] < total / 100  # even at dp 1 a rank writes only its tp × pp shard (1/128)


def test_zero_partitions_share_the_writing_and_zero0_leaves_it_to_data_parallel_rank_0():
    job = job_175b()
    sizes = {z: checkpoint_cost(Layout(tp=8, pp=16, dp=8, zero_stage=z), job).bytes_per_rank for z in (0, 1, 2, 3)}
    assert sizes[1] == sizes[2] == sizes[3] == pytest.approx(sizes[0] / 8)
    assert checkpoint_cost(Layout(tp=8, pp=16, dp=8, zero_stage=0), job).total_bytes == \
        checkpoint_cost(Layout(tp=8, pp=16, dp=8, zero_stage=1), job).total_bytes


def test_experts_are_split_over_the_expert_data_parallel_group():
    model = get_model("gpt4-moe")
    job = Job(model=model, cluster=make_cluster(gpu="a100-80g", gpus=25088), seq=8192,
              batch=BatchTarget.from_tokens(60e6, seq=8192))
    rank = stage_params(model, tp=8, pp=16, ep=4, stage="first")
    cost = checkpoint_cost(Layout(tp=8, pp=16, dp=196, ep=4, zero_stage=1, uneven_pipeline=True), job)
    assert cost.bytes_per_rank == pytest.approx(12 * (rank.dense / 196 + rank.expert / 49))


def test_a_slow_node_link_bounds_the_save():
    cost = checkpoint_cost(LAYOUT, job_175b(storage_node_bandwidth=1e9))
    assert cost.bound == "node"
    assert cost.save_s == pytest.approx(8 * cost.bytes_per_rank / 1e9)


def test_the_plan_carries_the_cost_and_reads_back_from_json():
    job = job_175b(storage_bandwidth=200e9)
    plan = make_plan(evaluate(LAYOUT, job), job)
    assert plan.prediction.checkpoint_save_s == pytest.approx(checkpoint_cost(LAYOUT, job).save_s, rel=1e-3)
    assert Plan.from_json(plan.to_json()) == plan
    old = json.loads(plan.to_json())
    for key in ("checkpoint_gib_per_rank", "checkpoint_total_gib", "checkpoint_save_s"):
        del old["prediction"][key]  # a plan.json written before the planner priced checkpoints
    assert Plan.from_json(json.dumps(old)).prediction.checkpoint_save_s == 0.0


def test_orchestrate_plan_reports_the_checkpoint(capsys):
    code = main(["plan", "--model", "gpt3-175b", "--gpus", "1024", "--gpu", "a100-80g", "--tp", "8", "--pp", "16",
                 "--zero", "1", "--micro-batch", "1", "--recompute", "full", "--storage-gbps", "200", "--json"])
    assert code == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["checkpoint_save_s"] == pytest.approx(row["checkpoint_total_gib"] * 2**30 / 200e9, rel=1e-3)
    assert 1.9 < row["checkpoint_gib_per_rank"] < 2.1


def test_a_storage_bandwidth_that_is_not_positive_is_refused(capsys):
    code = main(["plan", "--model", "gpt3-175b", "--gpus", "1024", "--gpu", "a100-80g", "--storage-gbps", "0"])
    assert code != 0
    assert "--storage-gbps 0: must be > 0 GB/s" in capsys.readouterr().err
