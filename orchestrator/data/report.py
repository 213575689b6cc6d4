"""Bad rows are counted per reason and reported, never silently dropped (SPEC §6).

A reader tallies into a ``BadRows`` while it reads, then freezes it into a ``DataReport`` that the
phase logs and writes into its manifest.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

REASONS: dict[str, str] = {
    "missing_field": "a required field is missing or not of the right type",
    "empty_text": "the text (or a prompt / response) is empty or only whitespace",
    "bad_utf8": "the bytes are not valid UTF-8 (U+FFFD in a text file counts too)",
    "bad_json": "the line is not a JSON object",
    "blank_line": "a blank line in a JSONL file",
    "bad_k": "an RM row ranks fewer than 2 or more than 9 responses",
    "bad_ranking": "an RM row's scores are not numbers, one per response, best first",
    "all_tied": "every response of an RM row has the same score: no preference pair is left",
    "tied_pair": "a pairwise row's chosen and rejected responses are the same text: no preference",
    "too_long": "the tokenized row is longer than the phase's sequence length",
}
"""Reason → what it means (the README's table is this one)."""


class DataError(ValueError):
    """Data that cannot be used: an unreadable file, a missing field everywhere, no usable row."""


@dataclass(frozen=True)
class DataReport:
    """Rows read from one source or file, rows kept, and refused rows per reason."""

    source: str
    rows_read: int
    rows_kept: int
    bad_rows: dict[str, int] = field(default_factory=dict)
    """reason (a key of ``REASONS``) → rows refused for it."""
    first_bad: dict[str, str] = field(default_factory=dict)
    """reason → where it was first seen (``file:line`` or ``row N``), to find the culprit."""

    @property
    def rows_bad(self) -> int:
        return sum(self.bad_rows.values())

    def to_dict(self) -> dict:
        return {"source": self.source, "rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "bad_rows": dict(self.bad_rows), "first_bad": dict(self.first_bad)}

    def summary(self) -> str:
        """``sft_train: 2000 rows, 1998 kept, 2 bad (too_long 2, first at sft_train.jsonl:17)``."""
        text = f"{self.source}: {self.rows_read} rows, {self.rows_kept} kept, {self.rows_bad} bad"
        if self.bad_rows:
            parts = [f"{reason} {count}, first at {self.first_bad.get(reason, '?')}"
                     for reason, count in sorted(self.bad_rows.items())]
            text += " (" + "; ".join(parts) + ")"
        return text


def combine(reports: Iterable[DataReport], *, source: str) -> DataReport:
    """One report for several sources or files: counts add up, the first location seen is kept."""
    reports = list(reports)
    bad: Counter = Counter()
    first: dict[str, str] = {}
    for report in reports:
        bad.update(report.bad_rows)
        for reason, where in report.first_bad.items():
            first.setdefault(reason, f"{report.source}: {where}")
    return DataReport(source=source, rows_read=sum(r.rows_read for r in reports),
                      rows_kept=sum(r.rows_kept for r in reports), bad_rows=dict(bad), first_bad=first)


class BadRows:
    """A tally of refused rows while a reader runs; ``report()`` freezes it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.read = 0
        self.counts: Counter = Counter()
        self.first: dict[str, str] = {}

    def add(self, reason: str, where: str) -> None:
        if reason not in REASONS:
            raise KeyError(f"unknown bad-row reason {reason!r}: add it to REASONS")
        self.counts[reason] += 1
        self.first.setdefault(reason, where)

    def report(self) -> DataReport:
        bad = sum(self.counts.values())
        return DataReport(source=self.source, rows_read=self.read, rows_kept=self.read - bad,
                          bad_rows=dict(self.counts), first_bad=dict(self.first))
