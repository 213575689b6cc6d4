"""A weighted, seeded, resumable order over the blocks of several sources.

GPT-3 (Brown et al. 2020, Table 2.2) samples its five corpora by fixed weights rather than by
size (Common Crawl 60%, WebText2 22%, Books1 8%, Books2 8%, Wikipedia 3%), so small high-quality
sources are seen several times per pass over the large ones. Here each source's block indices
are shuffled and merged with ``datasets.interleave_datasets(probabilities=weights, seed=...,
stopping_strategy="all_exhausted")``: every position draws its source with the given weights, and
a pass ("epoch") ends once every source has been used up at least once. Epoch e uses seeds derived
from (seed, e), so the stream is endless, the same for the same seed, and position p can be found
again after a restart without replaying the batches before it.

Since all blocks hold the same number of tokens, the block weights are token weights.
"""
from __future__ import annotations

import datasets
import numpy as np


def derived_seed(*parts: int) -> int:
    """A 32-bit seed from integers, stable across runs and platforms (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class MixtureSchedule:
    """Which (source, block) sits at each position of an endless training stream."""

    def __init__(self, *, sizes: list[int], weights: list[float], seed: int) -> None:
        if len(sizes) != len(weights):
            raise ValueError(f"{len(sizes)} sources but {len(weights)} weights")
        if any(w <= 0 for w in weights):
            raise ValueError(f"weights {weights} must all be > 0")
        self.sizes = list(sizes)
        self.seed = seed
        live = [i for i, n in enumerate(sizes) if n > 0]
        total = sum(weights[i] for i in live)
        self.live = live
        self.probabilities = [weights[i] / total for i in live]
        self._epoch_lengths: list[int] = []
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    @property
    def empty(self) -> bool:
        return not self.live

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(source ids, block ids) of one pass, in training order."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1], self._cached[2]
        if self.empty:
            raise ValueError("no source has any block: nothing to schedule")
        parts = []
        for source in self.live:
            n = self.sizes[source]
            ids = datasets.Dataset.from_dict({"source": np.full(n, source, dtype=np.int32),
                                              "block": np.arange(n, dtype=np.int64)})
            parts.append(ids.shuffle(seed=derived_seed(self.seed, epoch, source)))
        mixed = datasets.interleave_datasets(parts, probabilities=self.probabilities,
                                             seed=derived_seed(self.seed, epoch), stopping_strategy="all_exhausted")
        table = mixed.with_format("numpy")[:]
        sources, blocks = np.asarray(table["source"]), np.asarray(table["block"])
        self._cached = (epoch, sources, blocks)
        return sources, blocks

    def epoch_length(self, epoch: int) -> int:
        while len(self._epoch_lengths) <= epoch:
            self._epoch_lengths.append(len(self.epoch(len(self._epoch_lengths))[0]))
        return self._epoch_lengths[epoch]

    def locate(self, position: int) -> tuple[int, int]:
        """(epoch, offset in that epoch) of a stream position."""
        if position < 0:
            raise ValueError(f"position={position} must be >= 0")
        epoch = 0
        while position >= self.epoch_length(epoch):
            position -= self.epoch_length(epoch)
            epoch += 1
        return epoch, position

    def take(self, *, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(source ids, block ids) at stream positions start … start + count − 1."""
        sources, blocks = [], []
        epoch, offset = self.locate(start)
        while count > 0:
            epoch_sources, epoch_blocks = self.epoch(epoch)
            chunk = min(count, len(epoch_sources) - offset)
            sources.append(epoch_sources[offset:offset + chunk])
            blocks.append(epoch_blocks[offset:offset + chunk])
            count -= chunk
            epoch, offset = epoch + 1, 0
        if not sources:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        return np.concatenate(sources), np.concatenate(blocks)


def shuffled_positions(n: int, *, seed: int, start: int, count: int) -> np.ndarray:
    """Indices into n examples at stream positions start … start + count − 1.

    The stream is one seeded permutation of range(n) per epoch (epoch e uses seed (seed, e)), so
    it is endless, reproducible, and a resumed run finds position p without replaying anything.
    Used for the SFT, RM and PPO example lists.
    """
    if n < 1:
        raise ValueError("no examples to draw from")
    positions = np.arange(start, start + count)
    out = np.empty(count, dtype=np.int64)
    for epoch in np.unique(positions // n):
        mask = positions // n == epoch
        permutation = np.random.default_rng(derived_seed(seed, int(epoch))).permutation(n)
        out[mask] = permutation[positions[mask] % n]
    return out
