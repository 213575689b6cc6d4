"""What the stages share: words of a text, per-document passes over a ``datasets.Dataset``, and
the rows of the listing files.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable

import datasets
import numpy as np
from tqdm.auto import tqdm

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased words with punctuation dropped (GPT-3 Appendix C normalises text this way)."""
    return WORD.findall(text.lower())


def map_texts(documents: datasets.Dataset, function: Callable[[list[str]], dict], *, num_proc: int, desc: str,
              fingerprint: str, batch_size: int = 256) -> dict[str, np.ndarray]:
    """``function(texts) -> {column: values}`` over every document, in order, as numpy columns;
    ``num_proc`` > 1 runs it in ``datasets.map`` worker processes (contiguous shards: same result)."""
    if num_proc > 1 and len(documents) >= 2 * num_proc:
        mapped = documents.map(function, input_columns="text", batched=True, batch_size=batch_size,
                               num_proc=num_proc, remove_columns=documents.column_names, keep_in_memory=True,
                               desc=desc, new_fingerprint=fingerprint).with_format("numpy")
        return {name: mapped[name] for name in mapped.column_names}
    columns: dict[str, list] = {}
    texts = documents.with_format("arrow")
    for start in tqdm(range(0, len(documents), batch_size), desc=desc, unit="batch", disable=None, leave=False):
        batch = texts[start:start + batch_size]["text"].to_pylist()
        for name, values in function(batch).items():
            columns.setdefault(name, []).extend(values)
    return {name: np.asarray(values) for name, values in columns.items()}


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """One JSON object per line; returns the row count."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
