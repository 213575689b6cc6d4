"""Environment faults — a full disk, a denied permission, a missing directory — as one message that
names the path and the fix, instead of a traceback. No torch import."""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
MISSING_ERRNOS = (errno.ENOENT, errno.ENOTDIR)
FAULT_ERRNOS = SPACE_ERRNOS + PERMISSION_ERRNOS + MISSING_ERRNOS
NEARLY_FULL_BYTES = 1 << 20
"""Under this many free bytes after a failed write, the write failed for want of space (torch's
zip writer reports a full disk as a bare ``RuntimeError`` without errno)."""


class EnvironmentFault(RuntimeError):
    """The machine, not the config, stopped the run; the message names the path and the fix."""


def is_fault(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in FAULT_ERRNOS


def existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(existing_ancestor(path)).free


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it is gone)."""
    if not Path(path).is_dir():
        return Path(path).stat().st_size if Path(path).is_file() else 0
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def no_space_message(path: Path, *, needed: Optional[int] = None, what: str = "writing") -> str:
    free = free_bytes(path)
    amount = (f"free at least {needed - free} bytes there ({what} needs about {needed}, {free} are free)"
              if needed and needed > free else f"free space there ({free} bytes are free now)")
    return (f"no space left on the device of {path} while {what}: {amount}, or move the run directory to a "
            f"bigger disk (--run-dir); then rerun")


def describe(error: OSError, *, path: Optional[Path] = None, what: str = "writing") -> str:
    """One line for an environment ``OSError``: what failed, on which path, and the fix."""
    path = Path(path or error.filename or ".")
    if error.errno in SPACE_ERRNOS:
        return no_space_message(path, what=what)
    if error.errno in PERMISSION_ERRNOS:
        kind = "read-only filesystem" if error.errno == errno.EROFS else "permission denied"
        return (f"{kind} on {path} while {what}: check its owner and mode (`ls -ld {existing_ancestor(path)}`) "
                f"or choose a directory this user can write (--run-dir, data.cache_dir); then rerun")
    if error.errno in MISSING_ERRNOS:
        return (f"{path} does not exist (or one of its parents is not a directory) while {what}: create it or "
                f"fix the path; then rerun")
    return f"{error.strerror or error} on {path} while {what}"


@contextmanager
def writing_under(path: Path) -> Iterator[None]:
    """An environment ``OSError`` without a file name (a write or flush on a full disk) is given
    ``path``, the directory being written, so the message can name it."""
    try:
        yield
    except OSError as err:
        if is_fault(err) and err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
