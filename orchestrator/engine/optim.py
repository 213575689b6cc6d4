"""AdamW, its parameter groups, the learning-rate schedule, and the skip-on-non-finite guard.

- AdamW (Loshchilov & Hutter 2019) with GPT-3's β2 = 0.95 and weight decay 0.1 on matrices only
  (biases and LayerNorm gains are not decayed, as in nanoGPT); MoE expert parameters get their
  own groups through DeepSpeed's ``split_params_into_different_moe_groups_for_optimizer`` so
  ZeRO reduces them over the expert-data-parallel group.
- Schedule (Brown et al. 2020, §B): linear warm-up, then cosine decay to lr · min_lr_ratio.
- ``StepGuard``: a NaN/inf loss on any rank skips the whole optimizer step on every rank. The
  decision is one all-reduce made inside ``GuardedAdamW.step`` — the moment every layout reaches
  (after the last micro-batch's backward, also inside DeepSpeed's pipeline schedule).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from orchestrator.config.run import OptimConfig


def learning_rate(step: int, *, optim: OptimConfig, total_steps: int) -> float:
    """LR for optimizer step ``step`` (0-based): linear warm-up over ``warmup_steps``, then cosine
    decay to ``lr · min_lr_ratio`` at ``total_steps`` (held there after). GPT-3, §B."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    decay_steps = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / decay_steps)
    min_lr = optim.lr * optim.min_lr_ratio
    return min_lr + 0.5 * (optim.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def parameter_groups(module: nn.Module, *, weight_decay: float) -> list[dict]:
    """Decay matrices (dim ≥ 2: linear weights, embeddings, the router); not biases or gains.
    Expert parameters are split into their own groups (DeepSpeed MoE needs that for ZeRO)."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"name": "decay", "params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"name": "no_decay", "params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    if any(getattr(p, "allreduce", True) is False for p in trainable):
        from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

        groups = split_params_into_different_moe_groups_for_optimizer(groups)
    return [group for group in groups if group["params"]]


class StepGuard:
    """Watches this rank's losses during one optimizer step; decides once, for all ranks, whether
    the step must be skipped."""

    def __init__(self, *, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self._bad = torch.zeros((), device=self.device)
        self.decision: Optional[bool] = None
        """None until the optimizer asked; then True when some rank saw a non-finite loss."""

    def observe(self, loss: Tensor) -> None:
        self._bad = torch.maximum(self._bad, (~torch.isfinite(loss.detach())).any().float())

    def skip_this_step(self) -> bool:
        if self.decision is None:
            flag = self._bad.clone().reshape(1)
            if dist.get_world_size() > 1:
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)     # every rank, every stage
            self.decision = bool(flag.item() > 0)
        return self.decision


class GuardedAdamW(torch.optim.AdamW):
    """torch AdamW that (1) skips its update when the guard says so — weights, moments and step
    count stay untouched — and (2) optionally clips by the exact global gradient norm itself
    (``clip_norm``: used where DeepSpeed hands it the model's own parameters, i.e. fp32 without ZeRO).

    DeepSpeed reads ``overflow`` (step not applied) and ``_global_grad_norm`` after each step.
    With ZeRO, DeepSpeed calls ``step`` once per parameter group; the guard decides only once.
    """

    def __init__(self, groups: list[dict], *, optim: OptimConfig, guard: StepGuard,
                 clip_norm: Optional[Callable[[list[Tensor], float], Tensor]] = None):
        # fused: one kernel over all tensors (CPU and CUDA); torch's default on CPU is a Python
        # loop of ~10 ops per tensor, 5-25x slower on the 25M benchmark model (BENCHMARKS.md)
        super().__init__(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                         weight_decay=optim.weight_decay, fused=True)
        self.guard, self.clip_norm, self.max_norm = guard, clip_norm, optim.grad_clip
        self.overflow = False
        self._global_grad_norm: Optional[float] = None

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        self.overflow = self.guard.skip_this_step()
        if self.overflow:
            self._global_grad_norm = float("nan")
            return None
        if self.clip_norm is not None:
            params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            self._global_grad_norm = float(self.clip_norm(params, self.max_norm))
        return super().step(closure)


def global_norm_clipper(state) -> Callable[[list[Tensor], float], Tensor]:
    """Clip-by-global-norm (Pascanu et al. 2013) over the whole model, whatever its layout.

    Each gradient element is counted on exactly one rank, then one all-reduce sums the squares:
    TP-split tensors on every TP rank, replicated ones (LayerNorms, row-parallel biases) on TP
    rank 0; the pipeline's second copy of the tied embedding not at all; dense parameters on
    data-parallel rank 0, experts on their expert-data-parallel rank 0. (DeepSpeed's ZeRO-0 path
    counts replicated tensors only on pipeline stage 0 and averages expert norms, which is why
    fp32 without ZeRO uses this instead.)

    The squares are summed in float64. torch's fp32 norm of one large tensor is off by a few
    parts in 10^6 on CPU (3.0e-6 for a 2048 × 64 gradient, the tiny GPT's embedding: the
    accumulation runs in fp32), and ZeRO's norm, summed over smaller partitions, rounds
    differently; in fp32 the single-process norm of the MoE equivalence test was 3.4e-6 below its
    float64 value at step 1 while ZeRO-2's was 5e-9, so the two layouts clipped by different
    factors and drifted apart (1.35e-5 by step 4) with identical gradients (tests/distributed).
    """

    def counted_here(param: Tensor) -> bool:
        if getattr(param, "ds_pipe_replicated", False):
            return False
        if state.tp_rank != 0 and not getattr(param, "tensor_model_parallel", False):
            return False
        is_expert = getattr(param, "allreduce", True) is False
        return (state.expert_dp_rank if is_expert else state.dp_rank) == 0

    def clip(params: list[Tensor], max_norm: float) -> Tensor:
        squares = torch.zeros((), dtype=torch.float64, device=state.device)
        for param in params:   # one tensor at a time: its transient float64 copy, never the whole model's
            if counted_here(param):
                squares += torch.linalg.vector_norm(param.grad, dtype=torch.float64) ** 2
        if state.context.world > 1:
            dist.all_reduce(squares)
        norm = squares.sqrt().float()
        if max_norm > 0:   # the same max_norm / (norm + 1e-6) as torch and DeepSpeed
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    return clip
