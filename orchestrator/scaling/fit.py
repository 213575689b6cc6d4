"""Fitting L(C) = a·C^b + c to a ladder and predicting a larger run, with a band. NumPy only.

The residuals are taken in log loss, log L_i − log L̂(C_i), so every rung weighs the same
relative error (Hoffmann et al. 2022 and OLMo fit in log space as well). Compute is scaled by
a reference C_ref (the ladder's largest run) so the parameters are of order one:
L̂ = exp(α + b·x) + c with x = ln(C / C_ref), and a = exp(α)·C_ref^(−b).

- ``zero`` (c = 0) is a straight line in log-log: ordinary least squares, exact.
- ``free`` (GPT-4's form, OpenAI 2023, §2.3) is nonlinear: a scan over c in [0, min L) gives a
  start, then Levenberg–Marquardt (Marquardt 1963) on (α, b, c). It converges only to a law with
  b < 0 and 0 ≤ c < min L; otherwise it says so (``FitError``) instead of giving a number.

The band is a prediction interval from the fit's covariance (not a bootstrap, which five points
cannot support): s²·(JᵀJ)⁻¹ with s² the residual variance on n − p degrees of freedom, carried to
the prediction by the delta method, plus s² for the new run's own scatter, times Student's t
quantile (n − p dof), all in log loss: exp(ŷ ± t·√(g Σ gᵀ + s²)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

FitForm = Literal["free", "zero"]
MAX_ITERATIONS = 500


class FitError(ValueError):
    """The law could not be fitted (too few points, no convergence, or an unphysical optimum)."""


@dataclass(frozen=True)
class PowerLaw:
    """A fitted L(C) = a·C^b + c with what its band needs."""

    form: FitForm
    a: float
    b: float
    c: float
    c_ref: float
    """Compute the fit was centred on; a·c_ref^b is the reducible loss there."""
    covariance: tuple[tuple[float, ...], ...]
    """Of (α, b[, c]) with α = ln(a·c_ref^b)."""
    residual_sd: float
    """√(RSS / dof) of the log-loss residuals."""
    dof: int
    points: int

    @property
    def alpha(self) -> float:
        return math.log(self.a) + self.b * math.log(self.c_ref)

    def loss(self, compute: float) -> float:
        return self.a * compute ** self.b + self.c

    def predict(self, compute: float, *, level: float) -> tuple[float, float, float]:
        """(predicted loss, band low, band high) at ``compute``."""
        x = math.log(compute / self.c_ref)
        reducible = math.exp(self.alpha + self.b * x)
        predicted = reducible + self.c
        gradient = np.array([reducible, x * reducible, 1.0][: 3 if self.form == "free" else 2]) / predicted
        variance = float(gradient @ np.array(self.covariance) @ gradient) + self.residual_sd ** 2
        half = student_t_quantile(0.5 + level / 2, self.dof) * math.sqrt(variance)
        return predicted, predicted * math.exp(-half), predicted * math.exp(half)

    def to_dict(self) -> dict:
        return {"form": self.form, "a": self.a, "b": self.b, "c": self.c, "c_ref": self.c_ref,
                "covariance": [list(row) for row in self.covariance], "residual_sd": self.residual_sd,
                "dof": self.dof, "points": self.points}


def fit_power_law(compute, loss, *, form: FitForm) -> PowerLaw:
    """Least squares in log loss; ``form`` ``zero`` (c = 0) or ``free``."""
    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    if compute.shape != loss.shape or compute.ndim != 1:
        raise FitError(f"compute and loss must be two lists of one length, got {compute.shape} and {loss.shape}")
    if np.any(compute <= 0) or np.any(loss <= 0) or not np.all(np.isfinite(loss)):
        raise FitError(f"every compute and loss must be finite and positive, got losses {loss.tolist()}")
    parameters = 3 if form == "free" else 2
    if len(loss) <= parameters:
        raise FitError(f"{len(loss)} points cannot fit the {form}-c law's {parameters} parameters with a band: "
                       f"give at least {parameters + 1}")
    if len(set(compute.tolist())) < len(compute):
        raise FitError(f"two ladder runs have the same compute ({sorted(compute.tolist())}): each must differ")
    c_ref = float(compute.max())
    x, y = np.log(compute / c_ref), np.log(loss)
    return _fit_zero(x, y, c_ref) if form == "zero" else _fit_free(x, y, c_ref)


def _fit_zero(x: np.ndarray, y: np.ndarray, c_ref: float) -> PowerLaw:
    design = np.column_stack([np.ones_like(x), x])
    (alpha, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    if not b < 0:
        raise FitError(f"the loss does not fall with compute (slope b = {b:.3g} ≥ 0): the ladder's runs are not "
                       f"on a power law; check their learning rates and token counts")
    return _with_covariance("zero", design, y - design @ np.array([alpha, b]), alpha=alpha, b=b, c=0.0, c_ref=c_ref)


def _fit_free(x: np.ndarray, y: np.ndarray, c_ref: float) -> PowerLaw:
    theta = _free_start(x, y)
    damping = 1e-3
    for _ in range(MAX_ITERATIONS):
        residual, jacobian = _free_residual(theta, x, y)
        normal, gradient = jacobian.T @ jacobian, jacobian.T @ residual
        step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), gradient)
        trial = theta - step  # Gauss-Newton: r(θ + δ) ≈ r + Jδ is least at δ = −(JᵀJ)⁻¹Jᵀr
        if _feasible(trial, y) and np.sum(_free_residual(trial, x, y)[0] ** 2) < np.sum(residual ** 2):
            theta, damping = trial, damping / 3
            if np.max(np.abs(step) / (np.abs(theta) + 1e-8)) < 1e-10:
                break
        else:
            damping *= 4
            if damping > 1e12:
                break
    else:
        raise FitError(f"the free-c fit did not converge in {MAX_ITERATIONS} iterations (last c = {theta[2]:.4g}); "
                       f"use form zero or add ladder runs")
    alpha, b, c = (float(v) for v in theta)
    _check_free(b, c, y)
    residual, jacobian = _free_residual(theta, x, y)
    return _with_covariance("free", -jacobian, residual, alpha=alpha, b=b, c=c, c_ref=c_ref)


def _free_residual(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y − ŷ, ∂(y − ŷ)/∂θ) with ŷ = ln(exp(α + b·x) + c)."""
    alpha, b, c = theta
    reducible = np.exp(alpha + b * x)
    predicted = reducible + c
    jacobian = -np.column_stack([reducible, x * reducible, np.ones_like(x)]) / predicted[:, None]
    return y - np.log(predicted), jacobian


