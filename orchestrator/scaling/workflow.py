"""``orchestrate scaling``'s order of work: plan → (train the ladder, then the target) → fit → record.

    setup = load_setup("recipes/scaling-tiny.yaml", run_dir="runs/scaling", overrides=[])
    code = run_scaling(setup, train=True, train_target=True)     # writes DIR/scaling.json and .png
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

from orchestrator.config.loader import ConfigError, load_file
from orchestrator.config.model import GPTConfig
from orchestrator.config.run import RunConfig, load_run_config, resolve_model
from orchestrator.engine.launch import ENTRY_MODULE
from orchestrator.handoff.hashing import atomic_write_text
from orchestrator.scaling import artifact
from orchestrator.scaling.analysis import Prediction, predict
from orchestrator.scaling.cluster import target_cost
from orchestrator.scaling.config import ScalingConfig, split_recipe
from orchestrator.scaling.lr_rule import LrRule, fit_lr_rule, rung_optimum
from orchestrator.scaling.ladder import COMPUTE_FIELDS, Ladder, parse_shape, plan_ladder
from orchestrator.scaling.runner import (RungNotFinished, corpus_train_tokens, final_loss, prepare_shared_data,
                                         rung_config, rung_dir, train_rung)


@dataclass(frozen=True)
class Setup:
    """Everything planned before anything runs."""

    recipe: str
    scaling: ScalingConfig
    base: RunConfig
    """The recipe without its ``scaling:`` section (the rungs' common config)."""
    target: GPTConfig
    ladder: Ladder
    run_dir: Path
    rerun: str
    """The command that trains what is missing."""


def resolve_target(spec: Optional[str], recipe_model: GPTConfig) -> GPTConfig:
    """A shape ``LxD`` in the recipe model's family, a preset, a model file; None: the recipe's model."""
    if spec is None:
        return recipe_model
    return parse_shape(spec, recipe_model) or resolve_model(spec, "scaling.target")


def load_setup(recipe: str, *, run_dir: Optional[str], overrides: list[str]) -> Setup:
    scaling, rest, others = split_recipe(load_file(recipe), overrides)
    base = load_run_config(rest, others)
    base = dataclasses.replace(base, phases=["pretrain"], run_dir=run_dir or base.run_dir)
    if scaling.jobs > 1 and base.cluster.world > 1:
        raise ConfigError(f"scaling.jobs={scaling.jobs} trains runs side by side, one rank each, but this recipe's "
                          f"runs use {base.cluster.world} ranks (cluster.nodes × gpus_per_node): set "
                          f"scaling.jobs=1, or a one-rank cluster")
    target = resolve_target(scaling.target, base.model)
    seq_len = base.pretrain.loop.seq_len
    tokens_per_step = base.pretrain.layout.resolve(base.cluster.world).global_batch * seq_len
    rung_tokens_per_step = None
    if scaling.rung_micro_batch is not None:
        rung_layout = dataclasses.replace(base.pretrain.layout, micro_batch=scaling.rung_micro_batch)
        rung_tokens_per_step = rung_layout.resolve(base.cluster.world).global_batch * seq_len
    ladder = plan_ladder(target, points=scaling.points, max_fraction=scaling.max_fraction, spacing=scaling.spacing,
                         seq_len=seq_len, tokens_per_step=tokens_per_step, tokens_per_param=scaling.tokens_per_param,
                         lr_for=scaling.lr_for, warmup_fraction=scaling.warmup_fraction,
                         target_tokens=scaling.target_tokens, min_layers=scaling.min_layers,
                         rung_micro_batch=scaling.rung_micro_batch, rung_tokens_per_step=rung_tokens_per_step)
    rerun = shlex.join(["orchestrate", "scaling", recipe, "--run-dir", base.run_dir,
                        *[arg for text in overrides for arg in ("--set", text)]])
    return Setup(recipe=recipe, scaling=scaling, base=base, target=target, ladder=ladder, run_dir=Path(base.run_dir),
                 rerun=rerun)


def describe_ladder(setup: Setup) -> str:
    ladder = setup.ladder
    lines = [f"ladder of {len(ladder.rungs)} for target {setup.target.name} ({ladder.target.params:,} params, "
             f"{ladder.target.tokens:,} tokens, {ladder.target.flops:.3g} FLOPs) in {setup.run_dir}; "
             f"{ladder.tokens_per_step:,} tokens a step at seq {ladder.seq_len}"
             + (f" (the rungs {ladder.rung_tokens_per_step:,})" if ladder.rung_tokens_per_step else ""),
             f"  {'run':<16} {'layers':>6} {'d_model':>7} {'params':>9} {'tokens':>11} {'steps':>6} {'FLOPs':>9} "
             f"{'fraction':>9} {'lr':>8}"]
    for rung in (*ladder.rungs, ladder.target):
        lines.append(f"  {rung.name:<16} {rung.n_layers:>6} {rung.d_model:>7} {rung.params:>9,} {rung.tokens:>11,} "
                     f"{rung.steps:>6} {rung.flops:>9.3g} {'1/' + format(1 / ladder.fraction(rung), '.0f'):>9} "
                     f"{rung.lr:>8.2e}")
    return "\n".join(lines)


def cluster_cost(setup: Setup) -> Optional[dict]:
    """The target on the recipe's cluster (a GPU cluster only)."""
    cluster = setup.base.cluster
    if cluster.gpu == "cpu":
        return None
    layout = setup.base.pretrain.layout.resolve(cluster.world)
    return target_cost(setup.target, gpu=cluster.gpu, gpus=cluster.world, gpus_per_node=cluster.gpus_per_node,
                       seq=setup.ladder.seq_len, tokens=setup.ladder.target.tokens, batch_sequences=layout.global_batch)


def epoch_warnings(setup: Setup, train_tokens: Optional[int]) -> list[str]:
    """Runs that repeat the corpus more than ``max_epochs`` times."""
    if not train_tokens:
        return []
    limit = setup.scaling.max_epochs
    return [f"{rung.name} repeats its {train_tokens:,} training tokens {rung.tokens / train_tokens:.1f} times "
            f"(> {limit:g} epochs, Muennighoff et al. 2023): its loss is lower on seen text than a longer corpus would "
            f"give; give data.sources more text for a prediction of fresh-data training"
            for rung in (*setup.ladder.rungs, setup.ladder.target) if rung.tokens / train_tokens > limit]


def train_all(setup: Setup, *, train_target: bool, entry_module: str, with_data: bool, out: IO[str]) -> int:
    """Every rung (and the target) as a pretrain phase job, ``scaling.jobs`` at a time; the first
    failure's exit code, or 0. One at a time a failure stops the ladder; side by side every run is
    still tried (each is skipped or resumed on the rerun either way)."""
    shared = setup.run_dir / "data" if with_data else None
    if with_data and (code := prepare_shared_data(setup.base, setup.run_dir, out)) != 0:
        return code
    for warning in epoch_warnings(setup, corpus_train_tokens(setup.run_dir)):
        print(f"[scaling] warning: {warning}", file=out, flush=True)
    runs = [(rung, seed) for rung in setup.ladder.rungs for seed in repeat_seeds(setup)]
    runs += [(setup.ladder.target, None)] if train_target else []
    jobs = setup.scaling.jobs
    if jobs == 1:
        codes = (train_one(setup, rung, seed, shared=shared, entry_module=entry_module, out=out) for rung, seed in runs)
        return next((code for code in codes if code != 0), 0)
    print(f"[scaling] {len(runs)} runs, {jobs} side by side with {thread_env(setup, jobs)} each", file=out, flush=True)
    longest_first = sorted(runs, key=lambda run: -run[0].flops)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(lambda run: train_one(setup, *run, shared=shared, entry_module=entry_module,
                                                    out=PrefixedLines(out, run_label(*run)), jobs=jobs),
                              longest_first))
    return next((code for code in codes if code != 0), 0)


