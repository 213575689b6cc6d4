"""What a phase hands on: ``PHASE/final/shards``, the fp32 master weights each rank held.

At the end of a phase every rank writes the fp32 masters of the fragments it stores into
``final/shards/rankNNNNN.safetensors`` (the ``handoff.sharded`` format, master only: a child
starts a fresh optimizer, so the Adam moments would be a dead 2× of the file) and hashes its own
files while writing; rank 0 gathers the {file: sha256} dicts (a few bytes per rank), commits the
directory with one rename and lists every file in the manifest. Nothing is gathered: a child rank
reads only the regions it holds (``Runtime.load_weights_sharded``), a frozen model or an export
reads one whole tensor at a time (``read_tensor``).

    PHASE/.final.staging/shards/rank00000.{safetensors,json}   every rank writes here
    PHASE/final/shards/…                                        rank 0 renames it (atomic)
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import Tensor

from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.hashing import fsync_path, fsync_tree
from orchestrator.handoff.sharded import MASTER, SHARDS_DIR, Region, ShardedReader, write_rank_shards
from orchestrator.model.params import Shard

FINAL_DIR = "final"
FINAL_WEIGHTS = f"{FINAL_DIR}/{SHARDS_DIR}"
"""The manifest's ``checkpoint``: the sharded final weights, relative to the phase directory."""
STAGING = ".final.staging"


def staging_shards(phase_dir: Path) -> Path:
    """Where every rank writes its final shards before rank 0 commits them."""
    return Path(phase_dir) / STAGING / SHARDS_DIR


def clear_staging(phase_dir: Path) -> None:
    """Rank 0, before any rank writes: nothing of an earlier attempt (another world size) stays."""
    shutil.rmtree(Path(phase_dir) / STAGING, ignore_errors=True)


def commit_final(phase_dir: Path, hashes: Iterable[dict[str, str]]) -> dict[str, str]:
    """Rank 0, after every rank wrote: fsync the staging directory, replace ``final`` with it in
    one rename; returns {path relative to the phase directory: sha256} for the manifest, from
    the hashes the ranks computed of their own files (no file is read again here)."""
    phase_dir = Path(phase_dir)
    staging, final = phase_dir / STAGING, phase_dir / FINAL_DIR
    files = {}
    for rank_hashes in hashes:
        for name, digest in rank_hashes.items():
            if not (staging / SHARDS_DIR / name).is_file():
                raise HandoffError(f"a rank reported {name} but {staging / SHARDS_DIR} has no such file")
            files[f"{FINAL_WEIGHTS}/{name}"] = digest
    written = {p.name for p in (staging / SHARDS_DIR).iterdir()}
    unlisted = sorted(written - {name.rsplit("/", 1)[1] for name in files})
    if unlisted:
        raise HandoffError(f"{staging / SHARDS_DIR} holds files no rank reported: {unlisted[:4]}")
    fsync_tree(staging)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    fsync_path(phase_dir)
    return dict(sorted(files.items()))


def parent_reader(phase_dir: Path, *, checkpoint: str, files: dict[str, str]) -> ShardedReader:
    """The reader of a verified parent's shards, refusing rank files its manifest does not list
    (the reader would otherwise take any ``rank*.json`` found there as a source)."""
    directory = Path(phase_dir) / checkpoint
    listed = {name.rsplit("/", 1)[-1] for name in files if name.startswith(checkpoint.rstrip("/") + "/")}
    extra = sorted(p.name for p in directory.glob("rank*") if p.name not in listed)
    if extra:
        raise HandoffError(f"{directory} holds shard files its manifest does not list ({', '.join(extra[:4])}): "
                           f"they are not part of the phase's output; delete them or rerun the phase")
    return ShardedReader(directory)


def whole(name: str, shape: tuple[int, ...]) -> Region:
    """The region of the whole plain tensor ``name`` (no TP cut, the full flat range)."""
    numel = 1
    for size in shape:
        numel *= size
    return Region(Shard(name), tuple(shape), tuple(shape), 0, numel)


def read_tensor(reader: ShardedReader, name: str, shape: tuple[int, ...]) -> Tensor:
    """The whole fp32 plain tensor ``name`` from whichever shards hold it (one tensor in memory)."""
    return reader.read(whole(name, shape), MASTER).view(shape)


def check_weights(reader: ShardedReader, shapes: dict[str, tuple[int, ...]], *,
                  fresh: frozenset[str] = frozenset()) -> None:
    """Refuse shards that are not the plain GPT of ``shapes`` (name → shape) less ``fresh`` (the
    parameters a new head adds): the same rule as a consolidated state dict's ``check_plain_state``."""
    saved = {name: sources[0].region.global_shape for name, sources in reader.sources.items()}
    expected = {name: shape for name, shape in shapes.items() if name not in fresh}
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise HandoffError(f"the sharded weights in {reader.directory} do not fit this model: missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]}: hand on a phase of the same model config and head")
    wrong = [(name, saved[name], shape) for name, shape in expected.items() if tuple(saved[name]) != tuple(shape)]
    if wrong:
        name, got, want = wrong[0]
        raise HandoffError(f"{name}: the sharded weights have shape {tuple(got)}, this model {tuple(want)}: "
                           f"the model configs differ")


def write_whole_tensors(directory: Path, tensors: Iterable[tuple[str, Tensor]], *, rank: int = 0) -> dict[str, str]:
    """One process's plain tensors as one rank's shard file (``orchestrate import``); {file: sha256}."""
    def fragments() -> Iterator:
        for name, tensor in tensors:
            yield whole(name, tuple(tensor.shape)), {MASTER: tensor.detach().to(torch.float32).reshape(-1)}

    return write_rank_shards(Path(directory), rank=rank, fragments=fragments(),
                             metadata={"adam_step": 0, "kinds": [MASTER]})
