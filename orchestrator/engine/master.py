"""The fp32 master weights of a 16-bit DeepSpeed engine, read and written per parameter.

In bf16 the module holds each weight rounded to 8 mantissa bits; the optimizer keeps the fp32
value it updates (Micikevicius et al. 2018, "Mixed precision training", §3.1). What a phase hands
to the next (SPEC §5) and what a child phase starts from are those fp32 values, not their
rounding. Where DeepSpeed 0.19 keeps them:

- ZeRO 1/2 and ``BF16_Optimizer`` (ZeRO 1 with fp32 accumulation): each parameter's
  ``_hp_mapping`` points at this rank's fragment; ``safe_get_full_fp32_param`` all-reduces the
  fragments over the data-parallel group (collective), ``safe_set_full_fp32_param`` writes this
  rank's fragment;
- ZeRO 3: the optimizer's fp32 partition, gathered (collective) or written by the same two calls;
- ZeRO 0 (``FP16_UnfusedOptimizer``, chosen for a torch optimizer): ``fp32_groups[i][j]`` is the
  master of ``fp16_groups[i][j]``.

In fp32 the module's parameters are the masters: ``fp32_master`` returns None and callers read
the parameter itself.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def trains_in_16_bit(engine) -> bool:
    return bool(engine.bfloat16_enabled() or engine.fp16_enabled())


def _unfused_master(optimizer, param: nn.Parameter) -> Optional[Tensor]:
    for low, high in zip(getattr(optimizer, "fp16_groups", ()), getattr(optimizer, "fp32_groups", ())):
        for lp, hp in zip(low, high):
            if lp is param:
                return hp.detach()
    return None


def fp32_master(engine, param: nn.Parameter) -> Optional[Tensor]:
    """``param``'s fp32 master, whole over data parallelism (this rank's TP piece), or None when
    the module trains in fp32. Collective under ZeRO: every rank calls it for the same parameters."""
    if not trains_in_16_bit(engine):
        return None
    if hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"):
        from deepspeed.utils import safe_get_full_fp32_param

        full = safe_get_full_fp32_param(param)
        if full is not None:
            return full.view(param.ds_shape if hasattr(param, "ds_id") else param.shape)
    master = _unfused_master(engine.optimizer, param)
    if master is None:
        raise RuntimeError(f"no fp32 master weight for a parameter of shape {tuple(param.shape)} in DeepSpeed's "
                           f"{type(engine.optimizer).__name__}: this DeepSpeed version keeps them elsewhere")
    return master.detach()


def set_fp32_master(engine, param: nn.Parameter, value: Tensor) -> None:
    """Write ``value`` (this rank's whole TP piece, fp32) into ``param``'s master. Not collective."""
    value = value.to(torch.float32)
    if hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"):
        from deepspeed.utils import safe_set_full_fp32_param

        safe_set_full_fp32_param(param, value.to(param.device))
        return
    master = _unfused_master(engine.optimizer, param)
    if master is None:
        raise RuntimeError(f"no fp32 master weight for a parameter of shape {tuple(param.shape)} in DeepSpeed's "
                           f"{type(engine.optimizer).__name__}: this DeepSpeed version keeps them elsewhere")
    master.data.copy_(value.view_as(master))


@torch.no_grad()
def set_fp32_masters(engine, shards, state_dict: dict[str, Tensor]) -> None:
    """Every local parameter's master from a plain fp32 state dict (``Shard.take`` cuts this
    rank's TP piece); the 16-bit weights already hold its rounding."""
    for param, shard in shards:
        set_fp32_master(engine, param, shard.take(state_dict[shard.name]))
