"""Pretraining data: sources → [curation] → tokenizer → held-out split → packed blocks → a resumable mixture.

    data = build_pretrain_data(config.data, seq_len=128, seed=config.seed)
    batch = data.train_batch(position=p, micro_batch=16, dp_rank=r, dp_size=d)
    # batch["input_ids"], batch["labels"]: (16, 128) int64; labels are already shifted:
    # labels[b, t] is the target of position t (the next token), -100 where there is none.

``position`` counts blocks consumed by all data-parallel ranks together before this micro-batch;
rank r takes the micro_batch blocks starting at position + r · micro_batch, and the caller then
advances position by micro_batch · dp_size. Storing position in the checkpoint is all a resume
needs to get exactly the same next batch (the order depends only on the seed).

The held-out split is by document (``eval_fraction`` of each source's documents, chosen by
``split_seed``), so no evaluation text is ever trained on. With ``data.curation`` stages on
(``orchestrator/data/curation``), the quality filter and dedup run before the split, the
contamination check after it, and the tokenizer learns the curated documents.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import datasets
import numpy as np
import torch

from orchestrator.config.run import DataConfig
from orchestrator.data.cache import hash_of
from orchestrator.data.task import make_prompt
from orchestrator.data.task_words import PROMPT_TEMPLATES, TOPICS
from orchestrator.data.corpus import SourceDocuments, load_source
from orchestrator.data.mixture import MixtureSchedule
from orchestrator.data.packing import Blocks, TokenStream, ensure_stream
from orchestrator.data.report import DataError, DataReport, combine
from orchestrator.data.tokenizer import (TokenizerInfo, ensure_trained_tokenizer, iterate_texts, load_tokenizer,
                                         tokenizer_info)

if TYPE_CHECKING:
    from orchestrator.data.curation.pipeline import Curation


@dataclass(frozen=True)
class SourceBlocks:
    """One source after packing: its train and eval blocks and its row report."""

    name: str
    weight: float
    """Normalised mixture weight."""
    train: Blocks
    eval: Blocks
    train_stream: TokenStream
    eval_stream: TokenStream
    report: DataReport


def prepare_tokenizer(data: DataConfig, *, sources: list[SourceDocuments] | None = None) -> TokenizerInfo:
    """Train (or find in the cache) the corpus BPE, or read ``data.tokenizer`` as a local folder."""
    if data.tokenizer != "train":
        return tokenizer_info(data.tokenizer)
    cache_dir = Path(data.cache_dir).resolve()
    sources = sources if sources is not None else [load_source(s, cache_dir=cache_dir) for s in data.sources]
    extra = task_vocabulary_texts(repeats=data.tokenizer_task_repeats)
    texts = itertools.chain(iterate_texts([s.documents for s in sources]), [extra] if extra else [])
    fingerprints = [s.fingerprint for s in sources] + ([hash_of(extra)] if extra else [])
    path = ensure_trained_tokenizer(texts=texts, n_texts=sum(len(s.documents) for s in sources) + len(extra),
                                    corpus_fingerprints=fingerprints, vocab_size=data.vocab_size, cache_dir=cache_dir)
    return tokenizer_info(path)


def task_vocabulary_texts(*, repeats: int) -> list[str]:
    """Lines of every task topic's words and prompts for the BPE trainer, ``repeats`` times.

    All topics, whatever ``data.task`` selects, so one tokenizer serves every task setting."""
    if repeats <= 0:
        return []
    lines = [" " + " ".join(words) for words in TOPICS.values()]   # " word", as responses have it
    lines += [make_prompt(topic=topic, count=6, template=t) for topic in TOPICS for t in range(len(PROMPT_TEMPLATES))]
    return lines * repeats


def split_documents(documents: datasets.Dataset, *, eval_fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) documents: round(eval_fraction · n), at least 1 when n ≥ 2 and eval_fraction > 0."""
    n = len(documents)
    n_eval = 0 if eval_fraction == 0 or n < 2 else max(1, round(eval_fraction * n))
    if n_eval == 0:
        return documents, documents.select([])
    parts = documents.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def pack_source(source: SourceDocuments, *, weight: float, data: DataConfig, tokenizer, info: TokenizerInfo,
                seq_len: int, split: tuple[datasets.Dataset, datasets.Dataset] | None = None) -> SourceBlocks:
    """Tokenize and pack one source; ``split`` is its (train, eval) documents when curation made them."""
    train_docs, eval_docs = split or split_documents(source.documents, eval_fraction=data.eval_fraction,
                                                     seed=data.split_seed)
    streams = {}
    for split, docs in (("train", train_docs), ("eval", eval_docs)):
        key = {"source": source.fingerprint, "tokenizer": info.tokenizer_hash, "split": split,
               "eval_fraction": data.eval_fraction, "split_seed": data.split_seed}
        streams[split] = ensure_stream(docs, tokenizer=tokenizer, eos_id=info.eos_id, vocab_size=info.vocab_size,
                                       key=key, cache_dir=Path(data.cache_dir).resolve())
    return SourceBlocks(name=source.name, weight=weight, report=source.report,
                        train=Blocks(tokens=streams["train"].tokens(), seq_len=seq_len),
                        eval=Blocks(tokens=streams["eval"].tokens(), seq_len=seq_len),
                        train_stream=streams["train"], eval_stream=streams["eval"])


