import numpy as np

from orchestrator.data.curation import planted, quality


def test_the_keep_rule_keeps_at_gpt3s_pareto_rate():
    rng = np.random.default_rng(0)
    for score in (1.0, 0.9, 0.5):
        kept = quality.keep_by_pareto(np.full(20000, score), alpha=9.0, rng=rng).mean()
        assert abs(kept - quality.keep_probability(score, alpha=9.0)) < 0.01
    assert quality.keep_probability(0.9, alpha=9.0) == (1.1 ** -9)


def test_reference_like_documents_are_kept_and_generated_junk_dropped(clean_paragraphs, rng):
    """Reference: 2000 embedded paragraphs. Raw: 100 other paragraphs (reference-like) and 100 each of
    shuffled paragraphs, boilerplate and random characters. GPT-3's α = 9 keeps a document of score
    0.9 with probability 0.42, so only near-certain ones are mostly kept. Measured with these seeds:
    reference-like kept 28% (mean score 0.75), shuffled 7% (0.56), boilerplate 2% (0.006), random
    characters 3% (0.50)."""
    raw_side = set(clean_paragraphs[:200])
    reference = [p for p in planted.paragraphs()[2000:4200] if p not in raw_side][:2000]
    good = clean_paragraphs[:100]
    junk = {"shuffled": [planted.shuffled(t, rng=rng) for t in clean_paragraphs[100:200]],
            "boilerplate": [planted.boilerplate(rng=rng) for _ in range(100)],
            "random_characters": [planted.random_characters(rng=rng) for _ in range(100)]}
    raw = good + [t for texts in junk.values() for t in texts]
    scores = quality.raw_scores(positives=reference, negatives=raw, n_features=1 << 18, regularization=10.0,
                                max_documents=20000, folds=2, seed=0)
    keep = quality.keep_by_pareto(scores, alpha=9.0, rng=np.random.default_rng(0))
    rates = {"reference_like": keep[:100].mean()}
    rates.update({kind: keep[100 * (k + 1):100 * (k + 2)].mean() for k, kind in enumerate(junk)})
    assert rates["reference_like"] >= 0.2
    assert rates["shuffled"] <= 0.1 and rates["boilerplate"] <= 0.04 and rates["random_characters"] <= 0.05
    assert scores[:100].mean() > max(scores[100 * (k + 1):100 * (k + 2)].mean() for k in range(3))
