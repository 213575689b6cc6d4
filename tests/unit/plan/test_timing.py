"""The time model: Narayanan et al.'s FLOPs, the 1F1B bubble, communication terms, and the fit."""
import dataclasses

import pytest

from orchestrator.config.cluster import make_cluster
from orchestrator.config.model import get_model
from orchestrator.plan.calibration import FITTED, HELD_OUT, ROWS, SEQ, VOCAB
from orchestrator.plan.fit import fit_constants, reproduce, row_job
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.timing import bubble_fraction, dp_comm, predict_step


def test_bubble_is_p_minus_1_over_m_plus_p_minus_1_and_shrinks_with_interleaving():
    assert bubble_fraction(Layout(pp=8, dp=1, grad_accum=24)) == pytest.approx(7 / 31)
    assert bubble_fraction(Layout(pp=8, dp=1, grad_accum=24, interleave=2)) == pytest.approx(7 / 55)
    assert bubble_fraction(Layout(pp=1, dp=1, grad_accum=24)) == 0


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.params_billion}B" for r in ROWS])
def test_hardware_flops_are_narayanans_96_Bslh2_formula(row):
    job, layout = row_job(row, FITTED)
    step = predict_step(layout, job)
    b, s, l, h, v = row.global_batch, SEQ, row.layers, row.hidden, VOCAB
    assert step.hardware_flops_per_step == pytest.approx(96 * b * s * l * h * h * (1 + s / (6 * h) + v / (16 * l * h)))
    assert step.model_flops_per_step == pytest.approx(72 * b * s * l * h * h * (1 + s / (6 * h) + v / (12 * l * h)))


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.params_billion}B" for r in ROWS])
def test_calibration_rows_are_reproduced_within_5_percent(row):
    (reproduction,) = reproduce((row,), FITTED)
    assert abs(reproduction.relative_error) < 0.05, reproduction


@pytest.mark.parametrize("row", HELD_OUT, ids=[f"{r.params_billion}B" for r in HELD_OUT])
def test_runs_the_fit_never_saw_are_predicted_within_10_percent(row):
    (reproduction,) = reproduce((row,), FITTED)
    assert abs(reproduction.relative_error) < 0.10, reproduction


def test_refitting_the_table_finds_the_shipped_constants():
    assert fit_constants(ROWS) == FITTED


def test_fit_moves_when_the_data_moves():
    slower = tuple(dataclasses.replace(row, tflops_per_gpu=row.tflops_per_gpu * 0.8) for row in ROWS)
    assert fit_constants(slower).gemm_efficiency < FITTED.gemm_efficiency


def job(gpus=1024, gpu="a100-80g", **kw):
    return Job(model=get_model("gpt3-175b"), cluster=make_cluster(gpu=gpu, gpus=gpus), seq=2048,
               batch=BatchTarget(1536), **kw)


BASE = Layout(tp=8, pp=16, dp=8, zero_stage=1, micro_batch=1, grad_accum=192, recompute="full", sequence_parallel=True)


def test_mfu_counts_model_flops_without_recompute_and_days_follow_tokens_per_second():
    step = predict_step(BASE, job())
    assert step.mfu == pytest.approx(step.model_flops_per_step / (step.step_s * 1024 * 312e12))
    assert step.tflops_per_gpu * 1e12 > step.mfu * 312e12  # hardware FLOPs include the recomputed forward
    assert step.days_to_train(300e9) == pytest.approx(300e9 / step.tokens_per_s / 86400)


def test_gpt3_175b_on_1024_a100_predicts_what_megatron_reported():
    # Narayanan et al. 2021, §5.1: 175B on 1024 A100s at batch 1536 ran at ~140 TFLOP/s, 34 days for 300B tokens
    layout = dataclasses.replace(BASE, tp=8, pp=8, dp=16, zero_stage=0, grad_accum=96, interleave=2,
                                 sequence_parallel=False)
    step = predict_step(layout, job(precision="fp16", scatter_gather_p2p=True))
    assert step.tflops_per_gpu == pytest.approx(140, rel=0.15)
    assert step.days_to_train(300e9) == pytest.approx(34, rel=0.15)


def test_data_parallel_reduction_is_hidden_only_without_a_pipeline():
    with_pipeline = predict_step(BASE, job())
    assert with_pipeline.dp_exposed_s == pytest.approx(with_pipeline.dp_comm_s)
    flat = dataclasses.replace(BASE, pp=1, dp=128, grad_accum=12)
    without = predict_step(flat, job())
    assert without.dp_exposed_s < without.dp_comm_s


