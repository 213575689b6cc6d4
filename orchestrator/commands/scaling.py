"""``orchestrate scaling RECIPE``: predict a run's final loss from a ladder of small runs (SPEC §11).

    orchestrate scaling recipes/scaling-tiny.yaml --run-dir runs/scaling --train-target
    orchestrate scaling recipes/scaling-tiny.yaml --target 4x96 --points 6 --max-fraction 0.02 --dry-run
    orchestrate scaling recipes/scaling-tiny.yaml --run-dir runs/lr-sweep --lr-sweep 0.5,1,2,4   # fit the LR rule
    orchestrate scaling RECIPE --target gpt3-175b --set cluster.gpu=a100-80g --set cluster.nodes=128 --dry-run

Plans the ladder (``orchestrator.scaling.ladder``), trains each rung as a pretrain phase job
under ``DIR/ladder/NAME`` (skipped when complete, resumed when interrupted), fits
L(C) = a·C^b + c, predicts the target and writes ``DIR/scaling.json`` and ``DIR/scaling.png``.
"""
from __future__ import annotations

import argparse
import sys

from orchestrator.scaling.fit import FitError
from orchestrator.scaling.runner import RungNotFinished
from orchestrator.scaling.lr_rule import SweepError
from orchestrator.scaling.workflow import (cluster_cost, describe_ladder, load_setup, run_lr_sweep, run_scaling,
                                           sweep_setups)
from orchestrator.scaling.cluster import describe_cost


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="run recipe (YAML) with an optional scaling: section")
    parser.add_argument("--run-dir", help="where the ladder, the target and scaling.json go (default: the recipe's run_dir)")
    parser.add_argument("--target", help="the model to predict: a preset, a model file or LAYERSxD_MODEL (4x96) "
                                         "in the recipe model's family (default: scaling.target, else the recipe's model)")
    parser.add_argument("--points", type=int, help="ladder runs, at least 5 (scaling.points)")
    parser.add_argument("--max-fraction", type=float, help="largest run's share of the target's compute (scaling.max_fraction)")
    work = parser.add_mutually_exclusive_group()
    work.add_argument("--train-target", action="store_true", help="also train the target and measure the prediction's error")
    work.add_argument("--fit-only", action="store_true", help="train nothing: fit the runs that are complete")
    work.add_argument("--dry-run", action="store_true", help="print the ladder (and the cluster cost); run nothing")
    parser.add_argument("--lr-sweep", type=multipliers, metavar="M,M,M",
                        help="instead of the target: train the ladder at scaling.lr × each M in DIR/lr-xM, fit the LR "
                             "rule (lr, lr_exponent) to the rungs' best LRs and write DIR/lr_sweep.json, e.g. 0.5,1,2,4")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value or a scaling.* one, e.g. --set scaling.lr=8e-3 (repeatable)")


def multipliers(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated LR multipliers, e.g. 0.5,1,2,4") from None


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The explicit flags as ``scaling.*`` overrides, applied after ``--set``."""
    flags = {"target": args.target, "points": args.points, "max_fraction": args.max_fraction}
    return [*args.overrides, *(f"scaling.{key}={value}" for key, value in flags.items() if value is not None)]


def run(args: argparse.Namespace) -> int:
    if args.lr_sweep is not None:
        return sweep(args)
    setup = load_setup(args.recipe, run_dir=args.run_dir, overrides=flag_overrides(args))
    print(describe_ladder(setup))
    cost = cluster_cost(setup)
    if cost is not None:
        print(describe_cost(cost))
    if args.dry_run:
        return 0
    try:
        return run_scaling(setup, train=not args.fit_only, train_target=args.train_target, cost=cost)
    except (RungNotFinished, FitError) as err:  # a run to finish, or a fit that gives no number: say which
        print(f"orchestrate scaling: error: {err}", file=sys.stderr)
        return 2


def sweep(args: argparse.Namespace) -> int:
    """``--lr-sweep``: the ladder at several LRs, and the LR rule fitted to it."""
    if args.train_target:
        print("orchestrate scaling: error: --lr-sweep trains the ladder only; run --train-target after it, with the "
              "fitted rule", file=sys.stderr)
        return 2
    base, setups = sweep_setups(args.recipe, run_dir=args.run_dir, overrides=flag_overrides(args),
                                multipliers=args.lr_sweep)
    print(describe_ladder(base))
    if args.dry_run:
        for multiplier, setup in setups:
            print(f"  × {multiplier:g}: scaling.lr = {setup.scaling.lr:.4g} in {setup.run_dir}")
        return 0
    try:
        return run_lr_sweep(args.recipe, run_dir=args.run_dir, overrides=flag_overrides(args),
                            multipliers=args.lr_sweep, train=not args.fit_only)
    except (RungNotFinished, SweepError) as err:
        print(f"orchestrate scaling: error: {err}", file=sys.stderr)
        return 2
