import json
import shutil

from orchestrator.cli import main
from orchestrator.data.task import TASK_FILES, oracle_score


def small_run(tmp_path, source_path):
    return ["--set", f"data.sources=[{{name: a, path: '{source_path}'}}]", "--set", "data.vocab_size=400",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "pretrain.loop.seq_len=32",
            *[arg for name in TASK_FILES for arg in ("--set", f"data.task.{name}=12")]]


def test_orchestrate_data_writes_the_task_files_and_reports_the_corpus(tmp_path, capsys, paragraphs):
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs(40)) + "not json\n")
    out = tmp_path / "out"
    assert main(["data", "--out", str(out), "--seed", "7", *small_run(tmp_path, source)]) == 0
    printed = capsys.readouterr().out
    assert "vocab 400" in printed and "bad: bad_json 1 (first at a: row 41)" in printed
    for name in TASK_FILES:
        rows = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 12
    summary = json.loads((out / "data.json").read_text())
    assert summary["seed"] == 7 and summary["corpus"]["report"]["bad_rows"] == {"bad_json": 1}
    assert summary["corpus"]["train_tokens"] > 0 and summary["task"]["rm_train"]["k"] == 4
    sft = [json.loads(line) for line in (out / "sft_train.jsonl").read_text().splitlines()]
    expected = sum(oracle_score(r["prompt"], r["response"]) for r in sft) / len(sft)
    assert summary["task"]["sft_train"]["mean_oracle_score"] == round(expected, 4)
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_orchestrate_data_stops_on_a_missing_source_naming_it(tmp_path, capsys):
    missing = tmp_path / "absent.jsonl"
    assert main(["data", "--out", str(tmp_path / "out"), *small_run(tmp_path, missing)]) == 2
    assert f"data source {missing}: no such file" in capsys.readouterr().err


def test_orchestrate_data_keeps_the_tokenizer_already_in_its_folder_and_never_overwrites_another(
        tmp_path, capsys, paragraphs, tokenizer_dir):
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs(40)))
    out = tmp_path / "out"
    shutil.copytree(tokenizer_dir, out / "tokenizer")        # as `orchestrate import` leaves it
    before = (out / "tokenizer" / "tokenizer.json").read_bytes()
    own = ["--set", f"data.tokenizer={out / 'tokenizer'}"]
    assert main(["data", "--out", str(out), *small_run(tmp_path, source), *own]) == 0
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == before
    capsys.readouterr()
    trained = small_run(tmp_path, source) + ["--set", "data.vocab_size=300"]   # a different BPE than the one there
    assert main(["data", "--out", str(out), *trained]) == 2
    assert f"{out / 'tokenizer'} holds another tokenizer" in capsys.readouterr().err
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == before


def test_orchestrate_data_writes_your_data_as_the_phases_files_and_the_task_only_for_the_rest(tmp_path, capsys,
                                                                                              paragraphs):
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs(40)))
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"q": f"Q{i}?", "hi": "a b c", "lo": "a"} for i in range(10)] + \
           [{"q": f"Q{i}?", "hi": "a", "lo": "b"} for i in range(10)] + [{"q": "Q0?", "hi": "x"}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    own = ["--set", f"data.reward={{path: '{pairs}', format: pairwise, prompt_field: q, chosen_field: hi, "
                    f"rejected_field: lo, eval_fraction: 0.2}}", "--set", "reward.candidates=file",
           "--set", "data.template='Q: {prompt} => {response}'"]
    out = tmp_path / "out"
    assert main(["data", "--out", str(out), *small_run(tmp_path, source), *own]) == 0
    printed = capsys.readouterr().out
    assert "data.reward: 8 train, 2 eval (eval_fraction 0.2)" in printed
    assert "missing_field 1 (first at pairs.jsonl:21)" in printed
    train = [json.loads(line) for line in (out / "rm_train.jsonl").read_text().splitlines()]
    assert {tuple(r["responses"]) for r in train} == {("a b c", "a", "b")}   # a b c > a > b: one 3-way ranking
    summary = json.loads((out / "data.json").read_text())
    assert summary["own_data"]["reward"]["pairwise"]["merged_prompts"] == 10
    assert summary["task"]["rm_train"]["examples"] == 8 and summary["task"]["rm_eval"]["pairs"] == 6
    assert "mean_oracle_score" not in summary["task"]["sft_train"]          # no labeller with your own data
    assert len((out / "sft_train.jsonl").read_text().splitlines()) == 12     # the shipped task for SFT and PPO
