"""The ``scaling:`` section of a recipe: how the ladder is planned, trained and fitted.

A scaling recipe is an ordinary run recipe (model, data, cluster, ``pretrain`` layout and loop)
plus this section. ``split_recipe`` takes the section out, so the rest is loaded by
``load_run_config`` unchanged and every rung is the same pretrain job ``orchestrate run`` runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from orchestrator.config.loader import ConfigError, apply_overrides, from_dict

Form = Literal["auto", "free", "zero"]
Compute = Literal["model", "non_embedding"]


@dataclass(frozen=True)
class ScalingConfig:
    """The ladder, its learning-rate rule and the fit (SPEC §11)."""

    target: Optional[str] = None
    """The model whose loss is predicted: a preset, a model file, or ``LAYERSxD_MODEL`` (``4x96``) in the
    recipe model's family; None: the recipe's ``model``."""
    points: int = 5
    """Ladder rungs (at least 5: the leave-top-out check fits 4, one more than the free-c law's 3 parameters)."""
    max_fraction: float = 1 / 32
    """The largest rung's compute as a fraction of the target's (GPT-4 used 1/1,000 to 1/10,000)."""
    spacing: float = 2.0
    """Compute ratio between neighbouring rungs (the shapes are then the nearest in the family)."""
    min_layers: int = 1
    """The shallowest rung (Kaplan et al. 2020, §3.1, Fig. 6: below two layers a model leaves the
    non-embedding trend the deeper ones share). 2 keeps one-layer shapes out, where the family has five
    deeper ones under the fraction: the tiny recipe's 3 × 64 target has 2 × 8 … 2 × 24, which on its
    one-layer LR rule missed the target by +10 % (BENCHMARKS.md)."""
    tokens_per_param: float = 20.0
    """Training tokens per parameter of every run, target included (Hoffmann et al. 2022: about 20)."""
    target_tokens: Optional[float] = None
    """The target's training tokens; None: tokens_per_param × its parameters (compute-optimal)."""
    lr: float = 6e-3
    """Peak LR of a model of width ``lr_width``; others get lr × (lr_width / d_model) ** lr_exponent. The
    defaults are a starting point: ``orchestrate scaling … --lr-sweep 0.5,1,2,4`` fits both numbers to the
    ladder's own best LRs (``orchestrator.scaling.lr_rule``), which the tiny recipe uses."""
    lr_width: int = 64
    lr_exponent: float = 0.5
    rung_micro_batch: Optional[int] = None
    """The rungs' micro-batch (None: the recipe's ``pretrain.layout.micro_batch``, the target's). Smaller runs
    are past their critical batch sooner (Kaplan et al. 2020, §5.1; McCandlish et al. 2018), and the tiny
    recipe's 94–325-step rungs spend a seed-dependent share of their steps on a plateau; a smaller batch gives
    them the same tokens in more steps, at the width rule's LR × √(rung batch / target batch)."""
    warmup_fraction: float = 0.05
    """Linear warm-up as a share of each run's own steps; cosine decay over the rest of them."""
    form: Form = "auto"
    """``zero``: L = a·C^b; ``free``: L = a·C^b + c (GPT-4's form); ``auto``: whichever predicts the
    ladder's largest run better from the others (the leave-top-out check)."""
    compute: Compute = "model"
    """The fit's x: ``model`` FLOPs (Narayanan et al. 2021, eq. 3) or ``non_embedding``, the same without the
    logit layer (Kaplan et al. 2020, §2.1, who found cleaner laws so). Chosen by the leave-top-out check on
    the tiny recipe (BENCHMARKS.md): model FLOPs."""
    level: float = 0.95
    """Coverage of the prediction band."""
    max_epochs: float = 4.0
    """Warn when a run repeats its training tokens more often than this (Muennighoff et al. 2023:
    up to about 4 epochs of repeated data are worth nearly as much as new data)."""
    seeds: int = 1
    """Runs per rung, at the recipe's seed and the next ``seeds − 1``; the fit takes each rung's mean held-out
    loss. A rung of the tiny recipe scatters by 3–12 % with its seed (BENCHMARKS.md), which 36× of
    extrapolation multiplies about 2.5-fold; the target is trained once."""
    eval_batches: int = 64
    """Held-out micro-batches of the final evaluation; every rung and the target read the same ones."""
    jobs: int = 1
    """Runs trained side by side (the target among them, longest first), each with ``cores / jobs`` CPU
    threads (``OMP_NUM_THREADS``, unless ``launch.env`` sets it) and a master port of its own (a recipe's
    ``launch.master_port`` is not used then). Only for one-rank runs: on a cluster every run takes the
    whole cluster, one after another."""

    def __post_init__(self) -> None:
        if self.points < 5:
            raise ConfigError(f"scaling.points={self.points}: a ladder needs at least 5 runs (the leave-top-out "
                              f"check fits 4 of them, and the free-c law has 3 parameters)")
        if not 0 < self.max_fraction < 1:
            raise ConfigError(f"scaling.max_fraction={self.max_fraction}: must be in (0, 1), e.g. 1/32")
        if not self.spacing > 1:
            raise ConfigError(f"scaling.spacing={self.spacing}: the compute ratio between rungs must be > 1, e.g. 2")
        if self.min_layers < 1:
            raise ConfigError(f"scaling.min_layers={self.min_layers} must be >= 1 (2 keeps one-layer models out)")
        if not self.tokens_per_param > 0:
            raise ConfigError(f"scaling.tokens_per_param={self.tokens_per_param} must be > 0 (Chinchilla: 20)")
        if self.target_tokens is not None and not self.target_tokens > 0:
            raise ConfigError(f"scaling.target_tokens={self.target_tokens} must be > 0 (or null)")
        if not (self.lr > 0 and self.lr_width >= 1):
            raise ConfigError(f"scaling.lr={self.lr}, lr_width={self.lr_width}: both must be positive")
        if self.rung_micro_batch is not None and self.rung_micro_batch < 1:
            raise ConfigError(f"scaling.rung_micro_batch={self.rung_micro_batch} must be >= 1 (or null: the recipe's)")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"scaling.warmup_fraction={self.warmup_fraction} must be in [0, 1)")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"scaling.level={self.level} must be in [0.5, 1), e.g. 0.95")
        if self.seeds < 1:
            raise ConfigError(f"scaling.seeds={self.seeds} must be >= 1 (runs per rung)")
        if self.jobs < 1:
            raise ConfigError(f"scaling.jobs={self.jobs} must be >= 1 (runs trained side by side)")
        if self.eval_batches < 1:
            raise ConfigError(f"scaling.eval_batches={self.eval_batches} must be >= 1")

    def lr_for(self, d_model: int) -> float:
        """The width rule: lr × (lr_width / d_model) ** lr_exponent."""
        return self.lr * (self.lr_width / d_model) ** self.lr_exponent


def split_recipe(data: dict, overrides: list[str]) -> tuple[ScalingConfig, dict, list[str]]:
    """(the scaling section with its ``--set scaling.…`` overrides, the rest, the other overrides)."""
    mine = [text for text in overrides if text.startswith("scaling.")]
    rest = [text for text in overrides if not text.startswith("scaling.")]
    data = dict(data)
    section = apply_overrides({"scaling": data.pop("scaling", None) or {}}, mine)["scaling"]
    return from_dict(ScalingConfig, section, "scaling"), data, rest
