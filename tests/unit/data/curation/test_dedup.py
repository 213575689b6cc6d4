import numpy as np

from orchestrator.data.curation import dedup, planted


def edited_fraction(original: str, edited: str) -> float:
    a, b = original.split(), edited.split()
    assert len(a) == len(b)
    return sum(x != y for x, y in zip(a, b)) / len(a)


def test_planted_near_duplicates_replace_the_share_of_words_asked(clean_paragraphs, rng):
    vocabulary = planted.vocabulary_of(clean_paragraphs)
    for fraction in (0.02, 0.05, 0.1):
        for text in clean_paragraphs[:20]:
            edited = edited_fraction(text, planted.near_duplicate(text, fraction=fraction, rng=rng,
                                                                  vocabulary=vocabulary))
            assert fraction - 1 / len(text.split()) < edited <= fraction


def test_near_duplicates_up_to_ten_percent_edited_are_found_with_precision_and_recall_above_095(clean_paragraphs,
                                                                                                 rng):
    bases = clean_paragraphs[:300]
    vocabulary = planted.vocabulary_of(clean_paragraphs)
    fractions = np.linspace(0.01, 0.10, 200)  # ≤ 10% of words replaced, a quarter of them at 8.8-10%
    near = [planted.near_duplicate(bases[i], fraction=f, rng=rng, vocabulary=vocabulary)
            for i, f in enumerate(fractions)]
    exact = [bases[i] for i in range(200, 230)]
    texts = bases + near + exact
    signature = dedup.signatures(texts, num_perm=256, ngram=1)
    found = dedup.find_duplicates(signature, threshold=0.7, bands=32)
    planted_ids = set(range(300, 530))
    dropped = set(np.flatnonzero(~found.keep).tolist())
    true_positives = len(dropped & planted_ids)
    assert true_positives / len(planted_ids) >= 0.95 and true_positives / len(dropped) >= 0.95
    assert set(range(500, 530)) <= dropped  # every exact copy
    assert all(found.cluster[300 + i] == i for i in range(200) if 300 + i in dropped)  # kept: the original
    assert np.all(found.keep[:300])  # the first of each cluster is kept


def test_exact_duplicates_are_found_whatever_the_bands(clean_paragraphs):
    texts = clean_paragraphs[:20] + clean_paragraphs[:20]
    for bands in (2, 4, 32):
        found = dedup.find_duplicates(dedup.signatures(texts, num_perm=64, ngram=5), threshold=1.0, bands=bands)
        assert found.keep.tolist() == [True] * 20 + [False] * 20
        assert found.cluster[20:].tolist() == list(range(20))


def test_duplicate_clusters_are_transitive_and_keep_the_earliest_document():
    a = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    b = a.replace("kappa", "lambda")
    c = b.replace("iota", "mu")
    found = dedup.find_duplicates(dedup.signatures([c, b, a], num_perm=256, ngram=1), threshold=0.65, bands=64)
    assert found.cluster.tolist() == [0, 0, 0]


def test_a_text_shorter_than_the_shingle_is_one_shingle():
    assert dedup.shingles("Hello, world!", ngram=5) == {b"hello world"}
    assert dedup.shingles("a b c", ngram=2) == {b"a b", b"b c"}


def test_signatures_are_the_same_in_worker_processes(clean_paragraphs):
    import datasets

    from orchestrator.data.curation.text import map_texts

    documents = datasets.Dataset.from_dict({"text": clean_paragraphs[:40]})
    function = dedup.signature_function(num_perm=64, ngram=1)
    one, two = (map_texts(documents, function, num_proc=n, desc="test", fingerprint=f"t{n}")["signature"]
                for n in (1, 2))
    assert np.array_equal(one, two) and one.shape == (40, 64)
