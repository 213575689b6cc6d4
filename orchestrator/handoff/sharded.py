"""The sharded checkpoint: every rank writes the fp32 state it holds; any layout reads it back.

Each rank writes two files into ``MODEL/shards/`` of a checkpoint — ``rankNNNNN.safetensors``
(its tensors) and ``rankNNNNN.json`` (the index) — and nothing is gathered anywhere. For every
parameter fragment it holds, the rank stores the fp32 master weight and the Adam moments
(``exp_avg``, ``exp_avg_sq``) of exactly the elements it owns, with a ``Region`` that says where
they sit in the plain GPT's tensor:

- the tensor's global (logical, untied) name and global shape: ``h.0.attn.c_attn.weight (192, 64)``;
- its tensor-parallel piece (``model.params.Shard``: split dimension, TP size and rank, the stride
  of a fused QKV split, the real vocabulary of a padded embedding) and that piece's shape;
- the flat range ``[start, start + numel)`` of the TP piece this rank holds: the whole piece
  without ZeRO, a ZeRO-1/2 fragment of DeepSpeed's flat partition (``_hp_mapping``'s
  ``lp_fragment_address``), or a ZeRO-3 partition (``dp_rank · ceil(numel / dp)``).

A reader under any other layout asks, per parameter, for the region *it* holds (``read``): every
element of that region is mapped to its global coordinate (``local_to_global``) and back into each
source fragment (``global_to_local``); only the sources that intersect are opened, and only the
span of each source tensor that is needed is read (safetensors ``get_slice`` on a memory-mapped
file). One parameter is in flight at a time, so a reader holds its own shard plus index arrays
of one region — never the model.

Why our own format rather than ``torch.distributed.checkpoint`` or DeepSpeed's universal
checkpoint: DeepSpeed's universal layout is produced by an offline, single-process
``ds_to_universal.py`` pass over the whole optimizer state (SPEC §5 forbids that gather) and its
loader needs that pass after every save; DCP describes a tensor as rectangular chunks, while a
ZeRO 1/2/3 fragment is a flat range of a TP piece that crosses rows (not a rectangle) and a fused
QKV piece is strided — both fit the two-level region above directly. The file is plain
safetensors (readable by ``safetensors.safe_open``), written tensor by tensor and hashed while it
is written, so a rank never holds a second copy of its shard and never re-reads its files to hash
them.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import Tensor

from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.hashing import fsync_path
from orchestrator.model.params import Shard

FORMAT = "orchestrator-sharded-v1"
SHARDS_DIR = "shards"
MASTER = "master"
MOMENTS = ("exp_avg", "exp_avg_sq")
KINDS = (MASTER, *MOMENTS)
"""What each fragment stores: the fp32 master weight and AdamW's two moments (Kingma & Ba 2015)."""


@dataclass(frozen=True)
class Region:
    """Where a rank's flat fragment sits in the plain GPT tensor ``shard.name``."""

    shard: Shard
    """The tensor-parallel piece (``Shard``: name, split dim, TP size/rank, stride, real rows)."""
    global_shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    """Shape of the TP piece (with vocabulary padding where the embedding is padded for TP)."""
    start: int
    numel: int
    """The flat range ``[start, start + numel)`` of the TP piece held here."""

    @property
    def name(self) -> str:
        return self.shard.name

    def to_json(self) -> dict:
        s = self.shard
        return {"name": s.name, "global_shape": list(self.global_shape), "local_shape": list(self.local_shape),
                "tp": {"dim": s.dim, "parts": s.parts, "index": s.index, "stride": s.stride, "rows": s.rows},
                "start": self.start, "numel": self.numel}

    @staticmethod
    def from_json(data: dict) -> "Region":
        return Region(Shard(data["name"], **data["tp"]), tuple(data["global_shape"]), tuple(data["local_shape"]),
                      int(data["start"]), int(data["numel"]))


# --- index arithmetic: TP piece ↔ global tensor ------------------------------------------------
def _chunk(region: Region) -> int:
    """Rows (along the split dim) of one of the ``stride × parts`` chunks ``Shard.take`` cuts."""
    s = region.shard
    return region.local_shape[s.dim] // s.stride