def test_zero3_gathers_parameters_every_micro_batch():
    flat = Layout(tp=8, pp=1, dp=128, micro_batch=1, grad_accum=12, recompute="full", sequence_parallel=True)
    totals = {z: predict_step(dataclasses.replace(flat, zero_stage=z), job()).dp_comm_s for z in (1, 2, 3)}
    assert totals[1] < totals[2] < totals[3]
    comm = dp_comm(dataclasses.replace(flat, zero_stage=3), job())
    assert comm.per_micro_batch_forward_s > 0 and comm.per_step_s == 0


def test_tensor_parallelism_across_nodes_pays_the_slower_link():
    inside = predict_step(Layout(tp=8, pp=1, dp=128, zero_stage=1, grad_accum=12, recompute="full",
                                 sequence_parallel=True), job())
    across = predict_step(Layout(tp=16, pp=1, dp=64, zero_stage=1, grad_accum=24, recompute="full",
                                 sequence_parallel=True), job())
    assert across.tp_comm_s > 10 * inside.tp_comm_s


def test_interleaving_sends_more_point_to_point_but_idles_less():
    plain = predict_step(BASE, job())
    interleaved = predict_step(dataclasses.replace(BASE, interleave=2), job())
    assert interleaved.pp_comm_s == pytest.approx(2 * plain.pp_comm_s)
    assert interleaved.bubble_fraction < plain.bubble_fraction


def test_a_faster_gpu_predicts_a_shorter_step():
    assert predict_step(BASE, job(gpu="h100-80g")).step_s < predict_step(BASE, job()).step_s


def moe_job(gpus: int = 25088) -> Job:
    return Job(model=get_model("gpt4-moe"), cluster=make_cluster(gpu="a100-80g", gpus=gpus), seq=8192,
               batch=BatchTarget.from_tokens(60e6, seq=8192))


def test_ep_all_to_alls_are_two_forward_two_backward_per_moe_layer_of_one_tp_ranks_share():
    from orchestrator.plan.timing import ep_comm_s

    job, model = moe_job(), get_model("gpt4-moe")
    layout = Layout(tp=8, pp=16, dp=196, ep=4, micro_batch=1, uneven_pipeline=True)
    one = ep_comm_s(layout, job, moe_layers=1)
    # k · capacity · s · b · h bf16 bytes, 1/tp of them per rank, (e−1)/e leave the rank, tp·ep = 32 ranks span nodes
    nbytes = 2 * 1.25 * 8192 * 10752 * 2 / 8
    assert one == pytest.approx(4 * 3 / 4 * nbytes / job.cluster.bandwidth(group_span=32))
    assert ep_comm_s(layout, job, moe_layers=8) == pytest.approx(8 * one)
    assert ep_comm_s(dataclasses.replace(layout, recompute="full"), job, moe_layers=1) == pytest.approx(1.5 * one)
    assert ep_comm_s(dataclasses.replace(layout, ep=1), job, moe_layers=8) == 0
    assert model.n_moe_layers == 120


def test_tp_traffic_of_an_moe_layer_adds_the_split_experts_all_reduce_and_deepspeeds_token_gathers():
    from orchestrator.plan.timing import ring_all_reduce, ring_half, tp_comm_s

    job = moe_job()
    layout = Layout(tp=8, pp=16, dp=196, ep=2, micro_batch=1)
    nbytes, bandwidth = 8192 * 10752 * 2, job.cluster.bandwidth(group_span=8)
    routed = 2 * 1.25 * nbytes
    per_pass = ring_all_reduce(nbytes, 8, bandwidth) + ring_all_reduce(routed, 8, bandwidth) \
        + 2 * ring_half(routed, 8, bandwidth)
    assert tp_comm_s(layout, job, layers=8, moe_layers=8) == pytest.approx(2 * 8 * per_pass)
    dense = tp_comm_s(layout, job, layers=8, moe_layers=0)
    assert dense == pytest.approx(4 * 8 * ring_all_reduce(nbytes, 8, bandwidth))
    assert tp_comm_s(dataclasses.replace(layout, tp=1), job, layers=8, moe_layers=8) == 0


def test_the_seed_layouts_step_counts_every_term():
    layout = Layout(tp=8, pp=16, dp=196, ep=2, zero_stage=1, micro_batch=1, grad_accum=37, recompute="full",
                    uneven_pipeline=True)
    step = predict_step(layout, moe_job())
    assert step.ep_comm_s > 0 and step.tp_comm_s > 0 and step.pp_comm_s > 0 and step.dp_comm_s > 0
    assert step.bubble_fraction == pytest.approx(15 / 52)
    assert step.pipeline_s == pytest.approx((37 + 15) * step.micro_batch_s)
