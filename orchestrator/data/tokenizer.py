"""The tokenizer: a byte-level BPE trained on the corpus and cached, or any local HF tokenizer.

Byte-level BPE as in GPT-2 (Radford et al. 2019, §2.2): the 256 byte values are the base
alphabet, so any text encodes without an unknown token, and merges are learned from the corpus.
The trained tokenizer is saved as a ``PreTrainedTokenizerFast`` folder with ``<|endoftext|>`` as
EOS and ``<|pad|>`` as padding, in ``<cache_dir>/tokenizers/<hash>``, where the hash covers the
corpus files' contents, the vocabulary size and ``TRAINER_VERSION``. Nothing is downloaded.

``TokenizerInfo.tokenizer_hash`` is what manifests record: the sha256 of the tokenizer's own
serialisation (vocabulary, merges, normalisation, special tokens), so two folders holding the
same tokenizer hash the same and any change to it changes the hash.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from orchestrator.data.cache import atomic_directory, hash_of
from orchestrator.data.report import DataError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TRAINER_VERSION = "byte-bpe-1"
"""Bump when the training recipe below changes: it is part of the cache key."""


@dataclass(frozen=True)
class TokenizerInfo:
    """What a phase and its manifest need to know about the tokenizer."""

    path: str
    """A folder ``load_tokenizer`` (or ``AutoTokenizer.from_pretrained``) reads."""
    tokenizer_hash: str
    vocab_size: int
    """Ids in use, special tokens included (``len(tokenizer)``): the model's vocab must be >= this."""
    eos_id: int
    pad_id: int
    """Padding id; equals ``eos_id`` for a tokenizer that has no pad token (e.g. GPT-2's)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def check_fits(self, model_vocab: int) -> None:
        """Refuse a model whose embedding is smaller than the tokenizer's id range."""
        if model_vocab < self.vocab_size:
            raise DataError(f"tokenizer {self.path} has {self.vocab_size} ids but the model's vocab is "
                            f"{model_vocab}: set model.vocab >= {self.vocab_size} or data.vocab_size <= {model_vocab}")


def train_bpe(texts: Iterable[str], *, vocab_size: int, out_dir: Path, n_texts: int | None = None) -> None:
    """Train a byte-level BPE on ``texts`` and save it as a ``PreTrainedTokenizerFast`` folder.

    Deterministic: the same texts in the same order give the same merges (ties in pair counts
    are broken by the pair itself in ``tokenizers``' trainer).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[EOS_TOKEN, PAD_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer, length=n_texts)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                      bos_token=EOS_TOKEN, unk_token=None, clean_up_tokenization_spaces=False)
    wrapped.save_pretrained(str(out_dir))


def load_tokenizer(path: str | Path):
    """A fast tokenizer from a local folder; never downloads (``local_files_only``)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"tokenizer folder {path} not found: set data.tokenizer to a local Hugging Face "
                        "tokenizer folder, or to 'train' to train a byte-level BPE on the corpus")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot load a tokenizer from {path}: {err}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"tokenizer in {path} has no fast (Rust) version; save it with tokenizer.json")
    if tokenizer.eos_token_id is None:
        raise DataError(f"tokenizer in {path} has no EOS token: set eos_token in its tokenizer_config.json")
    return tokenizer


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the serialised tokenizer (model, merges, normaliser) plus its EOS and pad tokens."""
    payload = {"backend": json.loads(tokenizer.backend_tokenizer.to_str()),
               "eos": tokenizer.eos_token, "pad": tokenizer.pad_token or tokenizer.eos_token}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def tokenizer_info(path: str | Path, tokenizer=None) -> TokenizerInfo:
    tokenizer = tokenizer or load_tokenizer(path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TokenizerInfo(path=str(path), tokenizer_hash=tokenizer_hash(tokenizer), vocab_size=len(tokenizer),
                         eos_id=int(tokenizer.eos_token_id), pad_id=int(pad_id))


def trained_tokenizer_dir(*, corpus_fingerprints: list[str], vocab_size: int, cache_dir: Path) -> Path:
    key = hash_of({"corpus": corpus_fingerprints, "vocab_size": vocab_size, "trainer": TRAINER_VERSION})
    return cache_dir / "tokenizers" / key[:24]


def ensure_trained_tokenizer(*, texts: Iterable[str] | None, n_texts: int | None, corpus_fingerprints: list[str],
                             vocab_size: int, cache_dir: Path) -> Path:
    """The cached tokenizer folder for this corpus and vocab size, trained on first use."""
    target = trained_tokenizer_dir(corpus_fingerprints=corpus_fingerprints, vocab_size=vocab_size,
                                   cache_dir=cache_dir)
    if not (target / "tokenizer.json").is_file():
        if texts is None:
            raise DataError(f"no trained tokenizer in {target} and no texts to train one")
        with atomic_directory(target) as tmp:
            train_bpe(texts, vocab_size=vocab_size, out_dir=tmp, n_texts=n_texts)
    return target


def iterate_texts(datasets_: list, *, column: str = "text", batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of texts from several ``datasets.Dataset``s, in order (for ``train_from_iterator``)."""
    for dataset in datasets_:
        for batch in dataset.iter(batch_size=batch_size):
            yield batch[column]
