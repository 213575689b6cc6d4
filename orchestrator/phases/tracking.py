"""Where a phase's numbers go: ``metrics.jsonl`` (``handoff.metrics``) always, TensorBoard and wandb too.

Only rank 0 writes. wandb runs offline unless ``WANDB_API_KEY`` is set (nothing leaves the
machine by default; ``WANDB_MODE=disabled`` turns it off); TensorBoard event files sit beside ``metrics.jsonl`` in ``tensorboard/``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from orchestrator.handoff.hashing import atomic_write_text
from orchestrator.handoff.metrics import METRICS_FILE, append_metrics, read_metrics


class MetricsLog:
    """Append-only metrics for one phase: ``log(kind, step, **values)``."""

    def __init__(self, phase_dir: Path, *, phase: str, enabled: bool, config: Optional[dict] = None,
                 use_wandb: bool = True, use_tensorboard: bool = True, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.phase = phase
        self.path = Path(phase_dir) / METRICS_FILE
        self._tb = self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step:
            drop_after(self.path, resume_step)
        if use_tensorboard:
            self._tb = _open_tensorboard(Path(phase_dir) / "tensorboard")
        if use_wandb:
            self._wandb = _open_wandb(Path(phase_dir), phase=phase, config=config or {})

    def log(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        append_metrics(self.path, step=step, kind=kind, **values)
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(f"{kind}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in numbers.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def drop_after(path: Path, step: int) -> None:
    """Forget events past ``step`` (logged by a run that died before its next checkpoint): the
    resumed run logs those steps again, so plots get one point per step."""
    kept = [r for r in read_metrics(path) if r["step"] <= step and r["kind"] != "final"]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _open_tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; tolerate a trimmed install
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _open_wandb(phase_dir: Path, *, phase: str, config: dict):
    try:
        import wandb
    except ImportError:
        return None
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "gpt-orchestrator"), name=phase,
                      dir=str(phase_dir), mode=mode, config=config, reinit="finish_previous")