def run_label(rung, seed: Optional[int]) -> str:
    return rung.name if seed is None else f"{rung.name}-seed{seed}"


def thread_env(setup: Setup, jobs: int) -> dict[str, str]:
    """``OMP_NUM_THREADS`` for one of ``jobs`` runs sharing this machine's cores ({} when the recipe's
    ``launch.env`` sets it)."""
    if "OMP_NUM_THREADS" in setup.base.launch.env:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // jobs))}


def train_one(setup: Setup, rung, seed: Optional[int], *, shared: Optional[Path], entry_module: str, out: IO[str],
              jobs: int = 1) -> int:
    """One run of the ladder (or the target); its launcher's exit code."""
    print(f"[scaling] {run_label(rung, seed)}: {rung.params:,} params, {rung.steps} steps, lr {rung.lr:.3g}",
          file=out, flush=True)
    config = rung_config(setup.base, rung, family=setup.target, run_dir=setup.run_dir,
                         eval_batches=setup.scaling.eval_batches, seed=seed)
    if jobs > 1:   # each run on its share of the cores, with a master port picked free when it starts
        launch = dataclasses.replace(config.launch, env={**config.launch.env, **thread_env(setup, jobs)},
                                     master_port=None)
        config = dataclasses.replace(config, launch=launch)
    code = train_rung(config, shared_data=shared, entry_module=entry_module, out=out)
    if code != 0:
        print(f"[scaling] {rung.name} failed (exit code {code}); `{setup.rerun}` resumes it", file=out, flush=True)
    return code


