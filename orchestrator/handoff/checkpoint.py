"""Atomic checkpoint directories that many ranks write and rank 0 commits.

A save goes through three states, and a crash in any of them leaves the last good checkpoint
usable:

1. **staging** — every rank writes its shards into ``root/.TAG.staging`` (``staging_dir``);
2. **commit** — after a barrier, rank 0 writes ``SHA256SUMS`` (one ``<sha256>  <path>`` line
   per file, the ``sha256sum`` format; a rank that hashed its own files while writing them left
   the digests in ``*.sha256`` beside them, ``write_rank_sums``, and those files are not read
   again), fsyncs every file and directory, renames the staging
   directory to ``root/TAG`` and then atomically replaces the ``latest`` pointer file;
3. **committed** — ``root/TAG`` with a ``SHA256SUMS`` that ``verify_checkpoint`` checks.

A directory without ``SHA256SUMS`` was never committed. ``latest_checkpoint`` removes stale
staging directories and, if a commit died while replacing an older checkpoint of the same tag,
puts the older one back.

Typical use on every rank (``barrier`` is the job's collective barrier)::

    staging = staging_dir(root, step_tag(step))
    engine.save_checkpoint(str(staging), tag="state", save_latest=False)   # all ranks
    barrier()
    if rank == 0:
        commit(root, step_tag(step), staging)
        prune_checkpoints(root, keep=3)
    barrier()
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from orchestrator.faults import NEARLY_FULL_BYTES, SPACE_ERRNOS, EnvironmentFault, describe, free_bytes, is_fault, tree_bytes
from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.hashing import atomic_write_text, files_under, fsync_path, fsync_tree, sha256_file

SUMS_FILE = "SHA256SUMS"
LATEST_FILE = "latest"
STAGING_SUFFIX = ".staging"
RANK_SUMS_SUFFIX = ".sha256"
REPLACED_SUFFIX = ".replaced"


def step_tag(step: int) -> str:
    """The tag of the checkpoint saved after optimizer step ``step``: ``step_00000100``."""
    if step < 0:
        raise HandoffError(f"step {step} must be >= 0")
    return f"step_{step:08d}"


def _check_tag(tag: str) -> str:
    if not tag or tag.startswith(".") or "/" in tag or tag == LATEST_FILE:
        raise HandoffError(f"checkpoint tag {tag!r} is not usable: use a plain name such as {step_tag(100)!r} "
                           f"(no '/', no leading '.', not {LATEST_FILE!r})")
    return tag


def staging_dir(root: Path | str, tag: str) -> Path:
    """The directory every rank writes checkpoint ``tag`` into before rank 0 commits it.

    Deterministic, so all ranks agree on it without communicating; created if missing.
    """
    path = Path(root) / f".{_check_tag(tag)}{STAGING_SUFFIX}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_rank_sums(directory: Path, stem: str, hashes: dict[str, str]) -> Path:
    """Record the sha256 a rank computed of its own files (names relative to ``directory``) in
    ``directory/STEM.sha256``, so the commit takes them instead of re-reading those files."""
    path = Path(directory) / f"{stem}{RANK_SUMS_SUFFIX}"
    path.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(hashes.items())))
    return path


def hash_share(directory: Path, under: str, *, rank: int, world: int) -> dict[str, str]:
    """sha256 of this rank's share of the files below ``directory/under`` (every ``world``-th, in
    sorted order), relative to ``directory``: the files another writer (DeepSpeed) left, hashed by
    all ranks in parallel. Call after a barrier, once they are all written."""
    files = files_under(Path(directory) / under)
    return {f.relative_to(directory).as_posix(): sha256_file(f) for f in files[rank::world]}


def _rank_sums(directory: Path) -> dict[str, str]:
    """{path relative to ``directory``: sha256} from every ``*.sha256`` a rank wrote under it."""
    known = {}
    for sums in directory.rglob(f"*{RANK_SUMS_SUFFIX}"):
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            known[(sums.parent / name).relative_to(directory).as_posix()] = digest
    return known


def write_sums(directory: Path) -> dict[str, str]:
    """Hash every file of ``directory`` into its ``SHA256SUMS``; return the hashes. Files whose
    rank recorded their hash while writing them (``write_rank_sums``) are not read again."""
    known = _rank_sums(directory)
    hashes = {}
    for f in files_under(directory):
        name = f.relative_to(directory).as_posix()
        if f.name != SUMS_FILE or f.parent != directory:
            hashes[name] = known[name] if name in known else sha256_file(f)
    if not hashes:
        raise HandoffError(f"checkpoint staging directory {directory} is empty: nothing was saved into it")
    lines = "".join(f"{digest}  {name}\n" for name, digest in hashes.items())
    (directory / SUMS_FILE).write_text(lines)
    return hashes


def read_sums(directory: Path) -> dict[str, str]:
    sums = directory / SUMS_FILE
    if not sums.is_file():
        raise HandoffError(f"checkpoint {directory} has no {SUMS_FILE}: it was never committed "
                           f"(a save died before it finished); delete it and resume from an earlier one")
    hashes = {}
    for number, line in enumerate(sums.read_text().splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise HandoffError(f"{sums} line {number} is not '<sha256>  <path>': {line!r}; the file was edited")
        hashes[name] = digest
    return hashes


def commit(root: Path | str, tag: str, staging: Path | str) -> Path:
    """Make ``staging`` the committed checkpoint ``root/tag`` and point ``latest`` at it (rank 0 only).

    Call after a barrier, once every rank has finished writing into ``staging``.
    """
    root, staging, tag = Path(root), Path(staging), _check_tag(tag)
    if not staging.is_dir():
        raise HandoffError(f"cannot commit checkpoint {tag!r}: staging directory {staging} does not exist")
    write_sums(staging)
    fsync_tree(staging)
    final = root / tag
    replaced = root / f".{tag}{REPLACED_SUFFIX}"
    if final.exists():  # re-saving a tag: move the old one aside first, restore it if we die now
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(staging, final)
    fsync_path(root)
    try:
        atomic_write_text(root / LATEST_FILE, tag + "\n")
    except OSError:  # ``latest`` still names the previous checkpoint: put everything back as it was
        shutil.rmtree(final, ignore_errors=True)
        if replaced.exists():
            os.replace(replaced, final)
        raise
    shutil.rmtree(replaced, ignore_errors=True)
    return final


@contextmanager
def save_faults(root: Path | str, tag: str) -> Iterator[None]:
    """Around a whole save (every rank's writes, then the commit): a full disk, a denied permission
    or a missing directory removes the staging directory and becomes one ``EnvironmentFault`` that
    names the path, the bytes to free and the checkpoint a rerun resumes from; ``latest`` and the
    committed checkpoints stay as they were.

    torch's zip writer reports a full disk as a ``RuntimeError`` without errno, so a failed write
    that leaves the filesystem (nearly) full counts as one too.
    """
    root = Path(root)
    try:
        yield
    except (OSError, RuntimeError) as error:
        staging = root / f".{_check_tag(tag)}{STAGING_SUFFIX}"
        message = _save_fault_message(error, root, tag, staging)
        shutil.rmtree(staging, ignore_errors=True)
        if message is None:
            raise
        raise EnvironmentFault(message) from error


def _save_fault_message(error: BaseException, root: Path, tag: str, staging: Path) -> str | None:
    previous = read_latest(root)
    resume = (f"the committed checkpoint {previous} is intact and a rerun resumes from it" if previous
              else "no checkpoint of this phase was committed yet: a rerun starts it again")
    what = f"saving checkpoint {tag}"
    if is_fault(error) and error.errno not in SPACE_ERRNOS:
        return f"{describe(error, what=what)}; {resume}"
    needed = tree_bytes(previous) if previous else tree_bytes(staging)
    if not is_fault(error) and free_bytes(root) >= max(NEARLY_FULL_BYTES, needed - tree_bytes(staging)):
        return None                                # not the disk: let the real error through
    free = free_bytes(root) + tree_bytes(staging)  # what is free once the partial save is removed
    fix = (f"free at least {needed - free} bytes there" if needed > free else "free space there")
    return (f"no space left on {root} while {what} ({free} bytes free once the partial save is removed; a "
            f"checkpoint of this phase takes about {needed}): {fix}, lower loop.keep_checkpoints, or move the run "
            f"directory to a bigger disk; {resume}")


def _recover(root: Path) -> None:
    """Drop stale staging directories; restore a checkpoint a dead commit had moved aside."""
    for path in root.iterdir():
        if not path.is_dir() or not path.name.startswith("."):
            continue
        if path.name.endswith(STAGING_SUFFIX):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.endswith(REPLACED_SUFFIX):
            original = root / path.name[1:-len(REPLACED_SUFFIX)]
            if original.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, original)


def committed_checkpoints(root: Path | str) -> list[Path]:
    """Committed checkpoint directories under ``root``, oldest commit first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / SUMS_FILE).is_file()]
    return sorted(found, key=lambda p: ((p / SUMS_FILE).stat().st_mtime_ns, p.name))


