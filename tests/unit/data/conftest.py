"""Shared fixtures: real English paragraphs from the embedded corpus, and small sources on disk."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pytest

from orchestrator.config.run import DataConfig, SourceConfig
from orchestrator.data.corpus import embedded_files
from orchestrator.data.tokenizer import train_bpe

datasets.disable_progress_bars()


def english_paragraphs(n: int, *, skip: int = 0) -> list[str]:
    """The first n paragraphs (after ``skip``) of the embedded tutorial pages."""
    paragraphs = []
    with gzip.open(embedded_files("tutorial")[0], "rt", encoding="utf-8") as handle:
        for line in handle:
            paragraphs.extend(p for p in json.loads(line)["text"].split("\n\n") if len(p) > 80)
            if len(paragraphs) >= skip + n:
                break
    return paragraphs[skip:skip + n]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    train_bpe(english_paragraphs(300), vocab_size=400, out_dir=out)
    return out


@pytest.fixture
def two_sources(tmp_path) -> DataConfig:
    """Two JSONL sources of 60 and 40 paragraphs, a 400-id BPE, the cache in tmp_path."""
    a = write_jsonl(tmp_path / "a.jsonl", english_paragraphs(60))
    b = write_jsonl(tmp_path / "b.jsonl", english_paragraphs(40, skip=60))
    return DataConfig(sources=[SourceConfig(name="a", path=str(a), weight=0.75),
                               SourceConfig(name="b", path=str(b), weight=0.25)],
                      vocab_size=400, eval_fraction=0.1, cache_dir=str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def paragraphs():
    """``paragraphs(n, skip=0)``: real English paragraphs (test modules cannot import conftest)."""
    return english_paragraphs
