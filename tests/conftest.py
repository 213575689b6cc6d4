"""Settings every test process and the processes it starts share.

DeepSpeed's JIT-built CPU op goes to the virtualenv's own ``torch-extensions`` folder (where
``make install`` built it, scripts/prebuild_ops.py) unless ``TORCH_EXTENSIONS_DIR`` is set: the
shared ``~/.cache/torch_extensions`` is rebuilt whenever a process of another virtualenv, or with
another ninja, uses it, and a rebuild inside a multi-rank test costs minutes on two cores.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.engine.launch.shm import remove_orphaned_buffers

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch-extensions"))


@pytest.fixture
def small_tmpfs():
    """``small_tmpfs(path, size)`` mounts a tmpfs of ``size`` (bytes, or "64k", "1m") at ``path`` —
    a real filesystem to fill, for full-disk tests — and unmounts it when the test ends. Mounting
    needs root (CAP_SYS_ADMIN); elsewhere the test is skipped with the reason."""
    mounted: list[Path] = []

    def mount(path: Path, size) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill ({done.stderr.strip()}): needs root / CAP_SYS_ADMIN")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def world_of_one():
    """An in-process world of one for a module's engines. An earlier module may have left its
    process group up with its variables gone, so they are set first; afterwards the environment is
    restored except the rendezvous variables, which the still-initialised group's later users need."""
    from orchestrator.engine.launch.ports import free_port
    from orchestrator.engine.parallel import init_distributed

    saved = dict(os.environ)
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    init_distributed(timeout_minutes=2)
    yield
    rendezvous = {key: os.environ[key] for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    os.environ.clear()
    os.environ.update(saved)
    os.environ.update(rendezvous)


def pytest_sessionfinish(session, exitstatus):
    """Free the /dev/shm buffers of DeepSpeed's CPU all-reduce that crashed test jobs left behind
    (engine/launch/shm.py): otherwise each failed multi-rank test keeps world × 64 MiB of RAM."""
    remove_orphaned_buffers()
