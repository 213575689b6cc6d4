"""Fuzzy deduplication: MinHash signatures and LSH banding (datasketch), confirmed by Jaccard.

GPT-3 (Brown et al. 2020, §2.2 and Appendix A) removed documents with high overlap within and
across datasets with Spark's MinHashLSH over the classifier's word features. Here:

1. each document is the set of its word ``ngram``-shingles (lower-cased, punctuation dropped);
   ``MinHash.bulk`` gives ``num_perm`` minima per document (Broder 1997: P(minima agree) = Jaccard);
2. ``MinHashLSH`` with ``bands`` × ``rows`` makes two documents a candidate pair when any band of
   ``rows`` minima agrees: probability 1 − (1 − J^rows)^bands (Leskovec et al., MMDS §3.4);
3. a candidate pair is a duplicate when its estimated Jaccard (the share of equal minima) is at
   least ``threshold``; duplicates form clusters (union-find, so A~B and B~C put A, B, C together);
4. the kept document of a cluster is its first in recipe order: the earliest source, then the
   earliest row. Listing the reference corpus first therefore keeps its copy over a raw one.

Exact duplicates have equal signatures, so every band agrees and the estimate is 1: always found.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
from tqdm.auto import tqdm

from orchestrator.data.curation.text import words

MINHASH_SEED = 1
SCHEME = "affine64"
"""datasketch 2's hash family; signatures are made and read back with it."""


def shingles(text: str, *, ngram: int) -> set[bytes]:
    """The word ``ngram``-grams of ``text``; a shorter text is one shingle of all its words."""
    tokens = words(text)
    if len(tokens) < ngram:
        return {(" ".join(tokens) or text).encode()}
    return {" ".join(tokens[i:i + ngram]).encode() for i in range(len(tokens) - ngram + 1)}


def signatures(texts: list[str], *, num_perm: int, ngram: int) -> np.ndarray:
    """(len(texts), num_perm) uint64 MinHash signatures (one permutation set for all, seed fixed)."""
    from datasketch import MinHash

    if not texts:
        return np.zeros((0, num_perm), dtype=np.uint64)
    minhashes = MinHash.bulk([shingles(t, ngram=ngram) for t in texts], num_perm=num_perm, seed=MINHASH_SEED,
                             scheme=SCHEME)
    return np.stack([m.hashvalues for m in minhashes]).astype(np.uint64)


def signature_batch(texts: list[str], *, num_perm: int, ngram: int) -> dict:
    """``signatures`` as a ``datasets.map`` column."""
    return {"signature": signatures(texts, num_perm=num_perm, ngram=ngram)}


def signature_function(*, num_perm: int, ngram: int):
    return partial(signature_batch, num_perm=num_perm, ngram=ngram)


@dataclass(frozen=True)
class Duplicates:
    """The clusters over documents 0 … N − 1 (all sources in recipe order)."""

    cluster: np.ndarray
    """(N,) the first document of each document's cluster (itself when it has no duplicate)."""
    jaccard: np.ndarray
    """(N,) the highest estimated Jaccard with an earlier duplicate (0 for a cluster's first)."""
    candidate_pairs: int
    confirmed_pairs: int

    @property
    def keep(self) -> np.ndarray:
        return self.cluster == np.arange(len(self.cluster))


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The share of equal minima: an unbiased estimate of the shingle sets' Jaccard similarity."""
    return float(np.count_nonzero(a == b)) / len(a)


def find_duplicates(signature: np.ndarray, *, threshold: float, bands: int) -> Duplicates:
    """Query each document against the earlier ones, confirm candidates, union the duplicates."""
    from datasketch import LeanMinHash, MinHashLSH

    n, num_perm = signature.shape
    lsh = MinHashLSH(num_perm=num_perm, params=(bands, num_perm // bands))
    parent = list(range(n))
    jaccard = np.zeros(n)
    candidates = confirmed = 0
    for doc in tqdm(range(n), desc="dedup: LSH", unit="doc", disable=None, leave=False):
        minhash = LeanMinHash(seed=MINHASH_SEED, hashvalues=signature[doc], scheme=SCHEME)
        for other in sorted(lsh.query(minhash)):
            candidates += 1
            similarity = estimated_jaccard(signature[doc], signature[other])
            if similarity >= threshold:
                confirmed += 1
                jaccard[doc] = max(jaccard[doc], similarity)
                _union(parent, doc, other)
        lsh.insert(doc, minhash, check_duplication=False)
    cluster = np.array([_root(parent, doc) for doc in range(n)], dtype=np.int64)
    return Duplicates(cluster=cluster, jaccard=jaccard, candidate_pairs=candidates, confirmed_pairs=confirmed)


def _root(parent: list[int], node: int) -> int:
    while parent[node] != node:
        parent[node] = parent[parent[node]]  # path halving
        node = parent[node]
    return node


def _union(parent: list[int], a: int, b: int) -> None:
    """Join the clusters of a and b under the smaller root (the earlier document is kept)."""
    root_a, root_b = _root(parent, a), _root(parent, b)
    if root_a != root_b:
        parent[max(root_a, root_b)] = min(root_a, root_b)