def build_pretrain_data(data: DataConfig, *, seq_len: int, seed: int) -> "PretrainData":
    """Everything from the config: read, check, tokenize (training the BPE if asked), split, pack."""
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    cache_dir = Path(data.cache_dir).resolve()
    documents = [load_source(s, cache_dir=cache_dir) for s in data.sources]
    curation, splits = None, [None] * len(documents)
    if data.curation.enabled:  # GPT-3's quality filter, dedup and contamination check (data/curation)
        from orchestrator.data.curation.pipeline import curate

        curation = curate(documents, data=data, seed=seed, split=partial(
            split_documents, eval_fraction=data.eval_fraction, seed=data.split_seed))
        documents = [c.documents() for c in curation.sources]
        splits = [(c.train, c.eval) for c in curation.sources]
    info = prepare_tokenizer(data, sources=documents)
    tokenizer = load_tokenizer(info.path)
    total = sum(s.weight for s in data.sources)
    sources = [pack_source(d, weight=s.weight / total, data=data, tokenizer=tokenizer, info=info, seq_len=seq_len,
                           split=split) for d, s, split in zip(documents, data.sources, splits)]
    return PretrainData(sources=sources, tokenizer=info, seq_len=seq_len, seed=seed, split_seed=data.split_seed,
                        eval_fraction=data.eval_fraction, curation=curation)


class PretrainData:
    """Packed blocks of every source, a seeded training order, and a fixed evaluation order."""

    def __init__(self, *, sources: list[SourceBlocks], tokenizer: TokenizerInfo, seq_len: int, seed: int,
                 split_seed: int, eval_fraction: float = 0.0, curation: "Curation | None" = None) -> None:
        self.sources = sources
        self.curation = curation
        """What the curation stages kept and dropped (``data.curation``); None when they are off."""
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.seed = seed
        weights = [s.weight for s in sources]
        self.train_order = MixtureSchedule(sizes=[len(s.train) for s in sources], weights=weights, seed=seed)
        self.eval_order = MixtureSchedule(sizes=[len(s.eval) for s in sources], weights=weights, seed=split_seed)
        if self.train_order.empty:
            raise DataError(f"no training block: the sources hold {self.train_tokens} tokens for seq_len {seq_len}")
        if eval_fraction > 0 and self.eval_order.empty:
            raise DataError("no evaluation block: every source has fewer than 2 documents; "
                            "add documents or set data.eval_fraction=0")
        self.report = combine((s.report for s in sources), source="pretrain")

    @property
    def train_tokens(self) -> int:
        return sum(s.train_stream.n_tokens for s in self.sources)

    @property
    def eval_tokens(self) -> int:
        return sum(s.eval_stream.n_tokens for s in self.sources)

    def blocks(self, *, order: MixtureSchedule, start: int, count: int, split: str) -> dict[str, torch.Tensor]:
        """The ``count`` blocks at positions start … of ``order`` as a batch (see the module doc)."""
        source_ids, block_ids = order.take(start=start, count=count)
        input_ids = np.empty((count, self.seq_len), dtype=np.int64)  # (B, T)
        labels = np.empty((count, self.seq_len), dtype=np.int64)  # (B, T), shifted targets
        for source in np.unique(source_ids):
            rows = np.flatnonzero(source_ids == source)
            blocks = getattr(self.sources[source], split)
            input_ids[rows], labels[rows] = blocks.gather(block_ids[rows], pad_id=self.tokenizer.pad_id)
        return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}

    def train_batch(self, *, position: int, micro_batch: int, dp_rank: int = 0, dp_size: int = 1) -> dict[str, torch.Tensor]:
        """This rank's micro-batch at stream ``position`` (blocks consumed by all ranks so far)."""
        _check_rank(micro_batch=micro_batch, dp_rank=dp_rank, dp_size=dp_size)
        return self.blocks(order=self.train_order, start=position + dp_rank * micro_batch, count=micro_batch,
                           split="train")

    def iterate_train(self, *, position: int, micro_batch: int, dp_rank: int = 0,
                      dp_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Endless micro-batches from ``position`` on (e.g. for DeepSpeed's pipeline engine)."""
        while True:
            yield self.train_batch(position=position, micro_batch=micro_batch, dp_rank=dp_rank, dp_size=dp_size)
            position += micro_batch * dp_size

    def eval_batches(self, *, micro_batch: int, max_batches: int, dp_rank: int = 0,
                     dp_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Up to ``max_batches`` micro-batches of the held-out blocks, the same on every call.

        Every rank gets the same number of batches (whole global batches of one eval pass).
        """
        _check_rank(micro_batch=micro_batch, dp_rank=dp_rank, dp_size=dp_size)
        if self.eval_order.empty:
            return
        available = self.eval_order.epoch_length(0) // (micro_batch * dp_size)
        for step in range(min(max_batches, available)):
            start = step * micro_batch * dp_size + dp_rank * micro_batch
            yield self.blocks(order=self.eval_order, start=start, count=micro_batch, split="eval")

    def summary(self) -> dict:
        """Token and block counts per source, for the log and the manifest."""
        return {"seq_len": self.seq_len, "seed": self.seed, "tokenizer": self.tokenizer.to_dict(),
                "train_tokens": self.train_tokens, "eval_tokens": self.eval_tokens,
                "sources": [{"name": s.name, "weight": s.weight,
                             "train_documents": s.train_stream.n_documents, "train_tokens": s.train_stream.n_tokens,
                             "train_blocks": len(s.train), "eval_documents": s.eval_stream.n_documents,
                             "eval_tokens": s.eval_stream.n_tokens, "eval_blocks": len(s.eval)}
                            for s in self.sources],
                "report": self.report.to_dict(),
                **({"curation": self.curation.counts} if self.curation is not None else {})}


def _check_rank(*, micro_batch: int, dp_rank: int, dp_size: int) -> None:
    if micro_batch < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size:
        raise ValueError(f"micro_batch={micro_batch}, dp_rank={dp_rank}, dp_size={dp_size}: "
                         "need micro_batch >= 1 and 0 <= dp_rank < dp_size")
