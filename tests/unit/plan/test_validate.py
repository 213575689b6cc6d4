"""Every bad layout gets its own clear message (numbers and fix), never a traceback."""
import dataclasses
import re

import pytest

from orchestrator.config.cluster import make_cluster
from orchestrator.config.model import get_model
from orchestrator.plan.evaluate import evaluate
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.layout import Layout, LayoutError
from orchestrator.plan.validate import check_layout, check_runtime, fill_grad_accum, require_runtime, runtime_refusals


def job(model="gpt3-175b", gpus=1024, batch=1536, **kw):
    m = get_model(model)
    return Job(model=m, cluster=make_cluster(gpu="a100-80g", gpus=gpus), seq=kw.pop("seq", min(m.ctx, 2048)),
               batch=BatchTarget(batch), **kw)


GOOD = Layout(tp=8, pp=16, dp=8, zero_stage=1, micro_batch=1, recompute="full")

# (case, job, layout changes, code, fragments the message must contain)
BAD = [
    ("world", job(), dict(dp=2), "world", ["world 1024 != tp 8 × pp 16 × dp 2 (=256)", "use dp 8"]),
    ("heads", job(), dict(tp=5, dp=12), "heads_tp", ["heads 96 not divisible by tp 5", "{1, 2, 3, 4, 6, 8, 12"]),
    ("pp over layers", job(), dict(pp=128, tp=8, dp=1), "pp_empty", ["pp 128 > 96 layers"]),
    ("pp uneven", job(model="gpt3-13b", gpus=64, batch=512), dict(tp=8, pp=3, dp=2, micro_batch=1, recompute="full"),
     "pp_layers", ["layers 40 not divisible by pp 3", "--uneven-pipeline"]),
    ("zero with pp", job(), dict(zero_stage=2), "zero_pp", ["ZeRO ≤ 1", "zero 2 with pp 16"]),
    ("zero3 with moe", job(model="gpt4-moe", gpus=1024, batch=1024, seq=8192),
     dict(tp=4, pp=1, dp=256, ep=16, zero_stage=3), "zero_moe", ["DeepSpeed MoE allows ZeRO ≤ 2"]),
    ("ep on dense", job(), dict(ep=2), "ep_dense", ["ep 2 but model gpt3-175b has no experts"]),
    ("ep experts", job(model="gpt4-moe", gpus=1024, batch=1024, seq=8192), dict(tp=4, pp=8, dp=32, ep=3),
     "ep_experts", ["experts 16 not divisible by ep 3"]),
    ("ep dp", job(model="gpt4-moe", gpus=64, batch=64, seq=8192), dict(tp=4, pp=8, dp=2, ep=4),
     "ep_dp", ["ep 4 is carved out of dp 2"]),
    ("batch", job(batch=1000), dict(micro_batch=3), "batch", ["global batch 1000 != micro_batch 3", "dp 8"]),
    ("batch too small", job(batch=4), dict(), "batch", ["exceeds the batch"]),
    ("interleave needs pp", job(), dict(pp=1, dp=128, zero_stage=1, interleave=2), "interleave",
     ["interleave 2 needs pp > 1"]),
    ("interleave layers", job(), dict(interleave=5), "interleave", ["layers 96 not divisible by pp 16 × interleave 5"]),
    ("offload without zero", job(), dict(zero_stage=0, offload_optimizer=True), "offload_zero", ["needs ZeRO ≥ 1"]),
    ("seq over ctx", job(seq=4096), dict(), "seq_ctx", ["sequence 4096 > model context 2048"]),
    ("ppo with pp", job(ppo=True), dict(), "ppo_pp", ["PPO needs whole models", "pp 16"]),
    ("bad recompute", job(), dict(recompute="most"), "range", ["recompute 'most'"]),
    ("zero out of range", job(), dict(zero_stage=4), "range", ["zero_stage 4 must be 0, 1, 2 or 3"]),
    ("zero degree", job(), dict(tp=0), "range", ["tp 0 must be an integer >= 1"]),
    ("memory", job(gpus=8, batch=8), dict(tp=8, pp=1, dp=1, zero_stage=1), "memory", ["GiB per GPU", "usable"]),
    ("bf16 accumulation", job(gpus=8, batch=64), dict(tp=8, pp=1, dp=1, zero_stage=0), "bf16_accumulation",
     ["bf16 with ZeRO 0", "grad_accum 64", "use zero_stage 1"]),
]