def _feasible(theta: np.ndarray, y: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(theta)) and -0.5 * math.exp(y.min()) < theta[2] < math.exp(y.min()))


def _free_start(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The c of a 64-point scan over [0, min L) whose straight-line fit of ln(L − c) leaves the least residual."""
    best, best_rss = None, math.inf
    for c in np.linspace(0.0, 0.98, 64) * math.exp(y.min()):
        design = np.column_stack([np.ones_like(x), x])
        (alpha, b), *_ = np.linalg.lstsq(design, np.log(np.exp(y) - c), rcond=None)
        rss = float(np.sum((y - np.log(np.exp(alpha + b * x) + c)) ** 2))
        if rss < best_rss:
            best, best_rss = np.array([alpha, b, c]), rss
    return best


def _check_free(b: float, c: float, y: np.ndarray) -> None:
    floor = math.exp(y.min())
    if not b < 0:
        raise FitError(f"the free-c fit ended at slope b = {b:.3g} ≥ 0: the loss does not fall with compute")
    if c < 0:
        raise FitError(f"the free-c fit ended at an irreducible loss c = {c:.4g} < 0: the ladder shows no floor; "
                       f"use form zero")
    if c >= floor:
        raise FitError(f"the free-c fit ended at c = {c:.4g} ≥ the smallest loss {floor:.4g}: not a law")


def _with_covariance(form: FitForm, jacobian: np.ndarray, residual: np.ndarray, *, alpha: float, b: float, c: float,
                     c_ref: float) -> PowerLaw:
    """s²·(JᵀJ)⁻¹, J the Jacobian of the prediction in the parameters; refuses a singular one."""
    points, parameters = jacobian.shape
    dof = points - parameters
    normal = jacobian.T @ jacobian
    if np.linalg.cond(normal) > 1e14:
        raise FitError(f"the {form}-c fit is not identifiable from these {points} points (singular normal matrix): "
                       f"spread the ladder wider in compute or use form zero")
    variance = float(residual @ residual) / dof
    covariance = variance * np.linalg.inv(normal)
    a = math.exp(alpha) * c_ref ** (-b)
    return PowerLaw(form=form, a=a, b=b, c=c, c_ref=c_ref, covariance=tuple(tuple(map(float, row)) for row in covariance),
                    residual_sd=math.sqrt(variance), dof=dof, points=points)


def student_t_quantile(probability: float, dof: int) -> float:
    """Student's t quantile, no SciPy: with t = √ν·tan φ the CDF is 1/2 + k·∫₀^φ cos^(ν−1) — smooth on
    [0, π/2), so Simpson's rule is exact to ~1e-12 — inverted by bisection in φ.

    >>> round(student_t_quantile(0.975, 3), 3)
    3.182
    """
    if dof < 1:
        raise ValueError(f"dof={dof}: Student's t needs at least one degree of freedom")
    if not 0.5 <= probability < 1:
        raise ValueError(f"probability={probability}: give an upper quantile in [0.5, 1)")
    k = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(math.pi)

    def cdf(phi: float) -> float:
        grid = np.cos(np.linspace(0.0, phi, 2001)) ** (dof - 1)
        return 0.5 + k * phi / 6000 * float(grid[0] + grid[-1] + 4 * grid[1:-1:2].sum() + 2 * grid[2:-1:2].sum())

    low, high = 0.0, math.pi / 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return math.sqrt(dof) * math.tan((low + high) / 2)
