"""The curation benchmark's scoring of a dedup result against the planted pairs (no timing)."""
from benchmarks.curation_speed import Planted, recall_precision


def test_a_pair_counts_as_found_when_either_member_is_removed_and_other_removals_are_false():
    corpus = Planted(texts=["a", "b", "c", "a2", "b2"], pairs=[(0, 3), (1, 4)])
    assert recall_precision({3, 1}, corpus) == (1.0, 1.0)
    assert recall_precision({3, 2}, corpus) == (0.5, 0.5)
    assert recall_precision(set(), corpus) == (0.0, 1.0)
