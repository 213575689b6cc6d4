"""Published measurements the time model is fitted on, and the fitted constants.

Source: Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using
Megatron-LM" (SC21), Table 1, with the micro-batch sizes and interleaving depths of the scripts
that produced it (NVIDIA/Megatron-LM ``examples/sc21/run_table_1.sh``), as transcribed in
``calibration/megatron-a100.md``. Setting: DGX A100-80GB nodes (8 GPUs, NVLink, 8 × 200 Gb/s
InfiniBand), fp16 mixed precision, sequence 2048, vocabulary 51,200, full activation recompute,
no sequence parallelism (it came later), no ZeRO; gradient all-reduce overlapped with backward
when pp = 1 and not when pp > 1. The TFLOP/s column counts the recomputed forward pass:
F = 96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)) per iteration.

``scripts/fit_time_model.py`` refits ``FITTED`` from ``ROWS`` (``orchestrator.plan.fit``); a test
checks that the refit finds the shipped values.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimeConstants:
    """The time model's two fitted constants."""

    gemm_efficiency: float
    """Fraction of the device's peak FLOP/s that the matmuls reach."""
    memory_traffic_factor: float
    """Multiplier on Korthikanti et al.'s activation bytes per layer and micro-batch (no recompute):
    the elementwise kernels' (LayerNorm, GeLU, softmax, dropout, bias, residual) device-memory traffic
    over forward and backward, moved at HBM bandwidth."""


@dataclass(frozen=True)
class CalibrationRow:
    """One measured Megatron-LM run (Narayanan et al. 2021, Table 1)."""

    params_billion: float
    heads: int
    hidden: int
    layers: int
    tp: int
    pp: int
    dp: int
    global_batch: int
    micro_batch: int
    interleave: int
    tflops_per_gpu: float
    """Achieved TFLOP/s per GPU, counting the recomputed forward pass."""

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp


SEQ = 2048
VOCAB = 51200
GPU = "a100-80g"
GPUS_PER_NODE = 8

ROWS: tuple[CalibrationRow, ...] = (
    CalibrationRow(1.7, 24, 2304, 24, tp=1, pp=1, dp=32, global_batch=512, micro_batch=16, interleave=1,
                   tflops_per_gpu=137),
    CalibrationRow(7.5, 32, 4096, 36, tp=4, pp=1, dp=32, global_batch=512, micro_batch=16, interleave=1,
                   tflops_per_gpu=142),
    CalibrationRow(39.1, 64, 8192, 48, tp=8, pp=2, dp=32, global_batch=1536, micro_batch=4, interleave=1,
                   tflops_per_gpu=138),
    CalibrationRow(145.6, 96, 12288, 80, tp=8, pp=8, dp=24, global_batch=2304, micro_batch=2, interleave=2,
                   tflops_per_gpu=148),
    CalibrationRow(529.6, 128, 20480, 105, tp=8, pp=35, dp=9, global_batch=2520, micro_batch=1, interleave=3,
                   tflops_per_gpu=163),
)

HELD_OUT: tuple[CalibrationRow, ...] = (
    CalibrationRow(3.6, 32, 3072, 30, tp=2, pp=1, dp=32, global_batch=512, micro_batch=16, interleave=1,
                   tflops_per_gpu=138),
    CalibrationRow(18.4, 48, 6144, 40, tp=8, pp=1, dp=32, global_batch=1024, micro_batch=8, interleave=1,
                   tflops_per_gpu=135),
    CalibrationRow(76.1, 80, 10240, 60, tp=8, pp=4, dp=32, global_batch=1792, micro_batch=2, interleave=3,
                   tflops_per_gpu=140),
    CalibrationRow(310.1, 128, 16384, 96, tp=8, pp=16, dp=15, global_batch=2160, micro_batch=1, interleave=2,
                   tflops_per_gpu=155),
    CalibrationRow(1008.0, 160, 25600, 128, tp=8, pp=64, dp=6, global_batch=3072, micro_batch=1, interleave=1,
                   tflops_per_gpu=163),
)
"""The other five rows of the same Table 1 (layouts from ``run_table_1.sh``), never used by the fit:
a check on runs the constants did not see."""

FITTED = TimeConstants(gemm_efficiency=0.646, memory_traffic_factor=5.93)
"""The least-squares fit of relative TFLOP/s error over ``ROWS`` (``orchestrator.plan.fit``)."""
