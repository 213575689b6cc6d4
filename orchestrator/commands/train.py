"""``orchestrate train --phase P --run-dir D``: run one phase on this rank.

The same process as ``python -m orchestrator.phases.entry`` (what the launchers start): it reads
``RUN_DIR/run_config.yaml``, joins the job and runs the phase through the shared loop. Use it to
run a phase by hand on one rank, or under a launcher of your own.
"""
from __future__ import annotations

import argparse

from orchestrator.config.run import PHASES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phase", required=True, choices=PHASES)
    parser.add_argument("--run-dir", required=True, help="the run directory holding run_config.yaml")


def run(args: argparse.Namespace) -> int:
    from orchestrator.phases.entry import main

    return main(["--phase", args.phase, "--run-dir", args.run_dir])