def read_latest(root: Path | str) -> Path | None:
    """What ``latest`` names, else the newest committed checkpoint; reads only (safe during a save)."""
    root = Path(root)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        tag = pointer.read_text().strip()
        if tag and (root / tag / SUMS_FILE).is_file():
            return root / tag
    committed = committed_checkpoints(root)
    return committed[-1] if committed else None


def latest_checkpoint(root: Path | str) -> Path | None:
    """The checkpoint to resume from, after cleaning up what a crashed save left behind.

    Call it on every rank before training starts (not while another rank may be writing a
    staging directory); use ``read_latest`` to only look.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    _recover(root)
    return read_latest(root)


def verify_checkpoint(path: Path | str, *, share: tuple[int, int] = (0, 1)) -> dict[str, str]:
    """Refuse a checkpoint whose files are missing, truncated or edited; return its hashes.
    ``share=(rank, world)``: check only every ``world``-th file from the ``rank``-th (sorted), so
    the ranks of a job hash the checkpoint in parallel, each its share (they then agree)."""
    path = Path(path)
    if not path.is_dir():
        raise HandoffError(f"checkpoint {path} does not exist")
    hashes = read_sums(path)
    fix = f"checkpoint {path} is corrupt; delete it to resume from the previous one"
    rank, world = share
    for name, want in sorted(hashes.items())[rank::world]:
        file = path / name
        if not file.is_file():
            raise HandoffError(f"checkpoint file {file} is missing: {fix}")
        got = sha256_file(file)
        if got != want:
            raise HandoffError(f"checkpoint file {file} ({file.stat().st_size} bytes) does not match "
                               f"{SUMS_FILE} (truncated or edited): expected {want[:12]}…, got {got[:12]}…: {fix}")
    return hashes


def prune_checkpoints(root: Path | str, *, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` committed checkpoints (never the one ``latest`` names)."""
    if keep < 1:
        raise HandoffError(f"keep={keep}: keep at least 1 checkpoint")
    root = Path(root)
    pointer = root / LATEST_FILE
    protected = pointer.read_text().strip() if pointer.is_file() else None
    committed = committed_checkpoints(root)
    removed = [p for p in committed[:-keep] if p.name != protected]
    for path in removed:
        shutil.rmtree(path)
    return removed


