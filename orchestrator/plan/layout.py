"""The parallel layout of one job: degrees, ZeRO stage, batch split, recompute.

world = tp · pp · dp (Megatron's 3D grid, Narayanan et al. 2021). Expert parallelism is carved
out of data parallelism (DeepSpeed MoE: ep divides dp), so it does not add to the world.
``dp = -1`` means "the rest": ``resolve(world)`` fills it in.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Recompute = Literal["none", "selective", "full"]


class LayoutError(ValueError):
    """A layout that cannot run; the message names the numbers and the fix."""


@dataclass(frozen=True)
class Layout:
    """How one job is laid out over its ranks."""

    tp: int = 1
    """Tensor-parallel degree (Megatron column/row split inside a layer)."""
    pp: int = 1
    """Pipeline stages (DeepSpeed PipelineModule, 1F1B schedule)."""
    dp: int = -1
    """Data-parallel degree; -1: whatever the world leaves after tp · pp."""
    ep: int = 1
    """Expert-parallel degree, carved out of dp (DeepSpeed MoE ep_size)."""
    zero_stage: int = 0
    """ZeRO stage 0-3 (Rajbhandari et al. 2020)."""
    offload_optimizer: bool = False
    """Keep optimizer state (and its step) on the CPU (ZeRO-Offload)."""
    micro_batch: int = 1
    """Sequences per rank per forward pass."""
    grad_accum: int = 1
    """Micro-batches per optimizer step on each data-parallel rank."""
    recompute: Recompute = "none"
    """Activation recomputation (Korthikanti et al. 2022)."""
    interleave: int = 1
    """Virtual pipeline stages per rank (interleaved 1F1B); 1: plain 1F1B."""
    sequence_parallel: bool = False
    """Shard LayerNorm/dropout activations over the tp group (Korthikanti et al. 2022)."""
    uneven_pipeline: bool = False
    """Allow pp not dividing the layers: the first ``n_layers % pp`` stages take one more layer
    (``plan.partition.layers_per_stage``; 120 layers over pp 16: eight of 8, eight of 7)."""

    @property
    def world(self) -> int:
        if self.dp < 1:
            raise LayoutError("dp=-1 is not resolved yet: call layout.resolve(world)")
        return self.tp * self.pp * self.dp

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step: micro_batch × grad_accum × dp (the DP size, not the world)."""
        return self.micro_batch * self.grad_accum * self.dp

    def resolve(self, world: int) -> "Layout":
        """Fill in dp = -1 from the world size and check the grid equation."""
        model_parallel = self.tp * self.pp
        if self.dp == -1:
            if world % model_parallel:
                raise LayoutError(
                    f"world {world} is not divisible by tp {self.tp} × pp {self.pp} (={model_parallel}): "
                    f"use a world that is a multiple of {model_parallel} or smaller tp/pp")
            return dataclasses.replace(self, dp=world // model_parallel)
        if self.tp * self.pp * self.dp != world:
            raise LayoutError(f"world {world} != tp {self.tp} × pp {self.pp} × dp {self.dp} "
                              f"(={self.tp * self.pp * self.dp}): set dp=-1 to take the rest")
        return self
