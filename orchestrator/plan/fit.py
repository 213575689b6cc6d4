"""Refit the time model's constants on the calibration table (``calibration.py``).

The objective is the sum of squared relative errors of predicted TFLOP/s per GPU over the rows.
The search is deterministic: a coarse grid, then coordinate-wise golden-section refinement, then
rounding to three significant figures, so the same table always gives the same constants.

Worked example: ``fit_constants(ROWS)`` → ``FITTED``; ``reproduce(ROWS, FITTED)`` lists each row's
measured and predicted TFLOP/s.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from orchestrator.config.cluster import make_cluster
from orchestrator.config.model import GPTConfig
from orchestrator.plan.calibration import GPU, GPUS_PER_NODE, SEQ, VOCAB, CalibrationRow, TimeConstants
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.timing import predict_step

EFFICIENCY_RANGE = (0.3, 1.0)
TRAFFIC_RANGE = (0.0, 40.0)


def row_job(row: CalibrationRow, constants: TimeConstants) -> tuple[Job, Layout]:
    """The row as a planning problem: its model shape, an A100-80G cluster, its layout (full
    recompute, fp16, no ZeRO, no sequence parallelism, Megatron's scatter/gather pipeline messages)."""
    model = GPTConfig(name=f"megatron-{row.params_billion:g}b", n_layers=row.layers, d_model=row.hidden,
                      n_heads=row.heads, d_head=row.hidden // row.heads, ctx=SEQ, vocab=VOCAB)
    job = Job(model=model, cluster=make_cluster(gpu=GPU, gpus=row.gpus, gpus_per_node=GPUS_PER_NODE), seq=SEQ,
              batch=BatchTarget(row.global_batch), precision="fp16", scatter_gather_p2p=True, constants=constants)
    layout = Layout(tp=row.tp, pp=row.pp, dp=row.dp, micro_batch=row.micro_batch,
                    grad_accum=row.global_batch // (row.micro_batch * row.dp), recompute="full",
                    interleave=row.interleave, sequence_parallel=False)
    return job, layout


def predicted_tflops(row: CalibrationRow, constants: TimeConstants) -> float:
    job, layout = row_job(row, constants)
    return predict_step(layout, job).tflops_per_gpu


def loss(rows: tuple[CalibrationRow, ...], constants: TimeConstants) -> float:
    return sum((predicted_tflops(row, constants) / row.tflops_per_gpu - 1) ** 2 for row in rows)


def _golden(f, low: float, high: float, iterations: int = 60) -> float:
    """Minimise a unimodal f on [low, high] by golden-section search."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    for _ in range(iterations):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if f(c) <= f(d):
            b = d
        else:
            a = c
    return (a + b) / 2


def _round3(value: float) -> float:
    return float(f"{value:.3g}")


def fit_constants(rows: tuple[CalibrationRow, ...], *, grid: int = 15, sweeps: int = 6) -> TimeConstants:
    """Least-squares fit of gemm_efficiency and memory_traffic_factor to the rows."""
    candidates = [TimeConstants(EFFICIENCY_RANGE[0] + i * (EFFICIENCY_RANGE[1] - EFFICIENCY_RANGE[0]) / grid,
                                TRAFFIC_RANGE[0] + j * (TRAFFIC_RANGE[1] - TRAFFIC_RANGE[0]) / grid)
                  for i in range(grid + 1) for j in range(grid + 1)]
    best = min(candidates, key=lambda constants: loss(rows, constants))
    for _ in range(sweeps):
        efficiency = _golden(lambda x: loss(rows, dataclasses.replace(best, gemm_efficiency=x)), *EFFICIENCY_RANGE)
        best = dataclasses.replace(best, gemm_efficiency=efficiency)
        traffic = _golden(lambda x: loss(rows, dataclasses.replace(best, memory_traffic_factor=x)), *TRAFFIC_RANGE)
        best = dataclasses.replace(best, memory_traffic_factor=traffic)
    return TimeConstants(_round3(best.gemm_efficiency), _round3(best.memory_traffic_factor))


@dataclass(frozen=True)
class Reproduction:
    row: CalibrationRow
    predicted_tflops: float

    @property
    def relative_error(self) -> float:
        return self.predicted_tflops / self.row.tflops_per_gpu - 1


def reproduce(rows: tuple[CalibrationRow, ...], constants: TimeConstants) -> list[Reproduction]:
    return [Reproduction(row, predicted_tflops(row, constants)) for row in rows]