def _unravel(flat: Tensor, shape: tuple[int, ...]) -> list[Tensor]:
    coords = []
    for size in reversed(shape):
        coords.append(flat % size)
        flat = flat // size
    return coords[::-1]


def _ravel(coords: list[Tensor], shape: tuple[int, ...]) -> Tensor:
    flat = torch.zeros_like(coords[0])
    for coord, size in zip(coords, shape):
        flat = flat * size + coord
    return flat


def local_to_global(region: Region, local_flat: Tensor) -> Tensor:
    """Global flat index (row-major in ``global_shape``) of each flat index of the TP piece; -1
    for padding rows of a vocabulary padded for TP (they exist in no plain tensor).

    Worked example: c_attn weight (192, 64), QKV stride 3, tp 2: a chunk is 32 rows; local row 40
    of TP rank 1 is its chunk 1 (k), row 8 → global chunk 1·2 + 1 = 3, row 3·32 + 8 = 104.
    """
    coords = _unravel(local_flat, region.local_shape)
    s = region.shard
    if s.dim is not None:
        chunk = _chunk(region)
        local = coords[s.dim]
        coords[s.dim] = ((local // chunk) * s.parts + s.index) * chunk + local % chunk
    valid = torch.ones_like(local_flat, dtype=torch.bool)
    for coord, size in zip(coords, region.global_shape):
        valid &= coord < size
    return torch.where(valid, _ravel(coords, region.global_shape), -1)


def global_to_local(region: Region, global_flat: Tensor) -> Tensor:
    """Flat index in the TP piece of each global flat index (inverse of ``local_to_global``);
    -1 where the element belongs to another TP rank's piece."""
    coords = _unravel(global_flat, region.global_shape)
    s = region.shard
    held = torch.ones_like(global_flat, dtype=torch.bool)
    if s.dim is not None:
        chunk = _chunk(region)
        piece, within = coords[s.dim] // chunk, coords[s.dim] % chunk
        held = piece % s.parts == s.index
        coords[s.dim] = (piece // s.parts) * chunk + within
    return torch.where(held, _ravel(coords, region.local_shape), -1)


# --- writing: one safetensors file per rank, streamed and hashed ---------------------------------
_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}


def rank_stem(rank: int) -> str:
    return f"rank{rank:05d}"


def write_rank_shards(directory: Path, *, rank: int, fragments: Iterable[tuple[Region, dict[str, Tensor]]],
                      metadata: dict) -> dict[str, str]:
    """Write this rank's fragments (``{kind: 1-D tensor of region.numel}``) and its index; return
    {file name: sha256} of the two files, computed while writing (no second read)."""
    directory.mkdir(parents=True, exist_ok=True)
    fragments = list(fragments)
    header, entries, offset = {}, [], 0
    for region, tensors in fragments:
        keys = {}
        for kind, tensor in tensors.items():
            if tensor.numel() != region.numel:
                raise HandoffError(f"{region.name}/{kind}: {tensor.numel()} elements for a region of {region.numel}")
            key = f"{region.name}/{kind}"
            size = region.numel * tensor.element_size()
            header[key] = {"dtype": _DTYPES[tensor.dtype], "shape": [region.numel], "data_offsets": [offset, offset + size]}
            keys[kind] = key
            offset += size
        entries.append({**region.to_json(), "keys": keys})
    header["__metadata__"] = {"format": FORMAT}
    stem = rank_stem(rank)
    data_hash = stream_safetensors(directory / f"{stem}.safetensors", header,
                                    (tensor for _, tensors in fragments for tensor in tensors.values()))
    index = {"format": FORMAT, "rank": rank, "file": f"{stem}.safetensors", **metadata, "entries": entries}
    text = json.dumps(index, indent=1).encode()
    (directory / f"{stem}.json").write_bytes(text)
    fsync_path(directory / f"{stem}.json")
    return {f"{stem}.safetensors": data_hash, f"{stem}.json": hashlib.sha256(text).hexdigest()}


def stream_safetensors(path: Path, header: dict, tensors: Iterable[Tensor]) -> str:
    """The safetensors layout (8-byte header length, JSON header padded to 8 bytes, raw data),
    written one tensor at a time; returns the file's sha256."""
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for chunk in (struct.pack("<Q", len(encoded)), encoded):
            handle.write(chunk)
            digest.update(chunk)
        for tensor in tensors:
            data = tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().data
            handle.write(data)
            digest.update(data)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


# --- reading: any layout's region, from whichever sources cover it ------------------------------
@dataclass(frozen=True)
class _Source:
    file: Path
    region: Region
    keys: dict[str, str]

    @property
    def bounds(self) -> tuple[int, int]:
        """The lowest and highest global flat index this fragment holds: ``local_to_global`` is
        increasing (row-major order survives the TP cut), so the ends of the range give them."""
        ends = local_to_global(self.region, torch.tensor([self.region.start, self.region.start + self.region.numel - 1]))
        last = int(ends[1]) if int(ends[1]) >= 0 else math.prod(self.region.global_shape) - 1   # ends in padding
        return int(ends[0]), last


class ShardedReader:
    """Every rank's index of one model's sharded checkpoint (``MODEL/shards``), read lazily."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        indices = sorted(self.directory.glob("rank*.json"))
        if not indices:
            raise HandoffError(f"{self.directory} holds no sharded checkpoint (no rank*.json): it was saved by an "
                               f"older version without sharded files; resume it with the layout that saved it")
        self.metadata: list[dict] = []
        self.sources: dict[str, list[_Source]] = {}
        for path in indices:
            index = json.loads(path.read_text())
            if index.get("format") != FORMAT:
                raise HandoffError(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}")
            self.metadata.append({k: v for k, v in index.items() if k != "entries"})
            for entry in index["entries"]:
                source = _Source(self.directory / index["file"], Region.from_json(entry), entry["keys"])
                self.sources.setdefault(source.region.name, []).append(source)
        self._open: dict[Path, object] = {}

    def names(self) -> list[str]:
        return sorted(self.sources)

    def read(self, target: Region, kind: str) -> Tensor:
        """The fp32 values of ``kind`` for ``target``'s flat range (1-D, ``target.numel``)."""
        sources = self.sources.get(target.name)
        if not sources:
            raise HandoffError(f"sharded checkpoint {self.directory} has no tensor {target.name!r}: "
                               f"was it saved from the same model config and head?")
        if sources[0].region.global_shape != target.global_shape:
            raise HandoffError(f"{target.name}: the checkpoint has shape {sources[0].region.global_shape}, the model "
                               f"{target.global_shape}: the model configs differ")
        wanted = local_to_global(target, torch.arange(target.start, target.start + target.numel))
        out = torch.zeros(target.numel, dtype=torch.float32)
        missing = wanted >= 0                     # padding rows stay 0
        if not bool(missing.any()):
            return out
        low, high = int(wanted[missing].min()), int(wanted.max())
        for source in sources:
            first, last = source.bounds
            if last < low or first > high:        # holds nothing of this region: not opened
                continue
            if not bool(missing.any()):
                break
            position = global_to_local(source.region, wanted.clamp_min(0)) - source.region.start
            hit = missing & (position >= 0) & (position < source.region.numel)
            if bool(hit.any()):
                out[hit] = self._span(source, kind, position[hit])
                missing &= ~hit
        if bool(missing.any()):
            raise HandoffError(f"sharded checkpoint {self.directory}: {int(missing.sum())} elements of {target.name} "
                               f"are held by no rank's file (a rank's files are missing)")
        return out

    def _span(self, source: _Source, kind: str, positions: Tensor) -> Tensor:
        """``positions`` of the source fragment, reading only [min, max] of it from the mapped file."""
        from safetensors import safe_open

        handle = self._open.get(source.file)
        if handle is None:
            handle = self._open[source.file] = safe_open(str(source.file), framework="pt")
        first, last = int(positions.min()), int(positions.max()) + 1
        span = handle.get_slice(source.keys[kind])[first:last]
        return span.to(torch.float32)[positions - first]

    def close(self) -> None:
        self._open.clear()


def read_metadata(directory: Path | str) -> Optional[dict]:
    """Rank 0's index metadata of ``directory`` (None when it has no sharded files)."""
    path = Path(directory) / f"{rank_stem(0)}.json"
    if not path.is_file():
        return None
    index = json.loads(path.read_text())
    return {k: v for k, v in index.items() if k != "entries"}
