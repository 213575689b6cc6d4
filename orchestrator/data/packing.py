"""Tokenize documents and pack them into fixed-length training blocks.

Packing (GPT-2/3 style, Radford et al. 2019; Brown et al. 2020 §2.3): documents are tokenized
with a batched ``datasets`` ``map`` and laid end to end in one token stream with EOS after every
document; no document gets its own padded sequence and attention runs across the EOS boundary.

A ``Blocks`` view cuts the stream into windows of ``seq_len + 1`` tokens with stride ``seq_len``:
window i holds tokens [i·T, i·T + T], its first T tokens are the inputs and its last T the
targets, so consecutive windows share one token and every token after the first is a target
exactly once. The last window is padded and its padded targets are -100: no token is lost.

The stream is a flat binary file (uint16 when the vocabulary fits, else int32) read through a
memory map, cached under a hash of the documents, the tokenizer and the packer version.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from orchestrator.data.cache import atomic_directory, hash_of

PACKER_VERSION = 1
IGNORE_INDEX = -100
"""Target id that cross-entropy skips (``torch.nn.functional.cross_entropy``'s ``ignore_index``)."""


@dataclass(frozen=True)
class TokenStream:
    """One split of one source as a token stream on disk."""

    path: Path
    n_documents: int
    n_tokens: int
    dtype: str

    def tokens(self) -> np.ndarray:
        if self.n_tokens == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path / "tokens.bin", dtype=self.dtype, mode="r", shape=(self.n_tokens,))


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def tokenize(documents: datasets.Dataset, *, tokenizer, eos_id: int, fingerprint: str) -> datasets.Dataset:
    """``{"text"}`` rows → ``{"input_ids"}`` rows, each ending with EOS (a batched ``map``)."""
    def encode(texts: list[str]) -> dict:
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return {"input_ids": [row + [eos_id] for row in ids]}
    return documents.map(encode, input_columns="text", batched=True, batch_size=256,
                         remove_columns=documents.column_names, new_fingerprint=fingerprint)


def write_stream(tokenized: datasets.Dataset, *, out_dir: Path, dtype: str) -> int:
    """Append every row's ids to ``out_dir/tokens.bin`` in order; returns the token count."""
    n_tokens = 0
    with open(out_dir / "tokens.bin", "wb") as out:
        for batch in tokenized.with_format("arrow").iter(batch_size=4096):
            flat = batch["input_ids"].combine_chunks().flatten()  # a pyarrow Table column: ChunkedArray
            values = flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
            values.tofile(out)
            n_tokens += values.size
    return n_tokens


def ensure_stream(documents: datasets.Dataset, *, tokenizer, eos_id: int, vocab_size: int, key: dict,
                  cache_dir: Path) -> TokenStream:
    """The cached token stream of ``documents``; ``key`` must name everything they depend on."""
    digest = hash_of({**key, "packer": PACKER_VERSION})
    target = cache_dir / "streams" / digest[:24]
    if not (target / "meta.json").is_file():
        dtype = token_dtype(vocab_size)
        tokenized = tokenize(documents, tokenizer=tokenizer, eos_id=eos_id, fingerprint=f"tok-{digest[:16]}")
        with atomic_directory(target) as tmp:
            n_tokens = write_stream(tokenized, out_dir=tmp, dtype=dtype)
            meta = {"n_documents": len(documents), "n_tokens": n_tokens, "dtype": dtype, "key": key}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    meta = json.loads((target / "meta.json").read_text())
    return TokenStream(path=target, n_documents=meta["n_documents"], n_tokens=meta["n_tokens"], dtype=meta["dtype"])


@dataclass(frozen=True)
class Blocks:
    """Windows of ``seq_len + 1`` tokens with stride ``seq_len`` over a token stream."""

    tokens: np.ndarray
    seq_len: int

    def __len__(self) -> int:
        # ceil((n − 1) / T) windows cover targets 1 … n−1 once each
        return max(0, math.ceil((len(self.tokens) - 1) / self.seq_len))

    def window(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} out of range 0..{len(self) - 1}")
        start = index * self.seq_len
        return np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int64)

    def gather(self, indices, *, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels), each (B, T) int64; labels are the inputs shifted left by one.

        ``labels[b, t]`` is the token that follows ``input_ids[b, t]`` (the target of position t);
        positions past the end of the stream have input ``pad_id`` and label -100.
        """
        batch = np.full((len(indices), self.seq_len + 1), pad_id, dtype=np.int64)  # (B, T+1)
        labels = np.full((len(indices), self.seq_len), IGNORE_INDEX, dtype=np.int64)  # (B, T)
        for row, index in enumerate(indices):
            window = self.window(int(index))
            batch[row, : len(window)] = window
            labels[row, : len(window) - 1] = window[1:]
        return batch[:, :-1], labels