class PrefixedLines:
    """A text stream that writes whole lines to ``out`` as ``[label] line``, one writer at a time
    (runs side by side share the terminal)."""

    _lock = threading.Lock()

    def __init__(self, out: IO[str], label: str):
        self.out, self.label, self.pending = out, label, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        if lines:
            with self._lock:
                self.out.write("".join(f"[{self.label}] {line}\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self.out.flush()


def repeat_seeds(setup: Setup) -> list[Optional[int]]:
    """None (the recipe's seed, ``DIR/ladder/NAME``), then the seeds of a rung's repeats (``scaling.seeds``)."""
    return [None, *(setup.base.seed + k for k in range(1, setup.scaling.seeds))]


def ladder_rows(setup: Setup) -> list[dict]:
    """One row per rung; its ``eval_loss`` is the mean over its seeds (``seed_losses``), ``seed_spread`` their
    (max − min) / mean: how much one run of that size scatters with its seed, ladder-internal evidence of
    how far to trust the fit."""
    rows = []
    for rung in setup.ladder.rungs:
        measured = [final_loss(rung_dir(setup.run_dir, rung, seed), rerun=setup.rerun) for seed in repeat_seeds(setup)]
        losses, seconds = [loss for loss, _ in measured], [s for _, s in measured if s is not None]
        mean = sum(losses) / len(losses)
        rows.append({**rung.to_dict(), "fraction": setup.ladder.fraction(rung), "eval_loss": mean,
                     "seed_losses": losses, "seed_spread": (max(losses) - min(losses)) / mean if len(losses) > 1 else None,
                     "train_seconds": sum(seconds) if seconds else None,
                     "run_dir": str(rung_dir(setup.run_dir, rung))})
    return rows


def target_measurement(setup: Setup) -> tuple[Optional[float], Optional[float]]:
    try:
        return final_loss(rung_dir(setup.run_dir, setup.ladder.target), rerun=setup.rerun + " --train-target")
    except RungNotFinished:
        return None, None


def build_record(setup: Setup, *, cost: Optional[dict]) -> dict:
    """The whole ``scaling.json``: ladder rows, the fit and its checks, the target (``FitError`` if no fit)."""
    rows = ladder_rows(setup)
    field = COMPUTE_FIELDS[setup.scaling.compute]
    prediction = predict([r[field] for r in rows], [r["eval_loss"] for r in rows],
                         target_compute=getattr(setup.ladder.target, field), form=setup.scaling.form,
                         level=setup.scaling.level)
    measured, seconds = target_measurement(setup)
    target = {**setup.ladder.target.to_dict(), "model": setup.target.name, "run_dir": str(rung_dir(setup.run_dir, setup.ladder.target)),
              "predicted_loss": prediction.loss, "band": [prediction.low, prediction.high], "train_seconds": seconds,
              **artifact.measured_target(prediction, measured)}
    train_tokens = corpus_train_tokens(setup.run_dir)
    return {"name": setup.base.name, "recipe": setup.recipe, "command": setup.rerun, "run_dir": str(setup.run_dir),
            "flops_convention": "model FLOPs, flops_per_token(seq) × tokens (Narayanan et al. 2021, eq. 3); "
                                "flops_6nd is 6·N·D (Kaplan et al. 2020); flops_non_embedding is flops less the "
                                "logit layer's",
            "fit_compute": field,
            "corpus_train_tokens": train_tokens, "seq_len": setup.ladder.seq_len,
            "tokens_per_step": setup.ladder.tokens_per_step, "rung_tokens_per_step": setup.ladder.rung_tokens_per_step,
            "scaling": dataclasses.asdict(setup.scaling),
            "ladder": rows, "fit": prediction.to_dict(), "target": target,
            "warnings": [*epoch_warnings(setup, train_tokens), *trust_warnings(prediction)], "cluster": cost}


TRUSTED_CHECK = 0.02
"""A leave-top-out error beyond this (2 %) is reported: the longer extrapolation to the target is no better."""


def trust_warnings(prediction: Prediction) -> list[str]:
    """What the ladder's own check says about the prediction."""
    check = next(c for c in prediction.checks if c.form == prediction.law.form)
    if check.error is None:
        return [f"the ladder's leave-top-out check of the {check.form}-c law gave no number ({check.failure}): "
                f"nothing tells how far to trust the prediction"]
    if abs(check.error) <= TRUSTED_CHECK:
        return []
    return [f"the ladder's leave-top-out check erred {check.error:+.1%} (beyond {TRUSTED_CHECK:.0%}): its runs are not "
            f"on one power law (too small for the target's family, or off their best learning rate), so expect the "
            f"target's prediction to err at least as much; widen or enlarge the ladder (a bigger target, more points)"]


def describe_record(record: dict) -> str:
    fit, target = record["fit"], record["target"]
    law = fit["law"]
    lines = [f"fit ({fit['form']}-c): L(C) = {law['a']:.4g}·C^{law['b']:.4f} + {law['c']:.4g}; {fit['reason']}"]
    for check in fit["leave_top_out"]:
        lines.append(f"  leave-top-out {check['form']}-c: " + (check["failure"] if check["predicted"] is None else
                     f"{check['predicted']:.4f} [{check['low']:.4f}, {check['high']:.4f}] vs {check['measured']:.4f} "
                     f"({check['error']:+.2%})"))
    spreads = [(row["seed_spread"], row["name"]) for row in record["ladder"] if row.get("seed_spread") is not None]
    if spreads:
        worst = max(spreads)
        lines.append(f"  seed spread of the rungs: mean {sum(s for s, _ in spreads) / len(spreads):.2%}, "
                     f"largest {worst[0]:.2%} ({worst[1]})")
    lines.append(f"target {target['name']}: predicted {target['predicted_loss']:.4f}, {fit['level']:.0%} band "
                 f"[{target['band'][0]:.4f}, {target['band'][1]:.4f}]")
    if target["measured_loss"] is not None:
        lines.append(f"  measured {target['measured_loss']:.4f}: prediction {target['error']:+.2%}, "
                     f"{'inside' if target['inside_band'] else 'OUTSIDE'} the band")
    return "\n".join(lines)


def run_scaling(setup: Setup, *, train: bool, train_target: bool, entry_module: str = ENTRY_MODULE,
                with_data: bool = True, cost: Optional[dict] = None, out: Optional[IO[str]] = None) -> int:
    """Train what is missing (unless ``train`` is False), fit, write ``scaling.json`` and ``scaling.png``.

    ``cost``: the target on the recipe's cluster (``cluster_cost``), recorded as given.
    """
    out = out or sys.stdout
    if train and (code := train_all(setup, train_target=train_target, entry_module=entry_module,
                                    with_data=with_data, out=out)) != 0:
        return code
    record = build_record(setup, cost=cost)
    path = artifact.write_json(setup.run_dir, record)
    figure = artifact.plot(record, setup.run_dir / artifact.SCALING_PNG)
    print(describe_record(record), file=out)
    for warning in record["warnings"]:
        print(f"warning: {warning}", file=out)
    print(f"wrote {path} and {figure}", file=out, flush=True)
    return 0


LR_SWEEP_JSON = "lr_sweep.json"


def sweep_setups(recipe: str, *, run_dir: Optional[str], overrides: list[str],
                 multipliers: list[float]) -> tuple[Setup, list[tuple[float, Setup]]]:
    """The recipe's setup and, per multiplier m, the same ladder at ``scaling.lr × m`` in ``DIR/lr-xM``."""
    if len(set(multipliers)) < 3 or any(not m > 0 for m in multipliers):
        raise ValueError(f"--lr-sweep {','.join(map(str, multipliers))}: give at least 3 distinct positive LR "
                         f"multipliers, e.g. 0.5,1,2,4")
    base = load_setup(recipe, run_dir=run_dir, overrides=overrides)
    setups = [(m, load_setup(recipe, run_dir=str(base.run_dir / f"lr-x{m:g}"),
                             overrides=[*overrides, f"scaling.lr={base.scaling.lr * m!r}"])) for m in sorted(multipliers)]
    return base, setups


def run_lr_sweep(recipe: str, *, run_dir: Optional[str], overrides: list[str], multipliers: list[float],
                 train: bool = True, entry_module: str = ENTRY_MODULE, with_data: bool = True,
                 out: Optional[IO[str]] = None) -> int:
    """Train the ladder (not the target) at each LR multiplier, fit the LR rule, write ``DIR/lr_sweep.json``."""
    out = out or sys.stdout
    base, setups = sweep_setups(recipe, run_dir=run_dir, overrides=overrides, multipliers=multipliers)
    if train and with_data and (code := prepare_shared_data(base.base, base.run_dir, out)) != 0:
        return code
    for multiplier, setup in setups:
        if train and with_data and not (setup.run_dir / "data" / "data.json").is_file():
            shutil.copytree(base.run_dir / "data", setup.run_dir / "data", dirs_exist_ok=True)
        print(f"[lr-sweep] × {multiplier:g}: scaling.lr = {setup.scaling.lr:.4g} in {setup.run_dir}", file=out, flush=True)
        if train and (code := train_all(setup, train_target=False, entry_module=entry_module, with_data=with_data,
                                        out=out)) != 0:
            return code
    rows = [ladder_rows(s) for _, s in setups]
    optima = [rung_optimum(rung.name, rung.d_model, [s.ladder.rungs[i].lr for _, s in setups],
                           [r[i]["eval_loss"] for r in rows]) for i, rung in enumerate(base.ladder.rungs)]
    rule = fit_lr_rule(optima, lr_width=base.scaling.lr_width)
    use = f"--set scaling.lr={rule.lr:.3g} --set scaling.lr_exponent={rule.lr_exponent:.2f}"
    record = {"recipe": recipe, "command": base.rerun + " --lr-sweep " + ",".join(f"{m:g}" for m, _ in setups),
              "multipliers": [m for m, _ in setups],
              "swept_rule": {"lr": base.scaling.lr, "lr_width": base.scaling.lr_width,
                             "lr_exponent": base.scaling.lr_exponent},
              "fitted_rule": rule.to_dict(), "use": use}
    base.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(base.run_dir / LR_SWEEP_JSON, json.dumps(record, indent=2) + "\n")
    print(describe_rule(rule, use=use) + f"\nwrote {base.run_dir / LR_SWEEP_JSON}", file=out, flush=True)
    return 0


def describe_rule(rule: LrRule, *, use: str) -> str:
    lines = [f"  {o.name:<10} d {o.d_model:>4}: losses " + " ".join(f"{v:.4f}" for v in o.losses)
             + f" → best lr {o.best_lr:.3g} (rule {rule.lr_for(o.d_model):.3g}), loss {o.best_loss:.4f}"
             for o in rule.optima]
    lines.append(f"fitted LR rule: {rule.lr:.4g} × ({rule.lr_width} / d_model) ^ {rule.lr_exponent:.3f} (ln-lr "
                 f"scatter {rule.residual_sd:.3f}); use it with {use}")
    return "\n".join(lines)
