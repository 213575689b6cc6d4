"""``cluster.precision: auto`` made concrete, before any process starts.

auto is bf16 on GPUs (Tensor Cores; GPT-3-scale training runs in bf16) and, on a CPU, whichever
of bf16 and fp32 matmuls this machine runs faster, measured by the same probe MFU is a fraction
of (``engine.peak``, cached per machine, so the choice costs two one-second probes once). A CPU
with AMX tiles runs bf16 matmuls several times faster than fp32 and trains in bf16; one with
only AVX-512 BF16 (this project's CI machine: 118 GFLOP/s bf16 against 255 fp32) trains in fp32.

``orchestrate run`` calls ``resolve_run_precision`` once and writes the result into the run's
``run_config.yaml`` and every ``ds_config.json``, so the saved configs say what ran. Only the
CPU measurement imports torch.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from orchestrator.config.run import RunConfig


def faster_cpu_precision(*, cache_file: Optional[Path] = None, measure=None) -> str:
    """``bf16`` when this CPU's measured bf16 matmul peak beats its fp32 one, else ``fp32``."""
    import torch

    from orchestrator.engine.peak import cached_peak

    extra = {"measure": measure} if measure is not None else {}
    cpu = torch.device("cpu")
    bf16 = cached_peak(dtype=torch.bfloat16, device=cpu, cache_file=cache_file, **extra).flops
    fp32 = cached_peak(dtype=torch.float32, device=cpu, cache_file=cache_file, **extra).flops
    return "bf16" if bf16 > fp32 else "fp32"


def resolve_precision(*, precision: str, device_type: str, cache_file: Optional[Path] = None,
                      measure=None) -> str:
    """``fp32`` or ``bf16`` for a cluster's ``precision`` (auto, fp32, bf16) on ``device_type``."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16"
    return faster_cpu_precision(cache_file=cache_file, measure=measure)


def resolve_run_precision(config: RunConfig, **probe) -> RunConfig:
    """``config`` with ``cluster.precision`` auto replaced by what this machine will run."""
    cluster = config.cluster
    chosen = resolve_precision(precision=cluster.precision, device_type=cluster.device_type, **probe)
    if chosen == cluster.precision:
        return config
    return dataclasses.replace(config, cluster=dataclasses.replace(cluster, precision=chosen))
