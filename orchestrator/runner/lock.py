"""One run directory, one writer: ``orchestrate run`` holds ``RUN_DIR/.orchestrate.lock`` while it runs.

The lock is ``fcntl.flock`` on that file, so the kernel releases it when the holder dies, however
it dies (SIGKILL included): there is no pid to guess about. The file also says who holds it —
pid, host, start time — for the refusal a second run prints. A holder that ends normally empties
the file; one that was killed leaves its line behind, and the next run takes the lock over and
says whose it was.

On NFS (a run directory that every node shares) Linux maps ``flock`` to the server's byte-range
locks, so two heads on different hosts exclude each other too. Where the filesystem has no locks
at all (``ENOLCK``, ``nolock`` mounts) the file's line decides: a live pid on this host, or any
holder on another host, refuses; a dead pid on this host is taken over.

Multi-node ``no_ssh`` runs start ``orchestrate run --node-rank R`` on every node against the same
directory: node rank R holds ``.orchestrate.lock`` (R = 0) or ``.orchestrate.lock.node-R``, so one
invocation per node rank runs, and the nodes of one job do not refuse each other.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

LOCK_FILE = ".orchestrate.lock"


class RunDirectoryInUse(ValueError):
    """Another ``orchestrate run`` holds the run directory; the message names it and the fix."""


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: str

    def line(self) -> str:
        return f"pid={self.pid} host={self.host} started={self.started}\n"

    @classmethod
    def parse(cls, text: str) -> Optional["Holder"]:
        fields = dict(part.partition("=")[::2] for part in text.split())
        try:
            return cls(pid=int(fields["pid"]), host=fields["host"], started=fields["started"])
        except (KeyError, ValueError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (started {self.started})"


def lock_path(run_dir: Path, *, node_rank: int = 0) -> Path:
    return Path(run_dir) / (LOCK_FILE if node_rank == 0 else f"{LOCK_FILE}.node-{node_rank}")


def this_holder() -> Holder:
    return Holder(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%d %H:%M:%S %z"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _refusal(run_dir: Path, path: Path, holder: Optional[Holder]) -> RunDirectoryInUse:
    who = holder.describe() if holder else "another process"
    return RunDirectoryInUse(f"run directory {run_dir} is in use by `orchestrate run`, {who} (lock {path}): "
                             f"wait for it to finish or stop it, or give this run another --run-dir")


class RunLock:
    """``with RunLock(run_dir, node_rank=R, out=out):`` — held for the whole run, released on exit."""

    def __init__(self, run_dir: Path, *, node_rank: int = 0, out: Optional[IO[str]] = None) -> None:
        self.run_dir, self.path, self.out = Path(run_dir), lock_path(run_dir, node_rank=node_rank), out
        self._handle: Optional[IO[str]] = None

    def __enter__(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            previous = self._acquire(handle)
            if previous is not None and self.out is not None:
                print(f"[lock] taking over {self.path} from {previous.describe()}, which is no longer running",
                      file=self.out, flush=True)
            _write_holder(handle, self.path)
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        return self

    def _acquire(self, handle: IO[str]) -> Optional[Holder]:
        """Take the lock; return the previous holder whose stale line is left in the file, if any."""
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(self.run_dir, self.path, _read_holder(handle)) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise
            return self._acquire_without_locks(handle)
        return _read_holder(handle)

    def _acquire_without_locks(self, handle: IO[str]) -> Optional[Holder]:
        holder = _read_holder(handle)
        if holder is not None and (holder.host != socket.gethostname() or pid_alive(holder.pid)):
            raise _refusal(self.run_dir, self.path, holder)
        return holder

    def __exit__(self, *exc) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            handle.seek(0)
            handle.truncate()          # an empty file: released cleanly (a killed holder leaves its line)
        except OSError:
            pass
        finally:
            handle.close()             # closing releases the flock


def _write_holder(handle: IO[str], path: Path) -> None:
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(this_holder().line())
        handle.flush()
    except OSError as err:  # a full disk: say which file
        raise OSError(err.errno, err.strerror, str(path)) from err


def _read_holder(handle: IO[str]) -> Optional[Holder]:
    handle.seek(0)
    return Holder.parse(handle.read())


def current_holder(run_dir: Path, *, node_rank: int = 0) -> Optional[Holder]:
    """Who holds the run directory now (for ``--dry-run``), without taking or creating anything."""
    path = lock_path(run_dir, node_rank=node_rank)
    try:
        handle = open(path)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(handle) or Holder(pid=0, host="?", started="?")
        except OSError:
            return None
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return None
