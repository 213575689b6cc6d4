"""The ladder's LR rule from a sweep of the ladder itself. NumPy only.

Every run of a ladder should sit at its own best learning rate, or the ladder does not trace the
compute frontier and the fit's slope is off (the issue's feasibility runs: ½× the LR cost
+0.15 nats at the largest rung). The rule is ``lr × (lr_width / d_model) ** lr_exponent``; a sweep
trains the ladder at ``lr × m`` for a few multipliers m and fits both numbers to what it measured,
as DeepSeek LLM (DeepSeek-AI 2024, §3.1) fitted its optimal LR as a power law to small grid searches:

1. per rung, a parabola in ln lr through its swept losses (the Taylor form of any smooth minimum);
   its vertex is the rung's best LR, which must lie inside the swept range (else: sweep wider);
2. a least-squares line ln lr*(d) = ln lr + e · ln(lr_width / d) through the rungs' best LRs.

Worked example (``recipes/scaling-tiny.yaml``'s first rule, 6e-3 · (64/d)^½, swept × ½, 1, 2, 4;
BENCHMARKS.md): the 1 × 12 rung had its best LR at 0.041, 3.0× that rule's, the 1 × 32 one at
0.0090, 1.06× it, so the fitted rule is 2.96e-3 · (64/d)^1.49: the smaller, shorter runs want
far more than √width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class SweepError(ValueError):
    """The sweep cannot give a rule (too few LRs, no minimum, a minimum at its edge)."""


@dataclass(frozen=True)
class RungOptimum:
    name: str
    d_model: int
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    best_lr: float
    """The vertex of the parabola in ln lr."""
    best_loss: float
    """The parabola's value there."""


@dataclass(frozen=True)
class LrRule:
    lr: float
    """Best LR at width ``lr_width``."""
    lr_width: int
    lr_exponent: float
    optima: tuple[RungOptimum, ...]
    residual_sd: float
    """Of ln lr* about the line."""

    def lr_for(self, d_model: int) -> float:
        return self.lr * (self.lr_width / d_model) ** self.lr_exponent

    def to_dict(self) -> dict:
        return {"lr": self.lr, "lr_width": self.lr_width, "lr_exponent": self.lr_exponent,
                "residual_sd": self.residual_sd,
                "rungs": [{"name": o.name, "d_model": o.d_model, "lrs": list(o.lrs), "losses": list(o.losses),
                           "best_lr": o.best_lr, "best_loss": o.best_loss, "rule_lr": self.lr_for(o.d_model)}
                          for o in self.optima]}


def rung_optimum(name: str, d_model: int, lrs, losses) -> RungOptimum:
    """The vertex of the least-squares parabola of loss in ln lr (``SweepError`` if there is none inside)."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if len(lrs) < 3 or len(set(lrs.tolist())) < 3:
        raise SweepError(f"{name}: {len(set(lrs.tolist()))} distinct LRs cannot place a minimum: sweep at least 3 "
                         f"multipliers, e.g. 0.5,1,2,4")
    if not np.all(np.isfinite(losses)):
        raise SweepError(f"{name}: a swept run has no finite loss ({losses.tolist()}): drop the multiplier it diverged at")
    u = np.log(lrs)
    curvature, slope, intercept = np.polyfit(u, losses, 2)
    if not curvature > 0:
        raise SweepError(f"{name}: its losses {np.round(losses, 4).tolist()} at LRs {lrs.tolist()} have no minimum "
                         f"(the parabola opens downwards): sweep wider multipliers")
    vertex = -slope / (2 * curvature)
    if not u.min() <= vertex <= u.max():
        side = "below" if vertex < u.min() else "above"
        raise SweepError(f"{name}: its best LR {math.exp(vertex):.3g} lies {side} the swept {lrs.min():.3g}…"
                         f"{lrs.max():.3g}: add a multiplier further {side}")
    best_loss = float(intercept + slope * vertex + curvature * vertex ** 2)
    return RungOptimum(name=name, d_model=d_model, lrs=tuple(lrs.tolist()), losses=tuple(losses.tolist()),
                       best_lr=math.exp(vertex), best_loss=best_loss)


def fit_lr_rule(optima: list[RungOptimum], *, lr_width: int) -> LrRule:
    """ln lr* = ln lr + e · ln(lr_width / d) by least squares over the rungs' best LRs."""
    widths = {o.d_model for o in optima}
    if len(widths) < 2:
        raise SweepError(f"the sweep's rungs have {len(widths)} width(s): an LR-vs-width rule needs at least 2")
    x = np.log([lr_width / o.d_model for o in optima])
    y = np.log([o.best_lr for o in optima])
    design = np.column_stack([np.ones_like(x), x])
    (log_lr, exponent), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ np.array([log_lr, exponent])
    dof = max(1, len(y) - 2)
    return LrRule(lr=math.exp(log_lr), lr_width=lr_width, lr_exponent=float(exponent), optima=tuple(optima),
                  residual_sd=math.sqrt(float(residual @ residual) / dof))