# --- resuming under another layout ------------------------------------------------------------
LOOP_STATE_FILE = "loop_state.json"
"""The train loop's state in a checkpoint: step, data position, and each trained model's layout."""
CONSOLIDATED_FILE = "consolidated.pt"
"""A trained model's full weights (``MODEL/consolidated.pt``) in checkpoints written before the
sharded files (``MODEL/shards``, ``handoff.sharded``); still read by a resume that changes layout."""


def layout_brief(layout: dict) -> str:
    return " ".join(f"{key}={layout[key]}" for key in ("tp", "pp", "dp", "ep", "zero_stage", "micro_batch", "grad_accum"))


def relayout_refusal(checkpoint: Path | str, layout: dict) -> str | None:
    """Why ``checkpoint`` cannot be resumed under ``layout`` (a ``Layout`` as a dict), or None.

    Under the layout that saved it, DeepSpeed's own files restore everything; under another one
    the loop reads the sharded fp32 state (or an older checkpoint's consolidated weights), which a
    checkpoint saved with ``loop.reshardable_checkpoints: false`` does not hold.
    """
    checkpoint = Path(checkpoint)
    state_file = checkpoint / LOOP_STATE_FILE
    if not state_file.is_file():
        return None
    for name, saved in json.loads(state_file.read_text())["layouts"].items():
        reshardable = (checkpoint / name / "shards").is_dir() or (checkpoint / name / CONSOLIDATED_FILE).is_file()
        if saved != layout and not reshardable:
            return (f"checkpoint {checkpoint} was saved under layout {layout_brief(saved)} without sharded "
                    f"state (loop.reshardable_checkpoints: false), and this run's layout is {layout_brief(layout)}: "
                    f"resume with the checkpoint's layout, or delete {checkpoint.parent} to start the phase again")
    return None
