"""Build DeepSpeed's JIT op for CPU collectives once, in one process, at install time.

DeepSpeed compiles its shared-memory communication op (``deepspeed_shm_comm``) the first time a
process joins a job, into ``TORCH_EXTENSIONS_DIR``. Left to the first job, the build (a minute on
two idle cores, several under load) happens inside a multi-rank launch, while the ranks wait on
one another. ``make install`` runs this script instead, so every later job finds the op built.
The Makefile points ``TORCH_EXTENSIONS_DIR`` into the virtualenv, so checkouts with other
virtualenvs (whose include paths differ, which makes ninja rebuild) never rebuild it for each other.
"""
import os
import sys


def main() -> int:
    from deepspeed.comm.torch import build_shm_op

    op = build_shm_op()
    where = os.environ.get("TORCH_EXTENSIONS_DIR", "~/.cache/torch_extensions")
    print(f"deepspeed shm op: {'built in ' + where if op is not None else 'not used on this machine'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
