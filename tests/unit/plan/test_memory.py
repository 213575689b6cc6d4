"""Memory per GPU: both model-state accountings, activations after Korthikanti et al., stage placement."""
import dataclasses

import pytest

from orchestrator.config.cluster import make_cluster
from orchestrator.config.model import get_model
from orchestrator.plan.activations import layer_bytes, micro_batches_in_flight
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.memory import (CPU_BUFFER_FACTOR, deepspeed_states, estimate_memory, stage_memory,
                                      zero_paper_states)
from orchestrator.plan.partition import padded_vocab, stage_params


@pytest.mark.parametrize("stage,gigabytes", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_accounting_reproduces_the_papers_7_5b_on_64_gpus(stage, gigabytes):
    # Rajbhandari et al. 2020, Figure 1: Ψ = 7.5B, N_d = 64, K = 12
    states = zero_paper_states(params=7.5e9, dp=64, zero_stage=stage, offload=False)
    assert round(states.device / 1e9, 1) == gigabytes


CASES = [(1.75e11, 8, 16, 6.04e8), (6.7e9, 8, 1, 2.06e8), (1.3e9, 4, 2, 1.0e8), (3e8, 1, 1, 3.9e7)]


@pytest.mark.parametrize("params,per_node,nodes,largest", CASES)
def test_deepspeed_accounting_equals_deepspeeds_own_estimators(params, per_node, nodes, largest):
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
    assert ours3.device == pytest.approx(gpu3, abs=1)
    cpu3, gpu3_off, _ = estimate_zero3_model_states_mem_needs(params, largest, num_gpus_per_node=per_node,
                                                              num_nodes=nodes, cpu_offload=True,
                                                              cpu_offload_params=False)
    ours3_off = deepspeed_states(params=params, dp=n, zero_stage=3, offload=True, largest_module=largest)
    assert ours3_off.device == pytest.approx(gpu3_off, abs=1)
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
