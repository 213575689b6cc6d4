"""SHA-256 of files and trees, and the crash-safe file operations the handoff is built on.

Atomic replacement follows the POSIX recipe: write a temporary file in the same directory,
fsync it, ``os.replace`` it over the target (atomic within one filesystem), then fsync the
directory so the rename itself survives a power loss.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from orchestrator.handoff.errors import HandoffError

CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (checkpoints can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_under(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else every regular file below it, sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def hash_tree(root: Path, paths: Iterable[Path | str]) -> dict[str, str]:
    """{posix path relative to ``root``: sha256} for every file of each file or directory in ``paths``."""
    root = Path(root)
    hashes: dict[str, str] = {}
    for entry in paths:
        target = root / entry
        if not target.exists():
            raise HandoffError(f"cannot hash {target}: it does not exist")
        for file in files_under(target):
            hashes[file.relative_to(root).as_posix()] = sha256_file(file)
    return dict(sorted(hashes.items()))


def check_hashes(root: Path, expected: dict[str, str], *, fix: str, share: tuple[int, int] = (0, 1)) -> None:
    """Refuse the first file under ``root`` that is missing or differs from ``expected``.

    ``fix`` is appended to the message: what the user should do about it. ``share=(rank, world)``
    checks only every ``world``-th file from the ``rank``-th (sorted): the ranks of a job check
    the files in parallel, each its share, and agree on the outcome (``phases.outputs.agree``).
    """
    rank, world = share
    for relative, want in sorted(expected.items())[rank::world]:
        file = Path(root) / relative
        if not file.is_file():
            raise HandoffError(f"file {file} is missing: {fix}")
        got = sha256_file(file)
        if got != want:
            raise HandoffError(f"file {file} ({file.stat().st_size} bytes) does not match its recorded sha256 "
                               f"(truncated or edited): expected {want[:12]}…, got {got[:12]}…: {fix}")


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file, then every directory bottom-up, then ``root`` itself."""
    dirs = [root]
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fsync_path(path)
        elif path.is_dir():
            dirs.append(path)
    for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_path(directory)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` with what ``write(handle)`` writes, so that a reader sees the old or the new
    content, never half: a temporary file beside it, fsync, rename, fsync of the directory. On any
    error (a full disk included) the temporary file is removed and the old ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None:  # a write or fsync on a full disk: say which file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