@pytest.mark.parametrize("case,the_job,changes,code,fragments", BAD, ids=[case[0] for case in BAD])
def test_each_bad_layout_is_refused_with_its_own_message(case, the_job, changes, code, fragments):
    evaluation = evaluate(dataclasses.replace(GOOD, **changes), the_job)
    codes = [issue.code for issue in evaluation.errors]
    assert code in codes, [str(issue) for issue in evaluation.issues]
    message = next(issue.message for issue in evaluation.errors if issue.code == code)
    for fragment in fragments:
        assert fragment in message


def test_the_bad_cases_have_distinct_messages():
    messages = set()
    for _, the_job, changes, code, _ in BAD:
        evaluation = evaluate(dataclasses.replace(GOOD, **changes), the_job)
        messages.add(next(issue.message for issue in evaluation.errors if issue.code == code))
    assert len(messages) == len(BAD)


def test_a_good_layout_has_no_errors_and_notes_the_padded_vocab():
    evaluation = evaluate(GOOD, job())
    assert evaluation.ok and not evaluation.errors
    assert any("vocab 50257 padded to 50264" in issue.message for issue in evaluation.issues)


def test_warnings_are_not_errors():
    # tp 16 crosses nodes and 2 micro-batches cannot fill a 16-stage pipeline: both run, slowly
    the_job = job(gpus=1024, batch=16)
    layout = dataclasses.replace(GOOD, tp=16, pp=16, dp=4, micro_batch=2)
    issues = check_layout(fill_grad_accum(layout, the_job), the_job)
    assert {i.code for i in issues if i.severity == "warning"} >= {"tp_nodes", "pp_fill"}
    assert not [i for i in issues if i.severity == "error"]


def test_uneven_pipeline_is_allowed_only_when_asked_and_drops_no_layer():
    the_job = job(model="gpt3-13b", gpus=24, batch=24)
    # ZeRO 1: bf16 with ZeRO 0 and several micro-batches is refused on its own (bf16_accumulation)
    layout = Layout(tp=8, pp=3, dp=1, zero_stage=1, recompute="full", sequence_parallel=True)
    refused = evaluate(layout, the_job)
    assert [i.code for i in refused.errors] == ["pp_layers"]
    evaluation = evaluate(dataclasses.replace(layout, uneven_pipeline=True), the_job)
    assert not [i for i in evaluation.errors if i.code == "pp_layers"]
    assert any("[14, 13, 13]" in i.message for i in evaluation.issues)
    # the runtime's validator decides it too: a rank refuses an uneven split nobody asked for
    plain = dataclasses.replace(layout, sequence_parallel=False)
    assert [i.code for i in runtime_refusals(check_runtime(plain, the_job.model))] == ["pp_layers"]
    assert not runtime_refusals(check_runtime(dataclasses.replace(layout, uneven_pipeline=True, sequence_parallel=False),
                                              the_job.model))


def test_token_batches_round_to_a_multiple_of_micro_batch_times_dp():
    the_job = dataclasses.replace(job(), batch=BatchTarget.from_tokens(3.2e6, seq=2048))
    layout = fill_grad_accum(GOOD, the_job)  # 1562.5 sequences, 8 per micro-step
    assert layout.global_batch == 1560 and layout.grad_accum == 195


def test_deepspeed_moe_accepts_zero_2_with_expert_parallelism():
    the_job = job(model="tiny-moe", gpus=8, batch=8, seq=128)
    layout = Layout(tp=1, pp=1, dp=8, ep=4, zero_stage=2, micro_batch=1)
    assert evaluate(layout, the_job).ok


def test_moe_runs_on_every_dimension_deepspeed_allows_and_the_rest_is_refused_with_the_fix():
    moe = get_model("gpt4-moe")
    seed = Layout(tp=8, pp=16, dp=196, ep=4, zero_stage=1, uneven_pipeline=True)
    assert not runtime_refusals(check_runtime(seed, moe))              # TP 8 × PP 16 × EP 4 × ZeRO-1
    assert not runtime_refusals(check_runtime(Layout(tp=8, pp=1, dp=128, ep=16, zero_stage=2), moe))
    refused = {i.code: i.message for i in runtime_refusals(check_runtime(dataclasses.replace(seed, zero_stage=2), moe))}
    assert "use zero 0 or 1, or pp 1" in refused["zero_pp"]
    refused = {i.code: i.message for i in runtime_refusals(check_runtime(Layout(dp=128, ep=16, zero_stage=3), moe))}
    assert "use zero 2" in refused["zero_moe"]


