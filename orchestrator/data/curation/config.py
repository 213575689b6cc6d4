"""The recipe's ``data.curation`` section: GPT-3's three data-preparation stages, each off unless named.

    data:
      curation:
        quality: {reference: embedded, alpha: 9}
        dedup: {threshold: 0.7}
        contamination: {ngram: 13, eval_files: [evals/lambada.jsonl], action: drop}

Plain dataclasses (no heavy imports), read by ``orchestrator.config.run.DataConfig``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass(frozen=True)
class QualityConfig:
    """Keep a raw document when ``np.random.pareto(alpha) > 1 − score`` (Brown et al. 2020, Appendix A)."""

    reference: str = "embedded"
    """The high-quality corpus the classifier learns as positives: a file, folder or glob (read as a
    source with ``text_field``), or ``embedded`` / ``embedded:NAME``. GPT-3: WebText, Wikipedia, books.
    The classifier learns from its paragraphs of 8 words or more, so long pages and short raw
    documents are compared unit for unit."""
    alpha: float = 9.0
    """Pareto shape α of the keep rule; larger keeps fewer low-score documents (GPT-3: 9)."""
    sources: Optional[list[str]] = None
    """Names of the sources filtered (and used as the classifier's negatives); None: every source
    whose path is not ``reference`` (GPT-3 filtered Common Crawl only)."""
    text_field: str = "text"
    """The text field of ``reference`` when it is JSONL or parquet."""
    n_features: int = 1 << 18
    """Hashed feature dimension of the word 2-3-gram features (scikit-learn ``HashingVectorizer``)."""
    max_train_documents: int = 20000
    """Documents per class the classifier is fitted on (a seeded sample when there are more)."""
    regularization: float = 10.0
    """Inverse L2 strength ``C`` of the logistic regression."""
    folds: int = 2
    """1: GPT-3's way, score the raw documents the classifier was fitted on; k > 1: score each with
    the classifier fitted on the other folds, so a small raw source's good documents are not
    memorised as negatives."""

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"quality.alpha={self.alpha} must be > 0 (GPT-3 used 9)")
        if self.folds < 1:
            raise ValueError(f"quality.folds={self.folds} must be >= 1 (1: GPT-3's in-sample scores)")
        if self.max_train_documents < 1 or self.n_features < 16:
            raise ValueError(f"quality.max_train_documents={self.max_train_documents} must be >= 1 and "
                             f"quality.n_features={self.n_features} >= 16")


@dataclass(frozen=True)
class DedupConfig:
    """Fuzzy deduplication with MinHash LSH (datasketch), within and across sources."""

    threshold: float = 0.7
    """Two documents are duplicates when their MinHash-estimated Jaccard similarity is at least this.
    Replacing 10% of a text's words leaves J ≈ 0.9/1.1 = 0.82 of its word set (0.72-0.90 measured on
    the embedded paragraphs): 0.7 finds such edits, 0.8 misses about half of the 10% ones."""
    num_perm: int = 256
    """MinHash permutations per document; the estimate's standard error is sqrt(J(1 − J)/num_perm)."""
    bands: int = 32
    """LSH bands (num_perm / bands rows each); a pair becomes a candidate with probability
    1 − (1 − J^rows)^bands, then is confirmed against ``threshold``. 32 × 8 makes 99.7% of J = 0.8 pairs
    and 85% of J = 0.7 pairs candidates."""
    ngram: int = 1
    """Words per shingle. GPT-3 hashed the classifier's word features (1); 5 is common for web text
    but then a 10% word edit already drops the Jaccard to about 0.4."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"dedup.threshold={self.threshold} must be in (0, 1]")
        if self.bands < 1 or self.num_perm % self.bands:
            raise ValueError(f"dedup.num_perm={self.num_perm} must be a multiple of dedup.bands={self.bands}")
        if self.ngram < 1:
            raise ValueError(f"dedup.ngram={self.ngram} must be >= 1")


@dataclass(frozen=True)
class ContaminationConfig:
    """Training documents sharing an n-gram with an evaluation set (Brown et al. 2020, Appendix C)."""

    ngram: int = 13
    """Words per n-gram (lower-cased, punctuation dropped); GPT-3: 13."""
    eval_files: list[str] = field(default_factory=list)
    """Evaluation files to check against besides the run's own: .jsonl/.json (every string field of a
    row is a text), .parquet (every string column) or .txt (one text per paragraph)."""
    action: Literal["drop", "flag"] = "drop"
    """``drop``: overlapping training documents leave the corpus; ``flag``: they stay, listed."""
    held_out: bool = True
    """Also check against the held-out split of every source."""
    task_eval: bool = True
    """Also check against the SFT / RM / PPO eval files: ``data.task_dir``'s, or the generated task's."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"contamination.ngram={self.ngram} must be >= 1 (GPT-3: 13)")


@dataclass(frozen=True)
class CurationConfig:
    """GPT-3's data preparation before the mixture: quality → dedup → held-out split → contamination."""

    quality: Optional[QualityConfig] = None
    """Classifier quality filter; absent: off."""
    dedup: Optional[DedupConfig] = None
    """MinHash LSH fuzzy deduplication; absent: off."""
    contamination: Optional[ContaminationConfig] = None
    """n-gram overlap with the evaluation sets; absent: off."""
    num_proc: int = 1
    """Processes for the per-document ``datasets.map`` passes (features, signatures, n-grams)."""

    def __post_init__(self) -> None:
        if self.num_proc < 1:
            raise ValueError(f"curation.num_proc={self.num_proc} must be >= 1")

    @property
    def enabled(self) -> bool:
        return any(stage is not None for stage in (self.quality, self.dedup, self.contamination))
