import json

import pytest

from orchestrator.data.curation import contamination
from orchestrator.data.report import DataError


def eval_items(paragraphs: list[str]) -> list[contamination.EvalSet]:
    return [contamination.EvalSet(name="bench.jsonl", texts=paragraphs)]


def plant(text: str, passage: str, *, words: int, start: int = 3) -> str:
    """``text`` with ``words`` consecutive (normalised) words of ``passage`` inserted after its third word."""
    inserted = " ".join(contamination.words(passage)[start:start + words])
    head, tail = text.split()[:3], text.split()[3:]
    return " ".join(head + [inserted] + tail)


def test_documents_with_a_planted_13_gram_are_flagged_and_a_clean_set_is_not(clean_paragraphs):
    bench, clean = clean_paragraphs[:50], clean_paragraphs[100:400]
    index = contamination.build_index(eval_items(bench), n=13)
    leaked = [plant(clean[i], bench[i % 50], words=13) for i in range(60)]
    found = contamination.overlap_batch(leaked + clean, index=index)
    assert all(count >= 1 for count in found["overlaps"][:60])
    assert found["overlaps"][60:] == [0] * len(clean)
    assert found["eval_sets"][:60] == ["0"] * 60
    assert found["first_ngram"][0] in set(contamination.ngrams(bench[0], n=13))


def test_twelve_shared_words_are_not_a_13_gram_collision(clean_paragraphs):
    bench, clean = clean_paragraphs[:20], clean_paragraphs[100:120]
    index = contamination.build_index(eval_items(bench), n=13)
    near_miss = [plant(clean[i], bench[i], words=12) for i in range(20)]
    assert contamination.overlap_batch(near_miss, index=index)["overlaps"] == [0] * 20


def test_short_eval_texts_are_counted_not_checked():
    index = contamination.build_index([contamination.EvalSet(name="e", texts=["too short", "one two three"])], n=3)
    assert index.stats["e"] == {"texts": 2, "ngrams": 1, "too_short": 1}


def test_eval_files_yield_every_string_field_and_list_item(tmp_path):
    path = tmp_path / "rm_eval.jsonl"
    path.write_text(json.dumps({"prompt": "p one", "responses": ["r1", "r2"], "scores": [1, 0]}) + "\n\n")
    assert contamination.read_eval_texts(path) == ["p one", "r1", "r2"]
    (tmp_path / "e.txt").write_text("first para\n\nsecond para\n")
    assert contamination.read_eval_texts(tmp_path / "e.txt") == ["first para", "second para\n"]
    with pytest.raises(DataError, match="not found"):
        contamination.read_eval_texts(tmp_path / "absent.jsonl")
