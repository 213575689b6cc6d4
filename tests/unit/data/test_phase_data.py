"""Your SFT / RM / PPO data: the three forms read alike, bad rows counted, pairs merged only when
they make one order, held-out prompts disjoint, and every unreadable path refused before launch."""
import gzip
import json

import datasets
import pytest

from orchestrator.config.phase_data import PromptDataConfig, RewardDataConfig, SFTDataConfig
from orchestrator.config.run import DataConfig
from orchestrator.data.phase_data import (check_phase_data, load_phase_rows, rankings_from_pairs, MergeCounts,
                                          split_by_prompt, strict_order, task_file)
from orchestrator.data.report import DataError

ROWS = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)]


def jsonl(path, rows, *, gz=False, extra_lines=()):
    text = "".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in extra_lines)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


@pytest.mark.parametrize("form", ["jsonl", "jsonl.gz", "parquet", "disk", "disk_dict"])
def test_every_form_gives_the_same_rows_in_the_phase_fields(form, tmp_path):
    if form.startswith("jsonl"):
        path = jsonl(tmp_path / f"sft.{form}", ROWS, gz=form.endswith("gz"))
    elif form == "parquet":
        path = tmp_path / "sft.parquet"
        datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    else:
        path = tmp_path / "sft"
        dataset = datasets.Dataset.from_list(ROWS)
        (datasets.DatasetDict({"train": dataset}) if form == "disk_dict" else dataset).save_to_disk(str(path))
    spec = SFTDataConfig(path=str(path), prompt_field="question", response_field="answer", eval_fraction=0.2)
    rows = load_phase_rows("sft", spec, seed=0)
    assert sorted(rows.train + rows.eval, key=lambda r: int(r["prompt"][1:])) == \
        [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(20)]
    assert len(rows.eval) == 4


def test_bad_rows_are_counted_per_reason_with_their_line(tmp_path):
    rows = [{"q": "p1", "good": "a", "bad": "b"}, {"q": "p2", "good": "a"}, {"q": "p3", "good": " ", "bad": "b"},
            {"q": "p4", "good": "same", "bad": "same"}, {"q": "p5", "good": 3, "bad": "b"},
            {"q": "p6", "good": "c", "bad": "d"}]
    path = jsonl(tmp_path / "rm.jsonl", rows, extra_lines=["{broken", ""])
    spec = RewardDataConfig(path=str(path), format="pairwise", prompt_field="q", chosen_field="good",
                            rejected_field="bad")
    report = load_phase_rows("reward", spec, seed=0).tallies[0].report()
    assert report.rows_read == 8
    assert report.bad_rows == {"missing_field": 2, "empty_text": 1, "tied_pair": 1, "bad_json": 1, "blank_line": 1}
    assert report.first_bad["missing_field"] == "rm.jsonl:2" and report.first_bad["bad_json"] == "rm.jsonl:7"


def test_a_ranked_file_keeps_its_order_and_refuses_k_outside_2_to_9(tmp_path):
    rows = [{"prompt": f"p{i}", "ranked": ["best", "mid", "worst"]} for i in range(9)] + [{"prompt": "x", "ranked": ["one"]}]
    spec = RewardDataConfig(path=str(jsonl(tmp_path / "rm.jsonl", rows)), responses_field="ranked")
    result = load_phase_rows("reward", spec, seed=0)
    assert result.tallies[0].report().bad_rows == {"bad_k": 1}
    assert all(r["responses"] == ["best", "mid", "worst"] for r in result.train + result.eval)


@pytest.mark.parametrize("pairs, order", [
    ([("a", "b"), ("b", "c")], ["a", "b", "c"]),                     # transitivity completes the order
    ([("a", "b"), ("b", "c"), ("a", "c")], ["a", "b", "c"]),
    ([("b", "c"), ("a", "b"), ("a", "b")], ["a", "b", "c"]),         # a repeated pair
    ([("a", "b"), ("c", "d")], None),                                 # a vs c is never compared
    ([("a", "b"), ("a", "c")], None),                                 # b vs c is never compared
    ([("a", "b"), ("b", "c"), ("c", "a")], None),                     # a cycle
])
def test_pairs_make_one_order_only_when_they_determine_it(pairs, order):
    assert strict_order(pairs) == order


