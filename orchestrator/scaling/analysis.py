"""From ladder losses to a prediction: the leave-top-out check, the choice of form, the target's band.

The leave-top-out check fits the smaller runs and predicts the largest one, which the ladder has
measured: it is the one out-of-sample test a ladder can give of itself, at the shortest
extrapolation, and it says how far to trust the longer one to the target. With ``form: auto``
the form (c = 0 or a free c) whose check came closer is used for the prediction — on a small
corpus the free c, one more parameter fitted to five noisy points, tends to chase the scatter.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from orchestrator.scaling.fit import FitError, FitForm, PowerLaw, fit_power_law

FORMS: tuple[FitForm, ...] = ("zero", "free")


@dataclass(frozen=True)
class Check:
    """One form's prediction of a measured run from the runs below it."""

    form: FitForm
    predicted: Optional[float]
    low: Optional[float]
    high: Optional[float]
    measured: float
    failure: Optional[str] = None
    """Why the fit gave no number (it did not converge, or ended unphysical)."""

    @property
    def error(self) -> Optional[float]:
        """predicted / measured − 1: +0.02 means 2 % too high."""
        return None if self.predicted is None else self.predicted / self.measured - 1

    @property
    def inside(self) -> Optional[bool]:
        return None if self.predicted is None else self.low <= self.measured <= self.high

    def to_dict(self) -> dict:
        return {**asdict(self), "error": self.error, "inside_band": self.inside}


@dataclass(frozen=True)
class Prediction:
    """The law fitted to the whole ladder and what it says about the target."""

    law: PowerLaw
    reason: str
    """Why this form."""
    compute: float
    loss: float
    low: float
    high: float
    level: float
    checks: tuple[Check, ...]
    """Leave-top-out, one per form."""
    other: dict
    """The other form's fit on the whole ladder, or why it failed (for comparison)."""

    def to_dict(self) -> dict:
        return {"form": self.law.form, "reason": self.reason, "law": self.law.to_dict(), "level": self.level,
                "target_compute": self.compute, "predicted_loss": self.loss, "band": [self.low, self.high],
                "leave_top_out": [check.to_dict() for check in self.checks], "other_form": self.other}


def leave_top_out(compute: list[float], loss: list[float], *, form: FitForm, level: float) -> Check:
    """Fit all but the largest run with ``form``; predict the largest."""
    order = sorted(range(len(compute)), key=compute.__getitem__)
    below, top = order[:-1], order[-1]
    try:
        law = fit_power_law([compute[i] for i in below], [loss[i] for i in below], form=form)
    except FitError as err:
        return Check(form=form, predicted=None, low=None, high=None, measured=loss[top], failure=str(err))
    predicted, low, high = law.predict(compute[top], level=level)
    return Check(form=form, predicted=predicted, low=low, high=high, measured=loss[top])


def choose_form(requested: str, checks: tuple[Check, ...]) -> tuple[FitForm, str]:
    """The requested form, or (``auto``) the one whose leave-top-out check erred least."""
    by_form = {check.form: check for check in checks}
    if requested != "auto":
        check = by_form[requested]
        how = "failed" if check.error is None else f"erred {check.error:+.2%}"
        return requested, f"form {requested} was requested (its leave-top-out check {how})"
    usable = [check for check in checks if check.error is not None]
    if not usable:
        raise FitError("no form could fit the smaller runs of the ladder: "
                       + "; ".join(f"{c.form}: {c.failure}" for c in checks))
    best = min(usable, key=lambda check: abs(check.error))
    others = ", ".join(f"{c.form}-c {'failed' if c.error is None else f'{c.error:+.2%}'}"
                       for c in checks if c is not best)
    return best.form, (f"auto: fitted to the smaller runs, the {best.form}-c law predicted the largest run within "
                       f"{best.error:+.2%} ({others})")


def predict(compute: list[float], loss: list[float], *, target_compute: float, form: str, level: float) -> Prediction:
    """Check both forms, choose one, fit it to every run and predict the target (``FitError`` if it cannot)."""
    if target_compute <= max(compute):
        raise ValueError(f"target compute {target_compute:.3g} FLOPs is not above the ladder's largest run "
                         f"({max(compute):.3g}): a ladder predicts a larger run")
    checks = tuple(leave_top_out(compute, loss, form=f, level=level) for f in FORMS)
    chosen, reason = choose_form(form, checks)
    law = fit_power_law(compute, loss, form=chosen)
    predicted, low, high = law.predict(target_compute, level=level)
    other_form = "free" if chosen == "zero" else "zero"
    try:
        other_law = fit_power_law(compute, loss, form=other_form)
        other = {"law": other_law.to_dict(), "predicted_loss": other_law.predict(target_compute, level=level)[0]}
    except FitError as err:
        other = {"form": other_form, "failure": str(err)}
    if not all(math.isfinite(v) for v in (predicted, low, high)):
        raise FitError(f"the {chosen}-c fit gave a non-finite prediction ({predicted}, band {low}..{high})")
    return Prediction(law=law, reason=reason, compute=target_compute, loss=predicted, low=low, high=high,
                      level=level, checks=checks, other=other)
