"""Planted cases for the curation stages: distinct English paragraphs and ways to spoil them."""
from __future__ import annotations

import random

import pytest

from orchestrator.data.curation import planted


def word_set(text: str) -> set[str]:
    return set(text.lower().split())


def distinct_paragraphs(n: int, *, skip: int = 0, max_jaccard: float = 0.5) -> list[str]:
    """n embedded paragraphs (after ``skip``) none of which shares more than ``max_jaccard`` of its
    word set with another: a clean set, so every duplicate found later is one the test planted."""
    chosen, sets = [], []
    for text in planted.paragraphs()[skip:]:
        words = word_set(text)
        if all(len(words & other) / len(words | other) <= max_jaccard for other in sets):
            chosen.append(text)
            sets.append(words)
            if len(chosen) == n:
                return chosen
    raise AssertionError(f"only {len(chosen)} distinct paragraphs")


@pytest.fixture(scope="session")
def clean_paragraphs():
    return distinct_paragraphs(700)


@pytest.fixture
def rng():
    return random.Random(0)
