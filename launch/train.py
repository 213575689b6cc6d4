#!/usr/bin/env python
"""Run one phase on this rank: ``python launch/train.py --phase P --run-dir D``.

The script form of ``python -m orchestrator.phases.entry``, for launchers that need a script
path (``deepspeed --launcher openmpi|slurm`` start ``python SCRIPT`` on every rank and drop
``--module``). Under ``mpirun`` or ``srun`` nobody sets RANK/WORLD_SIZE/LOCAL_RANK, so they are
derived from the scheduler's variables first. ``--module M`` runs another entry module
(``main(argv)``) the same way.
"""
import importlib
import os
import sys

from orchestrator.engine.launch.command import ENTRY_MODULE
from orchestrator.engine.launch.files import rank_env_from_scheduler


def main(argv: list[str]) -> int:
    module = ENTRY_MODULE
    if argv[:1] == ["--module"]:
        module, argv = argv[1], argv[2:]
    os.environ.update(rank_env_from_scheduler(os.environ))
    return importlib.import_module(module).main(argv) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
