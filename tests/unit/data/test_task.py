import json
import random
import statistics

import pytest

from orchestrator.data.task import (TASK_FILES, Labeller, TaskConfig, make_prompt, oracle_score, parse_prompt,
                                    rank_responses, task_rows, write_task_files)
from orchestrator.data.task_words import TOPICS
from orchestrator.data.taskfiles import preference_pairs


def test_every_word_belongs_to_exactly_one_topic_and_no_word_is_a_topic_name():
    words = [w for ws in TOPICS.values() for w in ws]
    assert len(words) == len(set(words))
    assert not set(words) & {part for name in TOPICS for part in name.split()}


def test_prompt_round_trips_through_parse():
    for topic in TOPICS:
        assert parse_prompt(make_prompt(topic=topic, count=6, template=3)) == (topic, 6)


def test_oracle_scores_the_share_of_distinct_on_topic_words():
    prompt = make_prompt(topic="fruits", count=3)
    assert oracle_score(prompt, "apple pear plum") == 1.0
    assert oracle_score(prompt, "Apple, pear, dog.") == pytest.approx(2 / 3)
    assert oracle_score(prompt, "apple apple apple") == pytest.approx(1 / 3)   # repeats do not pay
    assert oracle_score(prompt, "apple pear") == pytest.approx(2 / 3)          # too short
    assert oracle_score(prompt, "apple pear plum fig") == pytest.approx(3 / 4)  # too long
    assert oracle_score(prompt, "") == 0.0


def test_oracle_refuses_a_prompt_without_topic_and_count():
    with pytest.raises(ValueError, match="names no count and topic"):
        oracle_score("Tell me a story.", "once upon a time")


def test_noisy_labeller_scores_below_clean_one_by_about_the_noise_rate():
    config = TaskConfig(noise_rate=0.3)
    rng = random.Random(0)
    prompts = [make_prompt(topic=rng.choice(config.topics), count=6) for _ in range(400)]
    clean = Labeller(topics=config.topics, noise_rate=0.0)
    noisy = Labeller(topics=config.topics, noise_rate=0.3)
    clean_scores = [oracle_score(p, clean.write(p, rng)) for p in prompts]
    noisy_scores = [oracle_score(p, noisy.write(p, rng)) for p in prompts]
    assert min(clean_scores) == 1.0
    assert statistics.mean(noisy_scores) == pytest.approx(0.7, abs=0.03)


def test_ranking_is_best_first_and_consistent_with_scores():
    prompt = make_prompt(topic="colors", count=4)
    responses = ["red car bus van", "red blue green pink", "red blue dog cat", "tiger lion bear wolf"]
    ranked, scores = rank_responses(prompt, responses)
    assert ranked == ["red blue green pink", "red blue dog cat", "red car bus van", "tiger lion bear wolf"]
    assert scores == [oracle_score(prompt, r) for r in ranked]
    assert scores == sorted(scores, reverse=True)


def test_tied_pairs_carry_no_preference():
    assert preference_pairs([1.0, 0.5, 0.5, 0.0]) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    assert preference_pairs([0.5, 0.5]) == []


def test_task_files_are_deterministic_for_a_seed_and_differ_for_another():
    config = TaskConfig(sft_train=50)
    assert task_rows(config, name="sft_train", k=4, seed=1) == task_rows(config, name="sft_train", k=4, seed=1)
    assert task_rows(config, name="sft_train", k=4, seed=1) != task_rows(config, name="sft_train", k=4, seed=2)


def test_rm_rows_rank_k_candidates_best_first_and_never_all_tied():
    config = TaskConfig(rm_train=200)
    for row in task_rows(config, name="rm_train", k=5, seed=3):
        assert len(row["responses"]) == 5
        assert row["scores"] == [oracle_score(row["prompt"], r) for r in row["responses"]]
        assert row["scores"] == sorted(row["scores"], reverse=True) and row["scores"][0] > row["scores"][-1]


def test_rm_rows_refuse_k_outside_2_to_9():
    with pytest.raises(ValueError, match="k=10"):
        task_rows(TaskConfig(), name="rm_train", k=10, seed=0)


def test_task_options_change_the_task():
    config = TaskConfig(n_topics=2, response_words=3, noise_rate=0.0, sft_train=30)
    for row in task_rows(config, name="sft_train", k=4, seed=0):
        topic, count = parse_prompt(row["prompt"])
        assert topic in ("fruits", "animals") and count == 3
        assert oracle_score(row["prompt"], row["response"]) == 1.0


def test_bad_task_options_are_refused_with_the_range():
    with pytest.raises(ValueError, match=r"response_words=13: must be in 1..12"):
        TaskConfig(response_words=13)
    with pytest.raises(ValueError, match=r"noise_rate=1.5: must be in \[0, 1\]"):
        TaskConfig(noise_rate=1.5)


def test_written_files_have_the_spec_formats(tmp_path):
    config = TaskConfig(sft_train=5, sft_eval=5, rm_train=5, rm_eval=5, ppo_train=5, ppo_eval=5)
    paths = write_task_files(tmp_path, config=config, k=4, seed=0)
    assert sorted(paths) == sorted(TASK_FILES)
    rows = {name: [json.loads(line) for line in path.read_text().splitlines()] for name, path in paths.items()}
    assert set(rows["sft_train"][0]) == {"prompt", "response"}
    assert set(rows["rm_eval"][0]) == {"prompt", "responses", "scores"}
    assert set(rows["ppo_eval"][0]) == {"prompt"}
    assert rows["ppo_train"] != rows["ppo_eval"]
