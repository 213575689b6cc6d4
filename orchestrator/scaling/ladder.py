"""The ladder: small models of the target's family, each trained compute-optimally. Pure Python.

Compute is model FLOPs, ``GPTConfig.flops_per_token(seq) × tokens`` (Narayanan et al. 2021,
eq. 3: the layers' matmuls, the s × s attention and the logit layer, forward + backward, no
recompute); ``6·N·D`` (Kaplan et al. 2020) is kept beside it for reference. Every run, target
included, trains on ``tokens_per_param × N`` tokens (Hoffmann et al. 2022 put the optimum near
20), rounded up to whole optimizer steps, with its own warm-up and cosine schedule over those steps.

The rungs' compute budgets are geometric, ``C_k = max_fraction · C_target / spacing^(P−1−k)``.
For each budget the shape of the family (same vocab, context, head size, MLP ratio, attention;
``d_model`` a multiple of the head size, at most the target's layers and width) is the one
nearest in log compute, with the target's aspect ratio d_model / n_layers as the tie-breaker.

Worked example (``recipes/scaling-tiny.yaml``): a 3 × 64 target of the ``tiny`` family with heads
of 4 and a 512-token vocabulary (seq 128, 2048 tokens a step) has 0.19M parameters and 5.26e12
FLOPs at 20 tokens per parameter; five rungs at most 1/32 of that, spaced 2×, are 1 × 12 … 1 × 32
(1/416 … 1/36). Small models are mostly embedding (62–80 % here, 90–97 % at tiny's 2048 tokens,
where the rungs were 1 × 4 … 1 × 20 and bent off the power law), so their compute grows about
linearly with width and the ladder's shapes come out one layer deep; ``min_layers`` keeps the
shallow ones out where the family has enough deeper shapes.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Optional

from orchestrator.config.model import GPTConfig

ASPECT_WEIGHT = 1.0
"""How much a shape's distance from the target's aspect ratio counts against its distance in compute (both in log)."""
SHAPE = re.compile(r"(\d+)x(\d+)")


@dataclass(frozen=True)
class Rung:
    """One compute-optimal pretraining run of the family."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    params: int
    tokens: int
    steps: int
    flops: float
    """Model FLOPs, flops_per_token(seq) × tokens (Narayanan et al. 2021, eq. 3)."""
    flops_6nd: float
    """6 · params · tokens (Kaplan et al. 2020), for comparison."""
    flops_non_embedding: float
    """The layers' part of the model FLOPs, without the logit layer (Kaplan et al. 2020, §2.1: non-embedding compute)."""
    lr: float
    warmup_steps: int
    micro_batch: Optional[int] = None
    """The run's micro-batch when it differs from the recipe's (``scaling.rung_micro_batch``); None: the recipe's."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Ladder:
    rungs: tuple[Rung, ...]
    """Smallest first."""
    target: Rung
    seq_len: int
    tokens_per_step: int
    """The target's."""
    rung_tokens_per_step: Optional[int] = None
    """The rungs' when ``scaling.rung_micro_batch`` gives them a smaller batch; None: the target's."""

    def fraction(self, rung: Rung) -> float:
        """A rung's compute as a share of the target's."""
        return rung.flops / self.target.flops

    def epochs(self, rung: Rung, train_tokens: int) -> float:
        return rung.tokens / train_tokens


def family_model(family: GPTConfig, *, n_layers: int, d_model: int, name: str) -> GPTConfig:
    """A member of ``family``: its vocab, context, head size, MLP ratio and attention at another depth and width."""
    if d_model % family.d_head:
        raise ValueError(f"d_model {d_model} is not a multiple of the family's head size {family.d_head}: "
                         f"use {d_model // family.d_head * family.d_head or family.d_head} or "
                         f"{(d_model // family.d_head + 1) * family.d_head}")
    return dataclasses.replace(family, name=name, n_layers=n_layers, d_model=d_model,
                               n_heads=d_model // family.d_head, paper_params=0.0, paper_batch_tokens=0,
                               paper_lr=0.0)


def parse_shape(spec: str, family: GPTConfig) -> GPTConfig | None:
    """``4x96`` → a 4-layer, d_model-96 member of ``family``; None if ``spec`` is not a shape."""
    match = SHAPE.fullmatch(spec.strip())
    if not match:
        return None
    layers, width = int(match.group(1)), int(match.group(2))
    return family_model(family, n_layers=layers, d_model=width, name=f"{family.name}-{layers}x{width}")


COMPUTE_FIELDS = {"model": "flops", "non_embedding": "flops_non_embedding"}
"""``scaling.compute`` → the Rung field the fit's x is."""


def non_embedding_flops_per_token(model: GPTConfig, seq_len: int) -> float:
    """Model FLOPs per token less the logit layer's 3 · 2·h·V (Narayanan et al. 2021, eq. 3, its layers only).

    Kaplan et al. (2020, §2.1, §3) count compute without embeddings and the logit matmul, C ≈ 6·N_nonembed
    per token; this keeps Narayanan's s × s attention term, which their 6N drops.

    >>> from orchestrator.config.model import tiny
    >>> non_embedding_flops_per_token(family_model(tiny(), n_layers=1, d_model=16, name="x"), 128)
    43008.0
    """
    return float(model.flops_per_token(seq_len) - 3 * 2 * model.d_model * model.vocab)


