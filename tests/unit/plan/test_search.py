"""The search: every candidate is ranked or rejected with a reason; fixed degrees narrow the space."""
import subprocess
import sys

import pytest

from orchestrator.config.cluster import make_cluster
from orchestrator.config.model import get_model
from orchestrator.plan.artifact import Plan, make_plan
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.search import Fixed, candidate_layouts, search


def gpt3_job(gpus=1024, gpu="a100-80g", **kw):
    return Job(model=get_model("gpt3-175b"), cluster=make_cluster(gpu=gpu, gpus=gpus), seq=2048,
               batch=BatchTarget.from_tokens(3.2e6, seq=2048), **kw)


@pytest.fixture(scope="module")
def result():
    return search(gpt3_job())


def test_every_candidate_is_either_ranked_or_rejected_with_a_reason(result):
    assert len(result.ranked) + len(result.rejected) == result.considered
    assert all(e.reason is not None and e.reason.message for e in result.rejected)
    assert sum(result.rejection_counts.values()) == len(result.rejected)


def test_ranked_layouts_fit_and_are_fastest_first(result):
    speeds = [e.time.tokens_per_s for e in result.ranked]
    assert speeds == sorted(speeds, reverse=True)
    assert all(e.memory.fits and not e.errors for e in result.ranked)


def test_gpt3_175b_on_a100s_keeps_tensor_parallelism_inside_a_node_and_pipelines(result):
    best = result.best.layout
    assert best.tp == 8 and best.pp > 1 and best.zero_stage <= 1
    assert result.rejection_counts["zero_pp"] > 0 and result.rejection_counts["memory"] > 0


def test_search_respects_deepspeed_limits_in_what_it_ranks(result):
    assert all(not (e.layout.pp > 1 and e.layout.zero_stage > 1) for e in result.ranked)


def test_fixing_every_degree_leaves_one_layout():
    fixed = Fixed(tp=8, pp=16, zero_stage=1, micro_batch=1, recompute="full")
    assert len(list(candidate_layouts(gpt3_job(), fixed))) == 1
    assert search(gpt3_job(), fixed).single


def test_fixed_degrees_are_kept_in_every_candidate():
    layouts = list(candidate_layouts(gpt3_job(), Fixed(tp=4, zero_stage=1)))
    assert layouts and all(layout.tp == 4 and layout.zero_stage == 1 for layout in layouts)


def test_interleave_is_searched_only_when_allowed():
    assert {l.interleave for l in candidate_layouts(gpt3_job(), Fixed())} == {1}
    assert {l.interleave for l in candidate_layouts(gpt3_job(), Fixed(max_interleave=3))} == {1, 2, 3}


def test_moe_search_uses_expert_parallelism_within_zero_2():
    job = Job(model=get_model("gpt4-moe"), cluster=make_cluster(gpu="h200", gpus=2048), seq=8192,
              batch=BatchTarget.from_tokens(60e6, seq=8192))
    result = search(job)
    assert result.ranked and all(e.layout.ep > 1 and e.layout.zero_stage <= 2 for e in result.ranked[:5])
    assert result.rejection_counts["zero_moe"] > 0
    assert result.rejection_counts["heads_tp"] == 0  # 96 heads: every tp of a node (1, 2, 4, 8) divides them


def test_nothing_fits_gives_no_plan_and_every_reason():
    job = gpt3_job(gpus=8)
    result = search(job)
    assert not result.ranked and result.rejection_counts["memory"] > 0


def test_plan_round_trips_through_json(result):
    plan = make_plan(result.best, gpt3_job())
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.layout == result.best.layout and plan.padded_vocab == 50264


def test_importing_the_planner_imports_no_torch():
    code = ("import sys; import orchestrator.plan.search, orchestrator.plan.artifact, orchestrator.commands.plan, "
            "orchestrator.commands.config; print('torch' in sys.modules, 'deepspeed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
