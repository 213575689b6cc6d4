"""The phase process: ``python -m orchestrator.phases.entry --phase P --run-dir D``.

This is what the ``deepspeed`` launcher (``--module``), ``torchrun -m`` or ``accelerate launch -m``
starts on every rank. It joins the job, builds the phase and hands it to the shared loop; the
run directory's ``run_config.yaml`` (written by ``orchestrate run``) says everything else.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from orchestrator.config.run import PHASES
from orchestrator.faults import EnvironmentFault

PHASE_CLASSES = {"pretrain": ("orchestrator.phases.pretrain", "Pretrain"),
                 "sft": ("orchestrator.phases.sft", "SFT"),
                 "reward": ("orchestrator.phases.reward", "Reward"),
                 "ppo": ("orchestrator.phases.ppo", "PPO")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.phases.entry", description=__doc__.split("\n")[0])
    parser.add_argument("--phase", required=True, choices=PHASES)
    parser.add_argument("--run-dir", required=True, help="the run directory holding run_config.yaml")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by some launchers
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from orchestrator.engine.parallel import init_distributed, shutdown_distributed
    from orchestrator.phases.context import PhaseContext, read_run_config
    from orchestrator.phases.loop import run

    args = parse_args(argv)
    config = read_run_config(args.run_dir)
    job = init_distributed(device_type=config.cluster.device_type, timeout_minutes=config.launch.timeout_minutes)
    ctx = PhaseContext(phase=args.phase, run_dir=Path(args.run_dir), config=config, rank=job.rank, world=job.world)
    module, name = PHASE_CLASSES[args.phase]
    try:
        final = run(getattr(importlib.import_module(module), name)(ctx))
    except EnvironmentFault as fault:   # a full disk during a save: one line, not a traceback per rank
        print(f"{args.phase}: rank {ctx.rank}: error: {fault}", file=sys.stderr, flush=True)
        return 1
    if ctx.is_main:
        print(f"{args.phase}: complete: " + ", ".join(f"{k}={v:.4g}" for k, v in final.items()
                                                     if isinstance(v, (int, float))))
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
