"""Memory per GPU: both model-state accountings, activations after Korthikanti et al., stage placement."""
import dataclasses

import pytest

from orchestrator.config.cluster import make_cluster
from orchestrator.config.model import get_model
from orchestrator.plan.activations import layer_bytes, micro_batches_in_flight
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.memory import (ALLREDUCE_BUCKET_ELEMENTS, CPU_BUFFER_FACTOR, SUB_GROUP_ELEMENTS,
                                      deepspeed_states, estimate_memory, planned_bucket_elements,
                                      reduction_buffer_bytes, stage_memory, zero3_gathered_params,
                                      zero_paper_states)
from orchestrator.plan.partition import padded_vocab, stage_params


@pytest.mark.parametrize("stage,gigabytes", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_accounting_reproduces_the_papers_7_5b_on_64_gpus(stage, gigabytes):
    # Rajbhandari et al. 2020, Figure 1: Ψ = 7.5B, N_d = 64, K = 12
    states = zero_paper_states(params=7.5e9, dp=64, zero_stage=stage, offload=False)
    assert round(states.device / 1e9, 1) == gigabytes


CASES = [(1.75e11, 8, 16, 6.04e8), (6.7e9, 8, 1, 2.06e8), (1.3e9, 4, 2, 1.0e8), (3e8, 1, 1, 3.9e7)]


@pytest.mark.parametrize("params,per_node,nodes,largest", CASES)
def test_deepspeed_accounting_equals_deepspeeds_own_estimators_but_for_zero3s_step_gradient(params, per_node, nodes,
                                                                                            largest):
    """Stage 2 equals ``estimate_zero2_model_states_mem_needs``. Stage 3 with one gathered layer
    (live_params 0) equals ``estimate_zero3_model_states_mem_needs`` plus one term, deliberately:
    DeepSpeed's step flattens the fp32 gradient of the sub-group it updates beside the fp32
    partition (stage3.py, ``_prepare_fp32_grad_for_sub_group``), 4·min(Ψ/N, sub_group_size) bytes,
    which the estimator leaves out (it counts 2L of 16-bit gradients instead, the larger one wins);
    ``benchmarks/memory_accuracy.py`` measures it. With optimizer offload the step runs on the host
    and nothing is added. On one rank ZeRO-3 gathers nothing: the estimator's gathered 16-bit layer
    is the partition itself (partition_parameters.py, ``NoGatherHandle``)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    n = per_node * nodes
    _, gpu2 = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=per_node, num_nodes=nodes,
                                                    cpu_offload=False)
    assert deepspeed_states(params=params, dp=n, zero_stage=2, offload=False).device == pytest.approx(gpu2, abs=1)
    _, gpu2_off = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=per_node, num_nodes=nodes,
                                                        cpu_offload=True)
    assert deepspeed_states(params=params, dp=n, zero_stage=2, offload=True).device == pytest.approx(gpu2_off, abs=1)
    _, gpu3, _ = estimate_zero3_model_states_mem_needs(params, largest, num_gpus_per_node=per_node, num_nodes=nodes,
                                                       cpu_offload=False)
    ours3 = deepspeed_states(params=params, dp=n, zero_stage=3, offload=False, largest_module=largest)
    step_gradient = 4 * min(params / n, SUB_GROUP_ELEMENTS)
    gathered = 0 if n == 1 else 2 * largest   # on one rank the "gathered" layer is the partition itself
    assert ours3.device == pytest.approx(gpu3 - 4 * largest + gathered + max(2 * largest, step_gradient), abs=1)
    cpu3, gpu3_off, _ = estimate_zero3_model_states_mem_needs(params, largest, num_gpus_per_node=per_node,
                                                              num_nodes=nodes, cpu_offload=True,
                                                              cpu_offload_params=False)
    ours3_off = deepspeed_states(params=params, dp=n, zero_stage=3, offload=True, largest_module=largest)
    assert ours3_off.device == pytest.approx(gpu3_off - 2 * largest + gathered, abs=1)
    assert ours3_off.cpu * per_node * CPU_BUFFER_FACTOR == pytest.approx(cpu3, abs=per_node * 2)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_accounting_is_never_below_the_papers(stage):
    paper = zero_paper_states(params=1e9, dp=16, zero_stage=stage, offload=False)
    runtime = deepspeed_states(params=1e9, dp=16, zero_stage=stage, offload=False)
    assert runtime.device >= paper.device


def test_offload_moves_optimizer_state_to_host_memory():
    on_gpu = deepspeed_states(params=1e9, dp=8, zero_stage=2, offload=False)
    offloaded = deepspeed_states(params=1e9, dp=8, zero_stage=2, offload=True)
    assert offloaded.optimizer == 0 and offloaded.cpu == pytest.approx(16 * 1e9 / 8)
    assert offloaded.device < on_gpu.device


MODEL = get_model("gpt3-175b")
S, B, H, A = 2048, 1, 12288, 96


def test_activations_follow_korthikanti_table_2():
    sbh = S * B * H
    none = layer_bytes(MODEL, seq=S, micro_batch=B, tp=1, sequence_parallel=False, recompute="none")
    assert none == pytest.approx(sbh * (34 + 5 * A * S / H))
    tp_only = layer_bytes(MODEL, seq=S, micro_batch=B, tp=8, sequence_parallel=False, recompute="none")
    assert tp_only == pytest.approx(sbh * (10 + 24 / 8 + 5 * A * S / (H * 8)))
    tp_sp = layer_bytes(MODEL, seq=S, micro_batch=B, tp=8, sequence_parallel=True, recompute="none")
    assert tp_sp == pytest.approx(none / 8)
    selective = layer_bytes(MODEL, seq=S, micro_batch=B, tp=8, sequence_parallel=True, recompute="selective")
    assert selective == pytest.approx(sbh * 34 / 8)
    full = layer_bytes(MODEL, seq=S, micro_batch=B, tp=1, sequence_parallel=False, recompute="full")
    assert full == pytest.approx(2 * sbh)


def test_1f1b_first_stage_holds_min_of_pp_and_micro_batches_and_interleave_adds_its_factor():
    assert micro_batches_in_flight(Layout(pp=8, dp=1, grad_accum=32), stage="first") == 8
    assert micro_batches_in_flight(Layout(pp=8, dp=1, grad_accum=3), stage="first") == 3
    assert micro_batches_in_flight(Layout(pp=8, dp=1, grad_accum=32), stage="last") == 1
    interleaved = micro_batches_in_flight(Layout(pp=8, dp=1, grad_accum=32, interleave=2), stage="first")
    assert interleaved == pytest.approx(8 * (1 + 7 / 16))


def test_embeddings_sit_on_the_first_stage_and_the_tied_head_on_the_last():
    model = get_model("gpt3-xl")
    first = stage_params(model, tp=1, pp=2, ep=1, stage="first")
    last = stage_params(model, tp=1, pp=2, ep=1, stage="last")
    word = model.vocab * model.d_model
    assert first.dense + last.dense == pytest.approx(model.params() + word)  # every layer once, head copy extra
    assert first.dense - last.dense == pytest.approx(model.ctx * model.d_model - 2 * model.d_model)


def test_tensor_parallel_shards_the_layers_and_pads_the_vocab():
    one = stage_params(MODEL, tp=1, pp=1, ep=1, stage="only")
    eight = stage_params(MODEL, tp=8, pp=1, ep=1, stage="only")
    assert eight.dense == pytest.approx(one.dense / 8, rel=0.01)
    assert padded_vocab(50257, 8) == 50264 and padded_vocab(50257, 1) == 50257


def test_expert_parallelism_shards_the_experts():
    model = get_model("gpt4-moe")
    one, sixteen = (stage_params(model, tp=1, pp=1, ep=ep, stage="only") for ep in (1, 16))
    assert sixteen.expert == pytest.approx(one.expert / 16)
    assert sixteen.dense == one.dense
    assert one.total == pytest.approx(model.params())


def make_job(**kw):
    return Job(model=MODEL, cluster=make_cluster(gpu="a100-80g", gpus=1024), seq=2048, batch=BatchTarget(1536), **kw)


def test_the_heaviest_stage_is_reported_with_a_full_breakdown():
    layout = Layout(tp=8, pp=16, dp=8, zero_stage=1, micro_batch=1, grad_accum=192, sequence_parallel=True)
    estimate = estimate_memory(layout, make_job())
    first, _ = stage_memory(layout, make_job(), stage="first")
    last, _ = stage_memory(layout, make_job(), stage="last")
    assert estimate.total == max(first.total, last.total)
    assert first.activations > last.activations  # 16 micro-batches in flight vs 1
    assert set(estimate.breakdown.gib()) == {"params", "grads", "optimizer", "activations", "buffers"}


def test_paper_accounting_can_be_chosen_and_is_lower():
    layout = Layout(tp=8, pp=1, dp=128, zero_stage=2, micro_batch=1, grad_accum=12, recompute="full",
                    sequence_parallel=True)
    runtime = estimate_memory(layout, make_job())
    paper = estimate_memory(layout, make_job(accounting="zero-paper"))
    assert paper.total < runtime.total and paper.accounting == "zero-paper"


def test_offload_reports_host_memory_per_node():
    layout = Layout(tp=8, pp=1, dp=128, zero_stage=2, micro_batch=1, grad_accum=12, recompute="full",
                    offload_optimizer=True, sequence_parallel=True)
    estimate = estimate_memory(layout, make_job())
    per_rank = stage_params(MODEL, tp=8, pp=1, ep=1, stage="only").total * 16 / 128
    assert estimate.breakdown.optimizer == 0
    assert estimate.cpu_bytes_per_node == pytest.approx(per_rank * 8 * CPU_BUFFER_FACTOR)


def test_fp32_runs_count_four_byte_parameters_and_no_master_copy():
    states = zero_paper_states(params=1e6, dp=1, zero_stage=0, offload=False, param_bytes=4)
    assert states.device == 16e6
    plain = deepspeed_states(params=1e6, dp=1, zero_stage=0, offload=False, param_bytes=4)
    assert plain.device == 16e6
    assert dataclasses.astuple(deepspeed_states(params=1e6, dp=1, zero_stage=0, offload=False))[:3] == (2e6, 6e6, 12e6)


# --- what this runtime allocates: buckets, ZeRO-3's gathered parameters and step gradient -------------
TINY = get_model("tiny")


def cpu_job(*, gpus: int = 1, precision: str = "fp32") -> Job:
    return Job(model=TINY, cluster=make_cluster(gpu="cpu", gpus=gpus), seq=128, batch=BatchTarget(4 * gpus),
               precision=precision)


def test_the_bucket_is_the_largest_checked_stages_parameters_capped_at_2e8():
    whole = stage_params(TINY, tp=1, pp=1, ep=1, stage="only").total
    assert planned_bucket_elements(TINY, Layout(dp=1)) == int(whole)
    first = stage_params(TINY, tp=1, pp=2, ep=1, stage="first").total
    last = stage_params(TINY, tp=1, pp=2, ep=1, stage="last").total
    assert planned_bucket_elements(TINY, Layout(pp=2, dp=1, grad_accum=2)) == int(max(first, last))
    assert planned_bucket_elements(MODEL, Layout(tp=8, pp=16, dp=8)) == 200_000_000


@pytest.mark.parametrize("zero,dp,pp,buckets", [(0, 1, 1, 0), (0, 2, 1, 1), (0, 1, 2, 1), (1, 1, 1, 1), (2, 1, 1, 1),
                                                 (1, 2, 1, 2), (2, 2, 1, 2), (3, 1, 1, 2), (3, 2, 1, 2)])
def test_reduction_buffers_by_stage(zero, dp, pp, buckets):
    """ZeRO-0 on one rank: build_runtime turns the all-reduce off, no buffer; otherwise one flattened
    copy of the gradients. ZeRO-1/2: the reduce bucket, and with dp > 1 the flattened copy the
    reduction makes; ZeRO-3 always makes that copy (its reduce-scatter interleaves the bucket)."""
    layout = Layout(zero_stage=zero, dp=dp, pp=pp, grad_accum=2)
    job = cpu_job(gpus=dp * pp)
    rank = stage_params(TINY, tp=1, pp=pp, ep=1, stage="first" if pp > 1 else "only")
    bucket = min(ALLREDUCE_BUCKET_ELEMENTS, rank.total) if zero == 0 else planned_bucket_elements(TINY, layout)
    assert reduction_buffer_bytes(rank, layout, job) == pytest.approx(buckets * bucket * 4)


def test_zero0_under_bf16_all_reduces_the_fp32_gradients():
    rank = stage_params(TINY, tp=1, pp=1, ep=1, stage="only")
    job = cpu_job(gpus=2, precision="bf16")
    assert reduction_buffer_bytes(rank, Layout(zero_stage=0, dp=2), job) == pytest.approx(4 * rank.total)


def test_zero3_gathers_nothing_on_one_rank_everything_of_a_small_model_and_a_window_of_a_big_one():
    assert zero3_gathered_params(params=1e6, dp=1, largest_module=1e5, live_params=1e6) == 0
    assert zero3_gathered_params(params=1e6, dp=4, largest_module=1e5, live_params=1e6) == 1e6
    assert zero3_gathered_params(params=1e10, dp=64, largest_module=1e8, live_params=2e8) == 3e8
    assert zero3_gathered_params(params=1e10, dp=64, largest_module=1e8, live_params=0) == 1e8  # the estimator's


def test_zero3_tiny_on_two_fp32_ranks_worked_example():
    """Ψ = 239,360 parameters, N = 2, fp32, the bucket Ψ (the whole model, so all of it is gathered):
    parameters 4Ψ/2 + 4Ψ; gradients 4Ψ/2 partition + the larger of the embedding's gradient
    (L = 2048 × 64: 4L = 524,288 bytes) and the sub-group copy (4Ψ/2 = 478,720); optimizer 12Ψ/2."""
    psi = stage_params(TINY, tp=1, pp=1, ep=1, stage="only").total
    assert psi == 239_360
    b = estimate_memory(Layout(zero_stage=3, dp=2, micro_batch=4), cpu_job(gpus=2)).breakdown
    assert b.params == pytest.approx(2 * psi + 4 * psi)
    assert b.grads == pytest.approx(2 * psi + 4 * 2048 * 64)
    assert b.optimizer == pytest.approx(6 * psi)


@pytest.mark.parametrize("param_bytes,dp,grads", [(4, 1, 8e6), (4, 2, 4e6), (2, 8, 2e6), (2, 2, 3e6)])
def test_zero1_gradients_are_the_larger_of_the_backward_and_the_step_not_their_sum(param_bytes, dp, grads):
    """Ψ = 1e6: the backward holds pΨ full gradients, the step the pΨ/N partition and its 4Ψ/N fp32
    copy; DeepSpeed frees the former before it builds the latter."""
    states = deepspeed_states(params=1e6, dp=dp, zero_stage=1, offload=False, param_bytes=param_bytes)
    assert states.grads == pytest.approx(grads)


def test_expert_weights_grads_and_optimizer_state_are_per_ep_shard_and_zero_shards_them_over_dp_over_ep():
    from orchestrator.plan.memory import deepspeed_states, rank_model_states

    model = get_model("gpt4-moe")
    job = Job(model=model, cluster=make_cluster(gpu="a100-80g", gpus=25088), seq=8192,
              batch=BatchTarget.from_tokens(60e6, seq=8192))
    one, four = (stage_params(model, tp=8, pp=16, ep=ep, stage="first") for ep in (1, 4))
    assert four.expert == pytest.approx(one.expert / 4) and four.dense == one.dense
    # 8 layers × 16 experts / ep 4 × ((2·h·4h + 4h) / tp 8 + the replicated out bias h) on a first-stage rank
    h = model.d_model
    assert four.expert == pytest.approx(8 * 4 * ((8 * h * h + 4 * h) / 8 + h))
    layout = Layout(tp=8, pp=16, dp=196, ep=4, zero_stage=1)
    states = rank_model_states(four, layout, job)
    dense = deepspeed_states(params=four.dense, dp=196, zero_stage=1, offload=False)
    expert = deepspeed_states(params=four.expert, dp=49, zero_stage=1, offload=False)  # expert-data-parallel 196 / 4
    assert states.optimizer == pytest.approx(dense.optimizer + expert.optimizer)
    assert states.grads == pytest.approx(dense.grads + expert.grads)
    assert states.params == pytest.approx(2 * four.total)
