"""The curation stages' documents/s, and our MinHash dedup beside datatrove's own MinHash pipeline.

    .venv/bin/python -m benchmarks.curation_speed --write BENCHMARKS.md

One planted corpus serves every figure: distinct embedded paragraphs (no two share more than half of
their word sets), near-duplicates of some of them with 1-10% of their words replaced, and exact
copies. Timed in this process, one after the other, on the same documents:

- ours: the quality classifier (fit on 2000 reference paragraphs, cross-fitted scores, Pareto
  rule), MinHash signatures (datasketch), LSH banding + Jaccard confirmation, the 13-gram
  contamination check against 200 of the paragraphs;
- datatrove (``pip install datatrove``, the ``bench`` extra): its four MinHash stages —
  ``MinhashDedupSignature``, ``MinhashDedupBuckets``, ``MinhashDedupCluster``,
  ``MinhashDedupFilter`` — run by hand with rank 0 of world 1 (the buckets stage once per bucket),
  at its defaults (5-word shingles, 14 buckets × 8 hashes) and with our word shingles (1) on the
  same 14 × 8, so the two differ only where the libraries do: datatrove takes any band collision
  as a duplicate, ours confirms the estimated Jaccard against the threshold.

Recall: planted pairs of which a member was removed; precision: removed documents that belong to a
planted pair. Without datatrove installed its rows are skipped with a message.
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, markdown_table, today, write_section
from orchestrator.data.curation import contamination, dedup, planted, quality
from orchestrator.data.curation.text import words

HEADING = "## Curation stages (GPT-3 data preparation) and datatrove's MinHash"


@dataclass(frozen=True)
class Planted:
    texts: list[str]
    pairs: list[tuple[int, int]]
    """(original, copy) positions of every planted duplicate."""


def distinct_paragraphs(pool: list[str], n: int, *, max_jaccard: float = 0.5) -> list[str]:
    chosen, sets = [], []
    for text in pool:
        word_set = set(words(text))
        if all(len(word_set & other) / len(word_set | other) <= max_jaccard for other in sets):
            chosen.append(text)
            sets.append(word_set)
            if len(chosen) == n:
                break
    return chosen


def planted_corpus(*, bases: int, near: int, exact: int, seed: int = 0) -> Planted:
    rng = random.Random(seed)
    pool = planted.paragraphs()
    originals = distinct_paragraphs(pool, bases)
    vocabulary = planted.vocabulary_of(pool[:2000])
    texts, pairs = list(originals), []
    for i, fraction in enumerate(np.linspace(0.01, 0.10, near)):
        pairs.append((i, len(texts)))
        texts.append(planted.near_duplicate(originals[i], fraction=float(fraction), rng=rng, vocabulary=vocabulary))
    for i in range(near, near + exact):
        pairs.append((i, len(texts)))
        texts.append(originals[i])
    return Planted(texts=texts, pairs=pairs)


def recall_precision(removed: set[int], corpus: Planted) -> tuple[float, float]:
    found = sum(1 for a, b in corpus.pairs if a in removed or b in removed)
    members = {d for pair in corpus.pairs for d in pair}
    return found / len(corpus.pairs), (len(removed & members) / len(removed) if removed else 1.0)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


# --- ours ----------------------------------------------------------------------------------------
def our_stages(corpus: Planted, *, reference: list[str], configs: list[tuple[int, int, int]],
               threshold: float) -> tuple[list[list], list[list]]:
    """(stage rows, dedup quality rows); configs are (num_perm, bands, ngram)."""
    n = len(corpus.texts)
    stage_rows, quality_rows = [], []
    scores, seconds = timed(quality.raw_scores, positives=reference, negatives=corpus.texts, n_features=1 << 18,
                            regularization=10.0, max_documents=20000, folds=2, seed=0)
    quality.keep_by_pareto(scores, alpha=9.0, rng=np.random.default_rng(0))
    stage_rows.append(["ours", f"quality (fit on {len(reference)} reference + raw, 2 folds; score; Pareto)", n,
                       f"{seconds:.2f}", f"{n / seconds:,.0f}"])
    for num_perm, bands, ngram in configs:
        label = f"{num_perm} perms, {bands} × {num_perm // bands}, {ngram}-word shingles"
        signature, sig_s = timed(dedup.signatures, corpus.texts, num_perm=num_perm, ngram=ngram)
        found, lsh_s = timed(dedup.find_duplicates, signature, threshold=threshold, bands=bands)
        stage_rows.append(["ours", f"dedup signatures ({label})", n, f"{sig_s:.2f}", f"{n / sig_s:,.0f}"])
        stage_rows.append(["ours", f"dedup LSH + Jaccard ≥ {threshold} ({label})", n, f"{lsh_s:.2f}",
                           f"{n / lsh_s:,.0f}"])
        recall, precision = recall_precision(set(np.flatnonzero(~found.keep).tolist()), corpus)
        quality_rows.append([f"ours, {label}, Jaccard ≥ {threshold}", f"{recall:.3f}", f"{precision:.3f}",
                             f"{n / (sig_s + lsh_s):,.0f}"])
    bench = [contamination.EvalSet(name="bench", texts=corpus.texts[:200])]
    index, index_s = timed(contamination.build_index, bench, n=13)
    hits, check_s = timed(contamination.overlap_batch, corpus.texts, index=index)
    stage_rows.append(["ours", "contamination 13-grams (index 200 texts + check)", n, f"{index_s + check_s:.2f}",
                       f"{n / (index_s + check_s):,.0f}"])
    return stage_rows, quality_rows


# --- datatrove -----------------------------------------------------------------------------------
def datatrove_stages(corpus: Planted, *, ngram: int, buckets: int, hashes_per_bucket: int,
                     work: Path) -> tuple[list[list], list]:
    """datatrove's four MinHash stages on ``corpus``; (stage rows, dedup quality row)."""
    from datatrove.data import Document
    from loguru import logger
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Words(WordTokenizer):  # the same words as ours; datatrove's English default needs NLTK data
        def word_tokenize(self, text):
            return words(text)

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    # its default xxhash hashes str shingles, which xxhash 4.1 refuses ("Strings must be encoded"): sha1, 64 bits
    logger.remove()  # datatrove logs every bucket at INFO
    logger.add(lambda message: print(message, end=""), level="WARNING")
    config = MinhashConfig(n_grams=ngram, num_buckets=buckets, hashes_per_bucket=hashes_per_bucket,
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
    documents = [Document(text=t, id=str(i)) for i, t in enumerate(corpus.texts)]
    folders = {name: str(work / name) for name in ("signatures", "buckets", "remove")}
    n, rows = len(documents), []
    steps = [("signatures", lambda: MinhashDedupSignature(folders["signatures"], config=config,
                                                          language=Words()).run(iter(documents), 0, 1)),
             ("buckets", lambda: [_drain(MinhashDedupBuckets(folders["signatures"], folders["buckets"], config=config)
                                         .run(None, bucket, buckets)) for bucket in range(buckets)]),
             ("cluster", lambda: MinhashDedupCluster(folders["buckets"], folders["remove"], config=config)
              .run(None, 0, 1))]
    label = f"{buckets * hashes_per_bucket} hashes, {buckets} × {hashes_per_bucket}, {ngram}-word shingles"
    for name, step in steps:
        _, seconds = timed(lambda: _drain(step()))
        rows.append(["datatrove", f"{name} ({label})", n, f"{seconds:.2f}", f"{n / seconds:,.0f}"])
    kept, seconds = timed(lambda: [d.id for d in MinhashDedupFilter(folders["remove"]).run(iter(documents), 0, 1)])
    rows.append(["datatrove", f"filter ({label})", n, f"{seconds:.2f}", f"{n / seconds:,.0f}"])
    removed = set(range(n)) - {int(i) for i in kept}
    recall, precision = recall_precision(removed, corpus)
    total = sum(float(r[3]) for r in rows)
    return rows, [f"datatrove, {label}, any band collision", f"{recall:.3f}", f"{precision:.3f}", f"{n / total:,.0f}"]


def _drain(result) -> None:
    if result is not None and hasattr(result, "__iter__") and not isinstance(result, (list, tuple)):
        for _ in result:
            pass


def section(stage_rows: list[list], quality_rows: list[list], *, corpus: Planted, note: str, command: str) -> str:
    info = machine_info()
    exact = sum(1 for a, b in corpus.pairs if corpus.texts[a] == corpus.texts[b])
    return "\n".join([
        HEADING, "",
        f"`{command}` ({today()}; {info.describe()}; other agents' jobs were running on these cores).", "",
        f"{len(corpus.texts)} planted documents: {len(corpus.texts) - len(corpus.pairs)} distinct embedded paragraphs "
        f"(no two share more than half their word sets), {len(corpus.pairs) - exact} near-duplicates with 1-10% of "
        f"their words replaced, {exact} exact copies; one process, "
        "`num_proc` 1. Documents/s of each stage (wall time, single-threaded):", "",
        markdown_table(["library", "stage", "documents", "seconds", "documents/s"], stage_rows), "",
        "Dedup on the planted duplicates (recall: planted pairs with a member removed; precision: removed "
        "documents that belong to a planted pair):", "",
        markdown_table(["dedup", "recall", "precision", "documents/s (all its stages)"], quality_rows), "",
        note, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=int, default=2000, help="distinct paragraphs")
    parser.add_argument("--near", type=int, default=600, help="near-duplicates (1-10%% of words replaced)")
    parser.add_argument("--exact", type=int, default=100, help="exact copies")
    parser.add_argument("--write", type=Path, default=None, help="rewrite this benchmark's section of the file")
    args = parser.parse_args(argv)
    corpus = planted_corpus(bases=args.bases, near=args.near, exact=args.exact)
    originals = set(corpus.texts)
    reference = [p for p in planted.paragraphs() if p not in originals][:2000]
    stage_rows, quality_rows = our_stages(corpus, reference=reference, configs=[(256, 32, 1), (112, 14, 1)],
                                          threshold=0.7)
    try:
        import datatrove  # noqa: F401
    except ImportError:
        note = "datatrove is not installed (`pip install -e '.[bench]'`): its rows are skipped."
        print(note)
    else:
        note = ("datatrove's rows use its own stages on the same documents, with two changes: its signature "
                "stage reads words through a tokenizer that returns ours (its English default needs NLTK's "
                "downloadable data), and it hashes shingles with its sha1 option (its default xxhash passes "
                "str, which xxhash 4.1 refuses: 'Strings must be encoded before hashing').")
        for ngram in (1, 5):
            with tempfile.TemporaryDirectory() as work:
                rows, quality_row = datatrove_stages(corpus, ngram=ngram, buckets=14, hashes_per_bucket=8,
                                                     work=Path(work))
            stage_rows += rows
            quality_rows.append(quality_row)
    command = "python -m benchmarks.curation_speed" + (f" --write {args.write}" if args.write else "")
    text = section(stage_rows, quality_rows, corpus=corpus, note=note, command=command)
    print(text)
    if args.write:
        write_section(args.write, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
