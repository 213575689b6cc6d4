import pytest

from orchestrator.data.report import DataError
from orchestrator.data.taskfiles import ranking_scores, read_task_file

RM_LINES = [
    b'{"prompt": "p", "responses": ["a", "b"]}',                          # good, strict order
    b'{"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 0.5, 0.5]}',  # good, one tie
    b'{"prompt": "p", "responses": ["a"]}',                                # K < 2
    b'{"prompt": "p", "responses": ["a","b","c","d","e","f","g","h","i","j"]}',  # K > 9
    b'{"prompt": "p", "responses": ["a", "b"], "scores": [0.1, 0.9]}',     # not best first
    b'{"prompt": "p", "responses": ["a", "b"], "scores": [1]}',            # one score missing
    b'{"prompt": "p", "responses": ["a", "b"], "scores": [0.5, 0.5]}',     # all tied
    b'{"prompt": "p", "responses": ["a", "  "]}',                          # empty response
    b'{"prompt": "p"}',                                                    # missing field
    b'{"prompt": "p", "responses": "a b"}',                                # wrong type
    b'{"prompt": "\xff\xfe", "responses": ["a", "b"]}',                    # invalid UTF-8
    b'{"prompt": "p", "responses": ["a", "b"',                             # not JSON
    b'["p", "a"]',                                                         # not an object
    b'',                                                                   # blank line
]


def test_every_bad_rm_row_is_counted_under_its_reason(tmp_path):
    path = tmp_path / "rm.jsonl"
    path.write_bytes(b"\n".join(RM_LINES) + b"\n")
    read = read_task_file(path, kind="rm")
    report = read.tally.report()
    assert len(read.rows) == 2 and read.lines == [1, 2]
    assert report.bad_rows == {"bad_k": 2, "bad_ranking": 2, "all_tied": 1, "empty_text": 1,
                               "missing_field": 2, "bad_utf8": 1, "bad_json": 2, "blank_line": 1}
    assert report.rows_read == len(RM_LINES) and report.rows_kept == 2
    assert report.first_bad["bad_k"] == "rm.jsonl:3"


def test_sft_and_ppo_rows_need_their_fields(tmp_path):
    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n{"prompt": "", "response": "r"}\n'
                   '{"prompt": "p", "response": 3}\n')
    report = read_task_file(sft, kind="sft").tally.report()
    assert report.rows_kept == 1 and report.bad_rows == {"missing_field": 2, "empty_text": 1}
    ppo = tmp_path / "ppo.jsonl"
    ppo.write_text('{"prompt": "p"}\n{"text": "p"}\n')
    assert read_task_file(ppo, kind="ppo").tally.report().bad_rows == {"missing_field": 1}


def test_an_unreadable_task_file_stops_with_its_path(tmp_path):
    missing = tmp_path / "nope" / "sft_train.jsonl"
    with pytest.raises(DataError, match=f"cannot read SFT file {missing}"):
        read_task_file(missing, kind="sft")
    with pytest.raises(DataError, match=f"cannot read RM file {tmp_path}"):
        read_task_file(tmp_path, kind="rm")  # a folder, not a file


def test_ranking_without_scores_is_strict():
    assert ranking_scores({"responses": ["a", "b", "c"]}) == [2.0, 1.0, 0.0]
    assert ranking_scores({"responses": ["a", "b"], "scores": [1, 1]}) == [1.0, 1.0]