def test_pairs_of_a_prompt_merge_when_consistent_and_stay_pairs_otherwise():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "x", "rejected": "y"},
            {"prompt": "p", "chosen": "b", "rejected": "c"}, {"prompt": "r", "chosen": "1", "rejected": "2"},
            {"prompt": "r", "chosen": "2", "rejected": "1"}]
    counts = MergeCounts()
    merged = rankings_from_pairs(rows, merge=True, counts=counts)
    assert merged == [{"prompt": "p", "responses": ["a", "b", "c"]}, {"prompt": "q", "responses": ["x", "y"]},
                      {"prompt": "r", "responses": ["1", "2"]}, {"prompt": "r", "responses": ["2", "1"]}]
    assert counts.to_dict() == {"pairs": 5, "merged_prompts": 1, "pair_elements": 3, "elements_by_k": {2: 3, 3: 1}}
    unmerged = rankings_from_pairs(rows, merge=False, counts=MergeCounts())
    assert [r["responses"] for r in unmerged if r["prompt"] == "p"] == [["a", "b"], ["b", "c"]]


def test_the_held_out_prompts_are_disjoint_and_fixed_by_the_seed():
    rows = [{"prompt": f"p{i % 10}", "n": i} for i in range(40)]
    train, held = split_by_prompt(rows, fraction=0.2, seed=3)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held})
    assert len({r["prompt"] for r in held}) == 2 and len(train) + len(held) == 40
    assert split_by_prompt(rows, fraction=0.2, seed=3) == (train, held)
    assert split_by_prompt(rows, fraction=0.2, seed=4) != (train, held)


def test_an_eval_file_or_a_datasetdict_test_split_is_the_held_out_set(tmp_path):
    given = jsonl(tmp_path / "eval.jsonl", [{"prompt": "held"}])
    spec = PromptDataConfig(path=str(jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])),
                            eval_path=str(given))
    rows = load_phase_rows("ppo", spec, seed=0)
    assert (rows.train, rows.eval, rows.eval_from) == ([{"prompt": "a"}, {"prompt": "b"}], [{"prompt": "held"}],
                                                       "eval_path")
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "a"}]),
                          "test": datasets.Dataset.from_list([{"prompt": "t"}])}).save_to_disk(str(tmp_path / "d"))
    rows = load_phase_rows("ppo", PromptDataConfig(path=str(tmp_path / "d")), seed=0)
    assert (rows.train, rows.eval, rows.eval_from) == ([{"prompt": "a"}], [{"prompt": "t"}], "split test")


def test_missing_files_and_fields_are_refused_together_naming_the_key(tmp_path):
    path = jsonl(tmp_path / "sft.jsonl", ROWS)
    data = DataConfig(sft=SFTDataConfig(path=str(path)), ppo=PromptDataConfig(path=str(tmp_path / "nope.jsonl")),
                      reward=RewardDataConfig(path=str(jsonl(tmp_path / "x.txt", ROWS))))
    with pytest.raises(DataError) as refused:
        check_phase_data(data)
    message = str(refused.value)
    assert "data.sft.path" in message and "no field 'prompt', 'response'" in message
    assert "set data.sft.prompt_field, data.sft.response_field" in message
    assert "data.ppo.path" in message and "no such file or folder" in message
    assert "data.reward.path" in message and "unsupported file type '.txt'" in message
    check_phase_data(DataConfig(sft=SFTDataConfig(path=str(path), prompt_field="question", response_field="answer")))


def test_a_file_with_no_usable_row_stops_with_the_report(tmp_path):
    spec = SFTDataConfig(path=str(jsonl(tmp_path / "sft.jsonl", [{"prompt": "", "response": "x"}])))
    with pytest.raises(DataError, match="no usable row.*empty_text 1"):
        load_phase_rows("sft", spec, seed=0)


def test_a_phase_reads_task_dir_only_without_its_own_data(tmp_path):
    data = DataConfig(task_dir=str(tmp_path / "task"), sft=SFTDataConfig(path="x.jsonl"))
    assert task_file(data, tmp_path / "run", "sft_eval") == tmp_path / "run" / "sft_eval.jsonl"
    assert task_file(data, tmp_path / "run", "rm_train") == tmp_path / "task" / "rm_train.jsonl"
    assert task_file(DataConfig(), tmp_path / "run", "ppo_eval") == tmp_path / "run" / "ppo_eval.jsonl"
