"""Reading the SFT / RM / PPO JSONL files (SPEC §6 formats), every bad row counted.

    sft: {"prompt": str, "response": str}
    rm:  {"prompt": str, "responses": [str, …] best first, 2 ≤ K ≤ 9, "scores": [float, …] optional}
    ppo: {"prompt": str}

An RM row's optional ``scores`` (non-increasing, one per response) mark ties: responses with equal
scores carry no preference and their pair is dropped. Without scores the order is a strict ranking.
Pure Python; tokenizing and tensors are in ``rlhf.py``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestrator.data.report import BadRows, DataError

Kind = Literal["sft", "rm", "ppo"]
FIELDS: dict[str, tuple[str, ...]] = {"sft": ("prompt", "response"), "rm": ("prompt", "responses"), "ppo": ("prompt",)}
MIN_K, MAX_K = 2, 9
"""Responses per RM row (InstructGPT ranked 4 to 9; 2 is one comparison)."""


@dataclass
class TaskRows:
    """The good rows of a task file, the line each came from, and the tally of the bad ones."""

    path: Path
    rows: list[dict]
    lines: list[int]
    tally: BadRows

    def where(self, index: int) -> str:
        return f"{self.path.name}:{self.lines[index]}"


def read_task_file(path: str | Path, *, kind: Kind) -> TaskRows:
    """Every line checked; bad rows are tallied per reason with their first ``file:line``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {kind.upper()} file {path}: {err.strerror or err}; "
                        "`orchestrate data --out DIR` writes the shipped task files") from None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last row
    result = TaskRows(path=path, rows=[], lines=[], tally=BadRows(path.name))
    for number, line in enumerate(lines, start=1):
        result.tally.read += 1
        row, reason = parse_row(line, kind=kind)
        if reason:
            result.tally.add(reason, f"{path.name}:{number}")
        else:
            result.rows.append(row)
            result.lines.append(number)
    return result


def parse_row(line: bytes, *, kind: Kind | None) -> tuple[dict | None, str]:
    """(row, "") or (None, reason) for one line of a task file (any JSON object when ``kind`` is None)."""
    if not line.strip():
        return None, "blank_line"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, "bad_utf8"
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return None, "bad_json"
    if not isinstance(row, dict):
        return None, "bad_json"
    reason = check_row(row, kind=kind) if kind else ""
    return (row, "") if not reason else (None, reason)


def check_row(row: dict, *, kind: Kind) -> str:
    """"" for a usable row, else the reason (a key of ``report.REASONS``)."""
    if any(field not in row for field in FIELDS[kind]) or not isinstance(row["prompt"], str):
        return "missing_field"
    if kind == "sft" and not isinstance(row["response"], str):
        return "missing_field"
    texts = [row["prompt"]] + ([row["response"]] if kind == "sft" else [])
    if kind == "rm":
        responses = row["responses"]
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            return "missing_field"
        texts += responses
    if any(not t.strip() for t in texts):
        return "empty_text"
    return check_ranking(row) if kind == "rm" else ""


def check_ranking(row: dict) -> str:
    k = len(row["responses"])
    if not MIN_K <= k <= MAX_K:
        return "bad_k"
    scores = row.get("scores")
    if scores is None:
        return ""
    numeric = isinstance(scores, list) and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)
    if not numeric or len(scores) != k or any(not math.isfinite(s) for s in scores):
        return "bad_ranking"
    if any(a < b for a, b in zip(scores, scores[1:])):
        return "bad_ranking"  # responses must be listed best first
    return "all_tied" if scores[0] == scores[-1] else ""


def ranking_scores(row: dict) -> list[float]:
    """Higher is better: the row's scores, or K−1, K−2, …, 0 for a strict best-first ranking."""
    if row.get("scores") is not None:
        return [float(s) for s in row["scores"]]
    k = len(row["responses"])
    return [float(k - 1 - i) for i in range(k)]


def preference_pairs(scores: list[float]) -> list[tuple[int, int]]:
    """(winner, loser) index pairs with a strict preference; tied pairs carry none and are dropped.

    ``preference_pairs([1.0, 0.5, 0.5])`` → [(0, 1), (0, 2)]: C(3, 2) = 3 pairs less one tie.
    """
    return [(i, j) if scores[i] > scores[j] else (j, i)
            for i in range(len(scores)) for j in range(i + 1, len(scores)) if scores[i] != scores[j]]
