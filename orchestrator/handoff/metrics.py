"""``PHASE/metrics.jsonl``: one JSON object per event, appended by rank 0 of a phase.

Every record has ``step``, ``time`` (Unix seconds) and ``kind`` (``train``, ``eval``, ``final``,
or ``reshard``: the eval metrics of weights a resume resharded into another layout, at the
checkpoint's step) plus metric keys (``loss``, ``eval_loss``, ``perplexity``, ``lr``, ``tokens_per_s``,
``mfu``, ``pairwise_accuracy``, ``reward``, ``kl``, ``oracle_score``, ``pretrain_loss``, ``sft_reward`` …). Readers tolerate a last
line cut short by a killed process; any other malformed line is an error naming the line.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Iterable, Literal, Optional

from orchestrator.handoff.errors import HandoffError

METRICS_FILE = "metrics.jsonl"
Kind = Literal["train", "eval", "final", "reshard"]
KINDS = ("train", "eval", "final", "reshard")


def append_metrics(path: Path | str, *, step: int, kind: Kind, **values: float) -> dict:
    """Append one event; non-finite floats are written as null (JSON has no NaN)."""
    if kind not in KINDS:
        raise HandoffError(f"metrics kind {kind!r}: choose one of {', '.join(KINDS)}")
    record = {"step": step, "time": round(time.time(), 3), "kind": kind,
              **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return record


def read_metrics(path: Path | str) -> list[dict]:
    """All events of a metrics file ([] if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the writer was killed mid-line
                break
            raise HandoffError(f"{path} line {number} is not JSON: {line[:80]!r}") from None
        if not isinstance(record, dict) or "step" not in record or "kind" not in record:
            raise HandoffError(f"{path} line {number} lacks 'step' or 'kind': {line[:80]!r}")
        records.append(record)
    return records


def series(records: Iterable[dict], key: str, *, kind: Optional[str] = None) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the records that have it (and are of ``kind`` if given)."""
    steps, values = [], []
    for record in records:
        if record.get(key) is not None and (kind is None or record.get("kind") == kind):
            steps.append(record["step"])
            values.append(float(record[key]))
    return steps, values


def last_value(records: Iterable[dict], key: str) -> Optional[float]:
    """The most recent value of ``key``, None if no record has it."""
    _, values = series(records, key)
    return values[-1] if values else None
