"""``orchestrate report RUN_DIR``: PNG plots of each phase's curves and a short ``report.md``.

Plots what exists: pretrain and SFT loss (train and eval), reward-model pairwise accuracy, PPO
reward, KL and oracle score, each phase's ``pretrain_loss``; PPO's panels carry the SFT policy's
level as a dashed reference line (its held-out RM score measured by PPO, its labeller score and
pretrain_loss from SFT's manifest), so a glance says whether PPO moved anything. ``report.md``
adds the alignment tax: pretrain_loss phase by phase. For an ``orchestrate scaling`` directory
(``scaling.json``), the ladder, the fit and the target. Uses matplotlib's Agg backend.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from orchestrator.handoff.metrics import series
from orchestrator.runner.summary import PhaseSummary, format_metric, human_seconds, summarize
from orchestrator.scaling.artifact import SCALING_JSON, SCALING_PNG, read_json
from orchestrator.scaling.artifact import markdown as scaling_markdown
from orchestrator.scaling.artifact import plot as plot_scaling

# phase → panels of (title, metric keys); a panel is drawn when any of its keys has data.
PANELS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "pretrain": (("loss", ("loss", "eval_loss")),),
    "sft": (("loss", ("loss", "eval_loss")), ("pretrain loss", ("pretrain_loss",))),
    "reward": (("pairwise accuracy", ("pairwise_accuracy",)), ("loss", ("loss", "eval_loss"))),
    "ppo": (("labeller score", ("oracle_score", "rollout_oracle_score")), ("RM reward", ("reward",)),
            ("KL to SFT", ("kl",)), ("pretrain loss", ("pretrain_loss",))),
}
REFERENCE_PHASE = {"ppo": "sft"}
"""Whose level a phase's panels show as reference lines."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (the recipe's run_dir)")
    parser.add_argument("--out", help="where to write the plots and report.md (default: RUN_DIR/report)")


def panel_series(records: tuple[dict, ...], keys: tuple[str, ...]) -> list[tuple[str, list[int], list[float]]]:
    """(label, steps, values) per key and kind that has data: ``loss (train)``, ``eval_loss (eval)``.

    A phase's ``final`` event is its last evaluation, so it extends the eval line.
    """
    lines = []
    for key in keys:
        for label, kinds in (("train", ("train",)), ("eval", ("eval", "final"))):
            steps, values = series([r for r in records if r.get("kind") in kinds], key)
            if steps:
                lines.append((f"{key} ({label})", steps, values))
    return lines


def sft_levels(summaries: list[PhaseSummary]) -> dict[str, float]:
    """The SFT policy's levels for PPO's reference lines: its held-out RM score as PPO measured it
    (``sft_reward``), its labeller score and pretrain_loss from SFT's manifest."""
    by_phase = {s.phase: s for s in summaries}
    levels = {}
    sft = by_phase.get("sft")
    if sft and sft.manifest and sft.manifest.status == "complete":
        levels.update({k: float(sft.manifest.metrics[k]) for k in ("pretrain_loss", "oracle_score")
                       if isinstance(sft.manifest.metrics.get(k), (int, float))})
    ppo = by_phase.get("ppo")
    for key in ("reward", "oracle_score"):
        _, values = series(ppo.records, f"sft_{key}") if ppo else ([], [])
        if values:
            levels[key] = values[-1]
    return levels


