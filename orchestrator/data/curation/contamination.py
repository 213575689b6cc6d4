"""Contamination: training documents that share an n-gram with an evaluation set (GPT-3 Appendix C).

Brown et al. 2020 removed training documents with a 13-gram collision with any benchmark's dev or
test set (after lower-casing and dropping punctuation). Here every evaluation text contributes its
word ``ngram``-grams to one index (each n-gram owned by the first evaluation set that has it); a
training document overlaps when any of its n-grams is in the index. Texts with fewer than
``ngram`` words cannot collide and are counted as ``too_short`` rather than checked.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable

from orchestrator.data.curation.text import words
from orchestrator.data.report import DataError


@dataclass(frozen=True)
class EvalSet:
    """The texts of one evaluation set; ``name`` is what the listing and the counts call it."""

    name: str
    texts: list[str]


def ngrams(text: str, *, n: int) -> list[str]:
    tokens = words(text)
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


@dataclass(frozen=True)
class NgramIndex:
    """Every n-gram of the evaluation sets → the position of the first set holding it."""

    n: int
    owner: dict[str, int]
    names: list[str]
    stats: dict[str, dict]
    """name → {texts, ngrams (distinct), too_short}."""


def build_index(eval_sets: Iterable[EvalSet], *, n: int) -> NgramIndex:
    owner: dict[str, int] = {}
    names, stats = [], {}
    for position, eval_set in enumerate(eval_sets):
        names.append(eval_set.name)
        own, too_short = set(), 0
        for text in eval_set.texts:
            grams = ngrams(text, n=n)
            too_short += not grams
            own.update(grams)
        for gram in own:
            owner.setdefault(gram, position)
        stats[eval_set.name] = {"texts": len(eval_set.texts), "ngrams": len(own), "too_short": too_short}
    return NgramIndex(n=n, owner=owner, names=names, stats=stats)


def overlap_batch(texts: list[str], *, index: NgramIndex) -> dict:
    """Per text: how many of its n-gram positions collide, the first colliding n-gram, and the
    evaluation sets hit (comma-separated positions in ``index.names``)."""
    counts, first, hit = [], [], []
    for text in texts:
        grams = [g for g in ngrams(text, n=index.n) if g in index.owner]
        counts.append(len(grams))
        first.append(grams[0] if grams else "")
        hit.append(",".join(str(p) for p in sorted({index.owner[g] for g in grams})))
    return {"overlaps": counts, "first_ngram": first, "eval_sets": hit}


def overlap_function(index: NgramIndex):
    return partial(overlap_batch, index=index)


# --- evaluation files ---------------------------------------------------------------------------
def read_eval_texts(path: str | Path) -> list[str]:
    """The texts of an evaluation file: every string (or list of strings) field of a JSONL row,
    every string column of a parquet file, every blank-line separated paragraph of a .txt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"contamination eval file {path} not found; fix data.curation.contamination.eval_files")
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        return _parquet_texts(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        content = handle.read()
    if name.endswith((".jsonl", ".json")):
        return _jsonl_texts(content, path=path)
    if name.endswith(".txt"):
        return [p for p in content.split("\n\n") if p.strip()]
    raise DataError(f"contamination eval file {path}: use .jsonl, .json, .parquet or .txt (optionally .gz)")


def row_texts(row: object) -> list[str]:
    """The strings of one JSON row: string values and strings inside list values."""
    values = row.values() if isinstance(row, dict) else [row]
    texts = []
    for value in values:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts.extend(v for v in value if isinstance(v, str))
    return texts


def _jsonl_texts(content: str, *, path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            texts.extend(row_texts(json.loads(line)))
        except json.JSONDecodeError:
            raise DataError(f"contamination eval file {path}:{number} is not a JSON line") from None
    return texts


def _parquet_texts(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    texts = []
    for column in table.column_names:
        kind = table.schema.field(column).type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            texts.extend(v for v in table.column(column).to_pylist() if isinstance(v, str))
    return texts
