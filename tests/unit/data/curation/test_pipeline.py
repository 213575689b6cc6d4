import gzip
import json
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config.loader import ConfigError
from orchestrator.config.run import load_run_config
from orchestrator.data.curation import pipeline, planted
from orchestrator.data.task import TASK_FILES

REPO = Path(__file__).resolve().parents[4]


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


@pytest.fixture
def small_recipe(tmp_path, clean_paragraphs, rng):
    """A reference source and a raw one with known rows: 0-39 good, 40-49 near copies of reference
    rows, 50-54 exact copies, 55-59 leaked (a 13-gram of the eval file), 60-89 junk."""
    reference, good, bench = clean_paragraphs[:150], clean_paragraphs[150:190], clean_paragraphs[190:195]
    vocabulary = planted.vocabulary_of(clean_paragraphs)
    raw = good + [planted.near_duplicate(reference[i], fraction=0.05, rng=rng, vocabulary=vocabulary)
                  for i in range(10)]
    raw += reference[10:15] + [planted.leaked(clean_paragraphs[200 + i], bench[i], rng=rng) for i in range(5)]
    raw += [planted.random_characters(rng=rng) for _ in range(15)] + [planted.boilerplate(rng=rng) for _ in range(15)]
    ref_path, raw_path = write_jsonl(tmp_path / "ref.jsonl", reference), write_jsonl(tmp_path / "raw.jsonl", raw)
    eval_path = write_jsonl(tmp_path / "bench.jsonl", bench)
    recipe = {"data": {"sources": [{"name": "ref", "path": ref_path}, {"name": "raw", "path": raw_path}],
                       "vocab_size": 400, "tokenizer_task_repeats": 0, "eval_fraction": 0.05,
                       "cache_dir": str(tmp_path / "cache"),
                       "curation": {"quality": {"reference": ref_path, "alpha": 9},
                                    "dedup": {"threshold": 0.7},
                                    "contamination": {"ngram": 13, "eval_files": [eval_path], "action": "drop"}},
                       "task": {name: 12 for name in TASK_FILES}},
              "pretrain": {"loop": {"seq_len": 32}}}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return {"recipe": str(path), "raw": raw_path, "ref": ref_path}


def read_listing(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_orchestrate_data_lists_what_each_stage_dropped_and_counts_it(tmp_path, small_recipe, capsys):
    out = tmp_path / "out"
    assert main(["data", "--out", str(out), "--recipe", small_recipe["recipe"]]) == 0
    assert "curation dedup" in capsys.readouterr().out
    counts = json.loads((out / "data.json").read_text())["corpus"]["curation"]
    duplicates = read_listing(out / "curation" / "duplicates.jsonl")
    quality = read_listing(out / "curation" / "quality.jsonl")
    leaks = read_listing(out / "curation" / "contamination.jsonl")
    assert counts["quality"]["read"] == 90 and counts["quality"]["dropped"]["quality"] == len(quality)
    assert {r["index"] for r in quality if r["index"] >= 60} == set(range(60, 90))  # all the junk
    assert all(r["source"] == small_recipe["raw"] for r in quality)
    raw_dups = {r["index"] for r in duplicates}
    assert set(range(40, 55)) - {r["index"] for r in quality} <= raw_dups <= set(range(40, 55))
    assert all(r["kept"]["source"] == small_recipe["ref"] for r in duplicates)  # the reference's copy is kept
    assert counts["dedup"]["dropped"]["duplicate"] == len(duplicates) == counts["dedup"]["across_sources"]
    leaked_rows = {r["index"] for r in leaks if r["source"] == small_recipe["raw"]}
    survivors = set(range(55, 60)) - {r["index"] for r in quality}
    assert survivors <= leaked_rows and all(r["eval"] for r in leaks)
    assert counts["contamination"]["dropped"]["contamination"] == len(leaks)


def test_a_second_orchestrate_data_reads_the_curation_from_the_cache(tmp_path, small_recipe, monkeypatch):
    assert main(["data", "--out", str(tmp_path / "a"), "--recipe", small_recipe["recipe"]]) == 0

    def no_work(*args, **kwargs):
        raise AssertionError("the curation stages ran again")

    monkeypatch.setattr(pipeline, "run_stages", no_work)
    assert main(["data", "--out", str(tmp_path / "b"), "--recipe", small_recipe["recipe"]]) == 0
    first, second = (json.loads((tmp_path / d / "data.json").read_text())["corpus"] for d in "ab")
    assert first == second
    for name in ("quality", "duplicates", "contamination"):
        assert (tmp_path / "a" / "curation" / f"{name}.jsonl").read_bytes() == \
               (tmp_path / "b" / "curation" / f"{name}.jsonl").read_bytes()
    with pytest.raises(AssertionError, match="ran again"):  # another seed is another corpus
        main(["data", "--out", str(tmp_path / "c"), "--recipe", small_recipe["recipe"], "--seed", "5"])


def test_curation_stages_are_off_unless_named_and_unknown_keys_are_refused():
    assert not load_run_config({}).data.curation.enabled
    config = load_run_config({"data": {"curation": {"dedup": {}}}}).data.curation
    assert config.dedup.threshold == 0.7 and config.quality is None and config.contamination is None
    with pytest.raises(ConfigError, match="unknown key 'data.curation.dedup.treshold'"):
        load_run_config({"data": {"curation": {"dedup": {"treshold": 0.8}}}})
    with pytest.raises(ConfigError, match="action"):
        load_run_config({"data": {"curation": {"contamination": {"action": "delete"}}}})


def test_the_shipped_raw_sample_is_what_the_generator_writes(tmp_path):
    written = planted.write_sample(tmp_path)
    assert written["raw"].read_bytes() == (REPO / "recipes/data/raw-crawl.jsonl.gz").read_bytes()
    assert written["benchmark"].read_bytes() == (REPO / "recipes/data/benchmark.jsonl").read_bytes()
    with gzip.open(written["raw"], "rt") as handle:
        kinds = {json.loads(line)["kind"] for line in handle}
    assert kinds == {"spliced", "near_duplicate", "exact_duplicate", "page_copy", "leaked", "shuffled",
                     "boilerplate", "random_characters"}
