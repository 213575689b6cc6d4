"""The shared-memory buffers DeepSpeed's CPU all-reduce leaves in /dev/shm, removed when a job ends.

On CPU ranks DeepSpeed 0.19 builds its ``shm`` op (``deepspeed/ops/csrc/cpu/comm/shm.cpp``): each
rank creates ``/dev/shm/deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank}``
(about 64 MiB), maps every peer's, and never unlinks its own. /dev/shm is RAM, so every multi-rank
CPU job — each test of the suite, each phase of a run — left world × 64 MiB of memory behind until
the machine ran out (13 GiB after an afternoon of tests here). Three places clean up:

- a rank that leaves the job in order removes its own buffer (``remove_rank_buffer``, called by
  ``engine.parallel.shutdown_distributed``): every peer mapped it at initialisation, and a mapping
  outlives the name;
- the runner removes every buffer of the job's port once the launcher and its ranks are gone
  (``remove_job_buffers``), which covers ranks that crashed or were killed;
- the test suite removes, at its end, the buffers of this user that no live process maps
  (``remove_orphaned_buffers``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

SHM_ROOT = Path("/dev/shm")
PREFIX = "deepspeed_allreduce_buffer"


def _prefix(uid: Optional[int] = None) -> str:
    return f"{PREFIX}_{os.getuid() if uid is None else uid}_"


def rank_buffer(*, addr: str, port: int | str, rank: int | str, root: Path = SHM_ROOT) -> Path:
    """The buffer one rank of a job creates (the name shm.cpp builds)."""
    return root / f"{_prefix()}{addr}_{port}_{rank}"


def job_buffers(port: int | str, *, root: Path = SHM_ROOT) -> list[Path]:
    """Every rank's buffer of the job whose rendezvous port is ``port`` (any master address)."""
    if not root.is_dir():
        return []
    ending = f"_{port}_"
    return sorted(path for path in root.glob(f"{_prefix()}*")
                  if ending in path.name[len(_prefix()):] and path.name.rsplit("_", 1)[-1].isdigit())


def _unlink(paths: Iterable[Path]) -> int:
    removed = 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError:
            pass  # another user's file, or a read-only /dev/shm: nothing of ours to free
    return removed


def remove_rank_buffer(env: Optional[dict[str, str]] = None, *, root: Path = SHM_ROOT) -> int:
    """Remove this rank's buffer, named from MASTER_ADDR / MASTER_PORT / RANK; 0 when not set."""
    env = os.environ if env is None else env
    if not all(key in env for key in ("MASTER_ADDR", "MASTER_PORT", "RANK")):
        return 0
    return _unlink([rank_buffer(addr=env["MASTER_ADDR"], port=env["MASTER_PORT"], rank=env["RANK"], root=root)])


def remove_job_buffers(port: int | str, *, root: Path = SHM_ROOT) -> int:
    """Remove every buffer of the job on ``port``. Call it only once that job has ended."""
    return _unlink(job_buffers(port, root=root))


def launcher_port(argv: Sequence[str]) -> Optional[int]:
    """The rendezvous port a launcher argv names (``--master_port`` / ``--master-port``), or None."""
    for index, arg in enumerate(argv):
        for flag in ("--master_port", "--master-port"):
            if arg == flag and index + 1 < len(argv):
                return int(argv[index + 1])
            if arg.startswith(flag + "="):
                return int(arg.split("=", 1)[1])
    return None


def _mapped_names(proc: Path = Path("/proc")) -> set[str]:
    names: set[str] = set()
    for maps in proc.glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue  # the process ended, or is not ours to read
        names.update(line.rsplit("/", 1)[-1] for line in text.splitlines() if PREFIX in line)
    return names


def remove_orphaned_buffers(*, root: Path = SHM_ROOT, proc: Path = Path("/proc")) -> int:
    """Remove this user's buffers that no live process maps (what crashed jobs left)."""
    if not root.is_dir():
        return 0
    mapped = _mapped_names(proc)
    return _unlink(path for path in root.glob(f"{_prefix()}*") if path.name not in mapped)
