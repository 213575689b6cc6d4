"""Start one launcher process, tee its output to a log, and stop it cleanly on Ctrl-C.

The launcher runs in its own session (process group), so an interrupt reaches the launcher and
every rank it started, and nothing is left running.
"""
from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Optional, Sequence

from orchestrator.engine.launch import LaunchCommand, LaunchError
from orchestrator.engine.launch.shm import launcher_port, remove_job_buffers

LAUNCHERS = ("deepspeed", "torchrun", "accelerate")
TAIL_LINES = 40
STOP_GRACE_SECONDS = 10.0


def resolve_executable(name: str) -> str:
    """A launcher from this interpreter's environment first (the venv's ``bin``), then PATH."""
    if name not in LAUNCHERS:
        return name
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise LaunchError(f"launcher {name!r} not found next to {sys.executable} or on PATH: "
                          f"install the package's dependencies (make install) or choose another launch.launcher")
    return found


def child_env(extra: dict[str, str], *, base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The launcher's environment: ours plus ``extra``, with this interpreter's bin first on PATH
    (DeepSpeed JIT-builds ops with ``ninja`` from there)."""
    env = dict(os.environ if base is None else base)
    env.update(extra)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")]) if env.get("PATH") else bin_dir
    return env


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_group(process: subprocess.Popen) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the launcher's process group, until all of it is gone."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if not group_alive(process.pid):
            break
        os.killpg(process.pid, sig)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while group_alive(process.pid) and time.monotonic() < deadline:
            process.poll()  # reap the launcher itself so it does not linger as a zombie
            time.sleep(0.1)
    process.poll()


def run_logged(command: LaunchCommand, *, log_path: Path, out: Optional[IO[str]] = None,
               extra_env: Optional[dict[str, str]] = None) -> tuple[int, list[str]]:
    """Run ``command`` to the end, teeing its output to ``out`` and ``log_path`` (appended).

    Returns (exit code, the last ``TAIL_LINES`` lines of this attempt's output).
    """
    out = out or sys.stdout
    argv = [resolve_executable(command.argv[0]), *command.argv[1:]]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {command.shell()}\n")
        log.flush()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=child_env({**command.env, **(extra_env or {})}), start_new_session=True)
        try:
            for raw in iter(process.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                out.write(line)
                out.flush()
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n").rstrip("\r").split("\r")[-1])  # a progress bar's last state
            code = process.wait()
            stop_group(process)  # ranks orphaned by a launcher that died first
        except BaseException:  # Ctrl-C or an error in this loop: leave nothing running
            stop_group(process)
            raise
        finally:
            process.stdout.close()
            _free_shared_memory(command.argv)
        log.write(f"=== exit code {code}\n")
    return code, list(tail)


def _free_shared_memory(argv: Sequence[str]) -> None:
    """The job's DeepSpeed all-reduce buffers in /dev/shm, which ranks that crashed leave behind."""
    port = launcher_port(argv)
    if port is not None:
        remove_job_buffers(port)


def format_tail(lines: Sequence[str]) -> str:
    return "\n".join(f"  | {line}" for line in lines)