def plot_phase(summary: PhaseSummary, out_dir: Path, references: Optional[dict[str, float]] = None) -> Optional[Path]:
    """One PNG with a panel per metric group of the phase; None when it has no data yet.
    ``references``: metric → the level drawn as a dashed line on the panel that plots it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(title, panel_series(summary.records, keys)) for title, keys in PANELS.get(summary.phase, ())]
    panels = [(title, lines) for title, lines in panels if lines]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for axis, (title, lines) in zip(axes[0], panels):
        for label, steps, values in lines:
            axis.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        keys = {label.split(" (")[0] for label, _, _ in lines}
        for key, level in sorted((references or {}).items()):
            if key in keys:
                axis.axhline(level, linestyle="--", color="grey", linewidth=1, label=f"{key} (SFT level)")
        axis.set(title=f"{summary.phase}: {title}", xlabel="step")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path = out_dir / f"{summary.phase}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def final_metrics(summary: PhaseSummary) -> str:
    metrics = summary.manifest.metrics if summary.manifest and summary.manifest.status == "complete" else {}
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in metrics.items()) or "-"


def pretrain_losses(summaries: list[PhaseSummary]) -> list[tuple[str, float, str]]:
    """(phase, pretrain_loss, where from) of every complete phase that has one; an imported
    pretrain phase has none of its own: SFT measured it on the recipe's corpus (``parent_pretrain_loss``)."""
    rows = []
    for s in summaries:
        metrics = s.manifest.metrics if s.manifest and s.manifest.status == "complete" else {}
        if isinstance(metrics.get("pretrain_loss"), (int, float)):
            rows.append((s.phase, float(metrics["pretrain_loss"]), "manifest"))
        elif s.phase == "pretrain" and s.manifest and s.manifest.status == "complete":
            sft = next((o for o in summaries if o.phase == "sft" and o.manifest and o.manifest.status == "complete"), None)
            parent = sft.manifest.metrics.get("parent_pretrain_loss") if sft else None
            if isinstance(parent, (int, float)):
                rows.append((s.phase, float(parent), "measured by sft"))
    return rows


def alignment_tax_lines(summaries: list[PhaseSummary]) -> list[str]:
    """The held-out corpus loss of each phase's model and its rise over pretraining (InstructGPT §4.2)."""
    rows = pretrain_losses(summaries)
    if not rows:
        return []
    base = next((loss for phase, loss, _ in rows if phase == "pretrain"), None)
    lines = ["", "## Alignment tax", "", "Held-out loss on the pretraining corpus of the model each phase hands on.",
             "", "| phase | pretrain_loss | vs pretrain | |", "|---|---|---|---|"]
    for phase, loss, where in rows:
        rise = "-" if base is None else f"{loss - base:+.3f}"
        lines.append(f"| {phase} | {loss:.4f} | {rise} | {'' if where == 'manifest' else where} |")
    return lines


def markdown(run_dir: Path, summaries: list[PhaseSummary], plots: dict[str, Path], out_dir: Path) -> str:
    lines = [f"# Run report: {run_dir}", "", "| phase | status | step | key metric | final metrics | time |",
             "|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s.phase} | {s.status} | {'-' if s.step is None else s.step} | {format_metric(s.metric)} | "
                     f"{final_metrics(s)} | {human_seconds(s.seconds)} |")
    lines += alignment_tax_lines(summaries)
    for s in summaries:
        if s.phase in plots:
            lines += ["", f"## {s.phase}", "", f"![{s.phase}]({plots[s.phase].relative_to(out_dir).as_posix()})"]
        if s.error:
            lines += ["", f"{s.phase} failed: {s.error}"]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    summaries = summarize(run_dir)
    out_dir = Path(args.out) if args.out else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    levels = sft_levels(summaries)
    plots = {s.phase: path for s in summaries
             if (path := plot_phase(s, out_dir, levels if REFERENCE_PHASE.get(s.phase) == "sft" else None)) is not None}
    text = markdown(run_dir, summaries, plots, out_dir)
    if (run_dir / SCALING_JSON).is_file():  # `orchestrate scaling`'s run directory: its ladder, fit and target
        record = read_json(run_dir)
        plots["scaling"] = plot_scaling(record, out_dir / SCALING_PNG)
        text += "\n" + scaling_markdown(record, image=SCALING_PNG)
    report = out_dir / "report.md"
    report.write_text(text)
    print(f"wrote {report}" + (f" and {', '.join(p.name for p in plots.values())}" if plots else " (no metrics yet)"))
    return 0
