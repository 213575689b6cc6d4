"""``DIR/scaling.json`` and ``DIR/scaling.png``: the ladder, the fit, the band and the target.

The figure is log-log loss against compute: the ladder's runs, the fitted law and its band from
the smallest run to past the target, the leave-top-out prediction of the largest run, the target's
prediction with its band and, once trained, its measured loss. Matplotlib's Agg backend.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from orchestrator.handoff.hashing import atomic_write_text
from orchestrator.scaling.analysis import Prediction
from orchestrator.scaling.fit import PowerLaw

SCALING_JSON = "scaling.json"
SCALING_PNG = "scaling.png"


def measured_target(prediction: Optional[Prediction], measured: Optional[float]) -> dict:
    """The target's measurement against the prediction: error (predicted / measured − 1) and whether it is inside."""
    if measured is None:
        return {"measured_loss": None, "error": None, "inside_band": None}
    if prediction is None:
        return {"measured_loss": measured, "error": None, "inside_band": None}
    return {"measured_loss": measured, "error": prediction.loss / measured - 1,
            "inside_band": prediction.low <= measured <= prediction.high}


def write_json(run_dir: Path, record: dict) -> Path:
    path = run_dir / SCALING_JSON
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_json(run_dir: Path) -> dict:
    return json.loads((run_dir / SCALING_JSON).read_text())


def plot(record: dict, path: Path) -> Path:
    """The log-log figure of a ``scaling.json`` record."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ladder, target, fit = record["ladder"], record["target"], record["fit"]
    field = record.get("fit_compute", "flops")
    compute = [row[field] for row in ladder]
    loss = [row["eval_loss"] for row in ladder]
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    seeds = [(row[field], seed_loss) for row in ladder for seed_loss in row.get("seed_losses", [])]
    if len(seeds) > len(ladder):
        axis.loglog(*zip(*seeds), ".", color="C0", alpha=0.45, markersize=5, label="one seed's run")
    axis.loglog(compute, loss, "o", color="C0",
                label="ladder (held-out loss" + (", mean of seeds)" if len(seeds) > len(ladder) else ")"))
    law = _law(fit["law"])
    grid = np.geomspace(min(compute) / 1.5, target[field] * 1.5, 200)
    bands = np.array([law.predict(c, level=fit["level"]) for c in grid])
    axis.loglog(grid, bands[:, 0], "-", color="C1",
                label=f"fit ({fit['form']}-c): {law.a:.3g}·C^{law.b:.3f}" + (f" + {law.c:.3g}" if law.form == "free" else ""))
    axis.fill_between(grid, bands[:, 1], bands[:, 2], color="C1", alpha=0.2, label=f"{fit['level']:.0%} band")
    top_check = next(c for c in fit["leave_top_out"] if c["form"] == fit["form"])
    if top_check["predicted"] is not None:
        axis.errorbar([compute[-1]], [top_check["predicted"]], fmt="s", mfc="none", color="C2", capsize=3,
                      yerr=[[top_check["predicted"] - top_check["low"]], [top_check["high"] - top_check["predicted"]]],
                      label=f"leave-top-out prediction ({top_check['error']:+.1%})")
    axis.errorbar([target[field]], [target["predicted_loss"]], fmt="D", color="C3", capsize=3,
                  yerr=[[target["predicted_loss"] - target["band"][0]], [target["band"][1] - target["predicted_loss"]]],
                  label="target prediction")
    if target.get("measured_loss") is not None:
        axis.plot([target[field]], [target["measured_loss"]], "*", color="k", markersize=12,
                  label=f"target measured (prediction {target['error']:+.1%})")
    axis.set(xlabel="training compute C (" + ("non-embedding " if field == "flops_non_embedding" else "model ") + "FLOPs)", ylabel="final held-out loss (nats)",
             title=f"{record['name']}: ladder of {len(ladder)} → target {target['name']}")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _law(data: dict) -> PowerLaw:
    return PowerLaw(form=data["form"], a=data["a"], b=data["b"], c=data["c"], c_ref=data["c_ref"],
                    covariance=tuple(tuple(row) for row in data["covariance"]), residual_sd=data["residual_sd"],
                    dof=data["dof"], points=data["points"])


def markdown(record: dict, *, image: str) -> str:
    """A report section: the ladder table, the fit, the check and the target."""
    fit, target = record["fit"], record["target"]
    lines = ["## Scaling", "", f"![scaling]({image})", "", "| run | params | tokens | FLOPs | fraction | eval loss |",
             "|---|---|---|---|---|---|"]
    for row in record["ladder"]:
        lines.append(f"| {row['name']} | {row['params']:,} | {row['tokens']:,} | {row['flops']:.3g} | "
                     f"1/{1 / row['fraction']:.0f} | {row['eval_loss']:.4f} |")
    measured = "-" if target.get("measured_loss") is None else f"{target['measured_loss']:.4f}"
    lines.append(f"| **{target['name']}** | {target['params']:,} | {target['tokens']:,} | {target['flops']:.3g} | 1 | "
                 f"predicted {target['predicted_loss']:.4f} [{target['band'][0]:.4f}, {target['band'][1]:.4f}], "
                 f"measured {measured} |")
    law = fit["law"]
    lines += ["", f"Fit: L = {law['a']:.4g}·C^{law['b']:.4f} + {law['c']:.4g} ({fit['form']}-c). {fit['reason']}."]
    for check in fit["leave_top_out"]:
        text = (check["failure"] if check["predicted"] is None else
                f"predicted {check['predicted']:.4f} [{check['low']:.4f}, {check['high']:.4f}] vs measured "
                f"{check['measured']:.4f} ({check['error']:+.2%}, {'inside' if check['inside_band'] else 'outside'} the band)")
        lines.append(f"- leave-top-out, {check['form']}-c: {text}")
    if target.get("error") is not None:
        lines.append(f"- target: prediction {target['error']:+.2%} from the measurement, "
                     f"{'inside' if target['inside_band'] else 'outside'} the band")
    lines += [f"- warning: {w}" for w in record.get("warnings", [])]
    return "\n".join(lines) + "\n"
