"""Quality filter: a classifier of "reads like the reference corpus", and GPT-3's keep rule.

Brown et al. 2020, Appendix A: a logistic regression on hashed word features (Spark's Tokenizer and
HashingTF), trained with WebText, Wikipedia and books as positives and raw Common Crawl as
negatives, scored every Common Crawl document, which was kept when

    np.random.pareto(α) > 1 − document_score,   α = 9,

mostly high-scoring documents plus a few others, so the kept set is not one narrow style. The draw
is Lomax(α), so P(keep) = (2 − score)^−α: score 1 → 1, 0.95 → 0.64, 0.9 → 0.42, 0.5 → 0.026.
Here the features are scikit-learn's ``HashingVectorizer`` over word 2- and 3-grams and the
classifier its ``LogisticRegression`` with balanced class weights. Word order is what tells prose
from its words shuffled: with unigrams in the features a shuffled reference paragraph scored
higher (0.90) than an unseen real one (0.72), measured on the embedded corpus. Balanced classes
and no intercept: a text with no feature the classifier has seen (random characters, words in an
order never seen) scores exactly 0.5, kept with probability 1.5^−9 = 2.6%, whatever the two corpora's
sizes; with an intercept those texts scored 0.71 and were kept 15% of the time.
"""
from __future__ import annotations

import numpy as np


def vectorizer(n_features: int):
    """Stateless features: lower-cased word 2-3-grams hashed into ``n_features`` columns, L2-normalised."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=n_features, ngram_range=(2, 3), alternate_sign=False, norm="l2",
                             lowercase=True, token_pattern=r"(?u)\b\w+\b", dtype=np.float32)


def sample(count: int, *, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Positions 0 … count − 1, or ``limit`` of them drawn without replacement (sorted)."""
    if count <= limit:
        return np.arange(count)
    return np.sort(rng.choice(count, size=limit, replace=False))


def fit(positives, negatives, *, regularization: float, seed: int):
    """Logistic regression on sparse feature rows, reference (1) against raw (0)."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    labels = np.r_[np.ones(positives.shape[0]), np.zeros(negatives.shape[0])]
    classifier = LogisticRegression(C=regularization, max_iter=1000, solver="liblinear", class_weight="balanced",
                                    fit_intercept=False, random_state=seed)
    return classifier.fit(sp.vstack([positives, negatives]).tocsr(), labels)


def raw_scores(*, positives: list[str], negatives: list[str], n_features: int, regularization: float,
               max_documents: int, folds: int, seed: int) -> np.ndarray:
    """P(reference-like) of every raw (negative) text.

    ``folds`` = 1 is GPT-3's procedure: fit on every raw document, then score them. With a small raw
    source the fit memorises its good documents as negatives (a held-out prose paragraph scored 0.26
    against 0.76 out of fold, on the embedded corpus); ``folds`` = k > 1 scores each raw document
    with the classifier fitted on the other k − 1 folds (cross-fitting). The reference and each
    fold's training raw documents are capped at ``max_documents`` (a seeded sample)."""
    if not positives or not negatives:
        raise ValueError(f"the quality classifier needs reference and raw documents: got {len(positives)} "
                         f"reference and {len(negatives)} raw; check data.curation.quality.reference and .sources")
    rng = np.random.default_rng(seed)
    features = vectorizer(n_features)
    reference = features.transform([positives[i] for i in sample(len(positives), limit=max_documents, rng=rng)])
    raw = features.transform(negatives)
    fold = rng.permutation(len(negatives)) % folds if folds > 1 else np.zeros(len(negatives), dtype=np.int64)
    scores = np.zeros(len(negatives))
    for held_out in range(folds):
        training = np.flatnonzero(fold != held_out) if folds > 1 else np.arange(len(negatives))
        training = training[sample(len(training), limit=max_documents, rng=rng)]
        classifier = fit(reference, raw[training], regularization=regularization, seed=seed)
        scored = np.flatnonzero(fold == held_out)
        scores[scored] = classifier.predict_proba(raw[scored])[:, 1]
    return scores


def keep_by_pareto(scores: np.ndarray, *, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """GPT-3's rule: keep where ``pareto(alpha) > 1 − score`` (one draw per document, in order)."""
    return rng.pareto(alpha, size=len(scores)) > 1.0 - scores


def keep_probability(score: float, *, alpha: float) -> float:
    """P(pareto(α) > 1 − score) = (2 − score)^−α, the expected keep rate of a document of that score."""
    return float((2.0 - score) ** -alpha)