def make_rung(model: GPTConfig, *, name: str, seq_len: int, tokens_per_step: int, tokens_per_param: float,
              lr: float, warmup_fraction: float, tokens: float | None = None, micro_batch: int | None = None) -> Rung:
    """The run of ``model`` on ``tokens`` (default tokens_per_param × params), in whole optimizer steps."""
    params = model.params()
    wanted = tokens_per_param * params if tokens is None else tokens
    steps = max(1, math.ceil(wanted / tokens_per_step))
    trained = steps * tokens_per_step
    return Rung(name=name, n_layers=model.n_layers, d_model=model.d_model, n_heads=model.n_heads, params=params,
                tokens=trained, steps=steps, flops=model.flops_per_token(seq_len) * trained,
                flops_6nd=6.0 * params * trained,
                flops_non_embedding=non_embedding_flops_per_token(model, seq_len) * trained, lr=lr,
                warmup_steps=max(1, round(warmup_fraction * steps)), micro_batch=micro_batch)


def _candidates(target: GPTConfig, min_layers: int) -> list[tuple[int, int]]:
    """(n_layers, d_model) of every smaller member of the target's family at least ``min_layers`` deep."""
    widths = [k * target.d_head for k in range(1, target.d_model // target.d_head + 1)]
    return [(layers, width) for layers in range(min_layers, target.n_layers + 1) for width in widths
            if (layers, width) != (target.n_layers, target.d_model)]


def plan_ladder(target: GPTConfig, *, points: int, max_fraction: float, spacing: float, seq_len: int,
                tokens_per_step: int, tokens_per_param: float, lr_for, warmup_fraction: float,
                target_tokens: float | None = None, min_layers: int = 1, rung_micro_batch: int | None = None,
                rung_tokens_per_step: int | None = None) -> Ladder:
    """``points`` compute-optimal rungs of the target's family, the largest at most ``max_fraction`` of its compute.

    ``lr_for(d_model) -> lr`` is the width rule every run (target included) follows; no rung is
    shallower than ``min_layers`` (Kaplan et al. 2020, §3.1 and Fig. 6: models of fewer than two
    layers leave the trend the deeper ones share). With ``rung_micro_batch`` (and the
    ``rung_tokens_per_step`` it gives) the rungs train that batch instead of the target's, the same
    tokens in proportionally more steps, at the width rule's LR × √(rung batch / target batch) (the
    square-root rule for Adam, Malladi et al. 2022); the target keeps the recipe's batch and LR.
    """
    if points < 2:
        raise ValueError(f"points={points}: a ladder needs several runs (at least 5 for the fit's checks)")
    if not 1 <= seq_len <= target.ctx:
        raise ValueError(f"seq_len {seq_len} must be in 1..{target.ctx} (the target's context)")
    if not 1 <= min_layers <= target.n_layers:
        raise ValueError(f"min_layers={min_layers} must be in 1..{target.n_layers} (the target's layers)")

    if (rung_micro_batch is None) != (rung_tokens_per_step is None):
        raise ValueError("rung_micro_batch and rung_tokens_per_step go together (the second is the first's global batch × seq)")
    step_tokens = rung_tokens_per_step or tokens_per_step
    lr_scale = math.sqrt(step_tokens / tokens_per_step)

    def rung(model: GPTConfig, name: str) -> Rung:
        return make_rung(model, name=name, seq_len=seq_len, tokens_per_step=step_tokens, tokens_per_param=tokens_per_param,
                         lr=lr_for(model.d_model) * lr_scale, warmup_fraction=warmup_fraction,
                         micro_batch=rung_micro_batch)

    top = make_rung(target, name=f"target-{target.n_layers}x{target.d_model}", seq_len=seq_len,
                    tokens_per_step=tokens_per_step, tokens_per_param=tokens_per_param, lr=lr_for(target.d_model),
                    warmup_fraction=warmup_fraction, tokens=target_tokens)
    pool = [rung(family_model(target, n_layers=layers, d_model=width, name=f"{layers}x{width}"), f"{layers}x{width}")
            for layers, width in _candidates(target, min_layers)]
    chosen = _pick_rungs(pool, points=points, ceiling=max_fraction * top.flops, spacing=spacing,
                         aspect=target.d_model / target.n_layers)
    if len(chosen) < points:
        raise ValueError(
            f"target {target.name} ({target.n_layers} layers × {target.d_model}, {top.flops:.3g} FLOPs) is too small for "
            f"a ladder of {points} runs spaced {spacing:g}× in compute below {max_fraction:.3g} of it: its family has "
            f"{len(chosen)} such shapes; give a bigger target, a larger max_fraction, a smaller spacing, or fewer points")
    named = [dataclasses.replace(r, name=f"r{i + 1}-{r.name}") for i, r in enumerate(chosen)]
    return Ladder(rungs=tuple(named), target=top, seq_len=seq_len, tokens_per_step=tokens_per_step,
                  rung_tokens_per_step=rung_tokens_per_step)


def _pick_rungs(pool: list[Rung], *, points: int, ceiling: float, spacing: float, aspect: float) -> list[Rung]:
    """From the top budget down: the shape nearest each budget, each at least √spacing below the one above it."""
    chosen: list[Rung] = []
    limit = ceiling
    for k in range(points):
        budget = ceiling / spacing ** k
        fits = [r for r in pool if r.flops <= limit]
        if not fits:
            break
        best = min(fits, key=lambda r: abs(math.log(r.flops / budget))
                   + ASPECT_WEIGHT * abs(math.log(r.d_model / r.n_layers / aspect)))
        chosen.append(best)
        limit = best.flops / math.sqrt(spacing)
    return chosen[::-1]