def test_moe_capacity_must_split_over_tp():
    the_job = job(model="tiny-moe", gpus=2, batch=2, seq=30)   # 30 tokens: ceil(30 / 4 × 1.25 × 2) = 19 slots
    issues = check_layout(fill_grad_accum(Layout(tp=2, dp=1, micro_batch=1, zero_stage=1), the_job), the_job)
    assert [i.code for i in issues if i.severity == "error"] == ["moe_capacity_tp"]
    assert "capacity 19 slots" in next(i.message for i in issues if i.code == "moe_capacity_tp")
    the_job = job(model="tiny-moe", gpus=2, batch=2, seq=32)   # 20 slots
    layout = fill_grad_accum(Layout(tp=2, dp=1, micro_batch=1, zero_stage=1), the_job)
    assert not [i for i in check_layout(layout, the_job) if i.severity == "error"]


# (case, model, layout, head, code, fragment): what this runtime cannot run although the planner prices it
PLAN_ONLY = [
    ("sequence parallel", "gpt3-175b", dict(sequence_parallel=True), "lm", "runtime_sp", "set sequence_parallel false"),
    ("interleave", "gpt3-175b", dict(interleave=2, grad_accum=192), "lm", "runtime_interleave", "set interleave 1"),
    ("reward model with pp", "gpt3-175b", dict(), "scalar", "runtime_head_pp", "head 'scalar' with pp 16"),
]


@pytest.mark.parametrize("case,model,changes,head,code,fragment", PLAN_ONLY, ids=[c[0] for c in PLAN_ONLY])
def test_runtime_limits_are_plan_only_for_the_planner_and_refused_on_the_rank(case, model, changes, head, code,
                                                                              fragment):
    layout = dataclasses.replace(GOOD, **changes)
    issues = check_runtime(layout, get_model(model), head=head)
    assert [(i.severity, i.code) for i in issues if i.code == code] == [("plan_only", code)]
    assert fragment in next(i.message for i in issues if i.code == code)
    with pytest.raises(LayoutError, match=re.escape(fragment)):
        require_runtime(layout, get_model(model), head=head)


def test_a_plan_only_layout_is_ranked_by_the_search_and_marked():
    the_job = job(gpus=1024, batch=1536)
    evaluation = evaluate(dataclasses.replace(GOOD, sequence_parallel=True), the_job)
    assert evaluation.ok and not evaluation.errors
    assert [i.code for i in evaluation.plan_only] == ["runtime_sp"] and evaluation.refusals == evaluation.plan_only


def test_ppo_with_pp_is_an_error_for_the_planner_as_well():
    layout = dataclasses.replace(GOOD)
    issues = check_runtime(layout, get_model("gpt3-175b"), ppo=True)
    assert [(i.severity, i.code) for i in issues if i.severity == "error"] == [("error", "ppo_pp")]


@pytest.mark.parametrize("preset,layout,message", [
    ("tiny", Layout(tp=3, dp=1), r"heads 4 not divisible by tp 3: use tp ∈ \{1, 2, 4\}"),
    ("tiny", Layout(pp=2, dp=1, zero_stage=2), "pipeline engine allows ZeRO ≤ 1"),
    ("tiny", Layout(pp=3, dp=1), "pp 3 > 2 layers"),
    ("tiny", Layout(ep=2, dp=2), "has no experts: use ep 1"),
    ("tiny-moe", Layout(ep=2, dp=2, zero_stage=3), "ZeRO ≤ 2"),
    ("tiny-moe", Layout(ep=3, dp=3), "experts 4 not divisible by ep 3"),
])
def test_the_rank_refuses_every_rule_the_model_and_layout_decide(preset, layout, message):
    with pytest.raises(LayoutError, match=message):
        require_runtime(layout, get_model(preset))
