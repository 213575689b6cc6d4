"""What each phase of a run directory has done so far, read without touching anything.

Shared by ``orchestrate status`` (a table) and ``orchestrate report`` (plots and Markdown).
The phase's manifest says its status; its ``metrics.jsonl`` fills in the key metric while it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from orchestrator.config.loader import ConfigError, load_file
from orchestrator.config.run import PHASES
from orchestrator.handoff.checkpoint import read_latest
from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.manifest import Manifest, read_manifest
from orchestrator.handoff.metrics import METRICS_FILE, last_value, read_metrics

# The number that says whether a phase did its job, in order of preference.
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "pretrain": ("eval_loss", "loss"),
    "sft": ("eval_loss", "loss"),
    "reward": ("pairwise_accuracy", "eval_loss", "loss"),
    "ppo": ("oracle_score", "reward", "kl"),
}


@dataclass(frozen=True)
class PhaseSummary:
    phase: str
    status: str
    """complete, running, failed, or pending (no manifest yet)."""
    step: Optional[int]
    metric: Optional[tuple[str, float]]
    checkpoint: Optional[str]
    """The weights handed on (``final/shards``) when complete, else the latest committed checkpoint."""
    seconds: Optional[float]
    """Wall time: start to finish, or start to now while running."""
    records: tuple[dict, ...]
    manifest: Optional[Manifest]
    error: Optional[str] = None


def run_phases(run_dir: Path) -> list[str]:
    """The recipe's phases from ``run_config.yaml``, else every phase that has a folder."""
    config = run_dir / "run_config.yaml"
    if config.is_file():
        try:
            phases = load_file(config).get("phases")
        except ConfigError:
            phases = None
        if isinstance(phases, list) and phases:
            return [p for p in phases if p in PHASES]
    return [p for p in PHASES if (run_dir / p).is_dir()]


def _elapsed(manifest: Manifest) -> Optional[float]:
    if not manifest.started:
        return None
    start = datetime.fromisoformat(manifest.started)
    end = datetime.fromisoformat(manifest.finished) if manifest.finished else datetime.now(timezone.utc)
    return (end - start).total_seconds()


def key_metric(phase: str, manifest: Optional[Manifest], records: list[dict]) -> Optional[tuple[str, float]]:
    for key in KEY_METRICS.get(phase, ("loss",)):
        value = manifest.metrics.get(key) if manifest and manifest.status == "complete" else None
        value = value if value is not None else last_value(records, key)
        if value is not None:
            return key, float(value)
    return None


def summarize_phase(run_dir: Path, phase: str) -> PhaseSummary:
    directory = run_dir / phase
    records = read_metrics(directory / METRICS_FILE)
    try:
        manifest = read_manifest(directory) if (directory / "manifest.json").is_file() else None
    except HandoffError as err:
        return PhaseSummary(phase, "unreadable", None, None, None, None, tuple(records), None, error=str(err))
    latest = read_latest(directory / "checkpoints")
    checkpoint = (manifest.checkpoint if manifest and manifest.status == "complete"
                  else latest.relative_to(directory).as_posix() if latest else None)
    step = manifest.step if manifest and manifest.status != "running" else (records[-1]["step"] if records else None)
    return PhaseSummary(phase=phase, status=manifest.status if manifest else "pending", step=step,
                        metric=key_metric(phase, manifest, records), checkpoint=checkpoint,
                        seconds=_elapsed(manifest) if manifest else None, records=tuple(records), manifest=manifest,
                        error=manifest.error if manifest else None)


def summarize(run_dir: Path | str) -> list[PhaseSummary]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} not found: give the run_dir of a recipe "
                                f"(`orchestrate run RECIPE` creates it)")
    return [summarize_phase(run_dir, phase) for phase in run_phases(run_dir)]


def human_seconds(seconds: Optional[float]) -> str:
    """3725 → '1h02m', 95 → '1m35s'."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def format_metric(metric: Optional[tuple[str, float]]) -> str:
    return f"{metric[0]} {metric[1]:.4g}" if metric else "-"


def table_rows(summaries: list[PhaseSummary]) -> list[list[str]]:
    header = ["phase", "status", "step", "key metric", "checkpoint", "time"]
    rows = [[s.phase, s.status, "-" if s.step is None else str(s.step), format_metric(s.metric),
             s.checkpoint or "-", human_seconds(s.seconds)] for s in summaries]
    return [header, *rows]


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
