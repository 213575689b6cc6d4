import dataclasses

import numpy as np
import pytest
import torch

from orchestrator.config.run import load_run_config
from orchestrator.data.mixture import MixtureSchedule, shuffled_positions
from orchestrator.data.pretrain import build_pretrain_data
from orchestrator.data.report import DataError

SEQ = 16


def test_batches_are_shifted_next_token_pairs(two_sources):
    data = build_pretrain_data(two_sources, seq_len=SEQ, seed=0)
    batch = data.train_batch(position=0, micro_batch=4)
    assert batch["input_ids"].shape == batch["labels"].shape == (4, SEQ)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    assert data.tokenizer.vocab_size <= 400 and data.report.rows_kept == 100


def test_the_order_is_fixed_by_the_seed(two_sources):
    def first_batches(seed):
        data = build_pretrain_data(two_sources, seq_len=SEQ, seed=seed)
        return torch.cat([data.train_batch(position=p, micro_batch=8)["input_ids"] for p in (0, 8, 16)])

    assert torch.equal(first_batches(1), first_batches(1))
    assert not torch.equal(first_batches(1), first_batches(2))


def test_resuming_at_a_position_gives_the_same_next_batch(two_sources):
    data = build_pretrain_data(two_sources, seq_len=SEQ, seed=5)
    epoch = data.train_order.epoch_length(0)
    stream = data.iterate_train(position=0, micro_batch=6, dp_rank=1, dp_size=2)
    seen = [next(stream) for _ in range(epoch // 12 + 3)]  # runs past the end of the first epoch
    resumed = build_pretrain_data(two_sources, seq_len=SEQ, seed=5)  # a new process after a restart
    position = (len(seen) - 1) * 12
    again = resumed.train_batch(position=position, micro_batch=6, dp_rank=1, dp_size=2)
    assert torch.equal(again["input_ids"], seen[-1]["input_ids"]) and torch.equal(again["labels"], seen[-1]["labels"])


def test_data_parallel_ranks_take_disjoint_slices_of_one_global_batch(two_sources):
    data = build_pretrain_data(two_sources, seq_len=SEQ, seed=0)
    whole = data.train_batch(position=24, micro_batch=8)
    ranks = [data.train_batch(position=24, micro_batch=4, dp_rank=r, dp_size=2) for r in (0, 1)]
    assert torch.equal(torch.cat([r["input_ids"] for r in ranks]), whole["input_ids"])


def test_mixture_follows_its_weights():
    schedule = MixtureSchedule(sizes=[3000, 500, 200], weights=[0.6, 0.3, 0.1], seed=0)
    sources, _ = schedule.take(start=0, count=6000)
    shares = np.bincount(sources, minlength=3) / 6000
    assert shares == pytest.approx([0.6, 0.3, 0.1], abs=0.02)


def test_each_epoch_uses_every_block_of_every_source():
    schedule = MixtureSchedule(sizes=[50, 20], weights=[0.5, 0.5], seed=0)
    sources, blocks = schedule.epoch(1)
    for source, n in enumerate((50, 20)):
        assert set(blocks[sources == source].tolist()) == set(range(n))


def test_eval_documents_are_held_out_and_evaluation_repeats(two_sources):
    data = build_pretrain_data(two_sources, seq_len=SEQ, seed=0)
    for source in data.sources:
        assert source.eval_stream.n_documents > 0
        assert source.train_stream.n_documents + source.eval_stream.n_documents in (60, 40)
        assert source.train_stream.n_tokens + source.eval_stream.n_tokens > 0
    first = list(data.eval_batches(micro_batch=2, max_batches=3))
    second = list(data.eval_batches(micro_batch=2, max_batches=3))
    assert len(first) == 3 and all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, second))


def test_without_documents_to_hold_out_there_is_a_clear_error(two_sources, tmp_path):
    one_doc = tmp_path / "one.jsonl"
    one_doc.write_text('{"text": "a single document that is long enough to make a few blocks of text"}\n')
    source = dataclasses.replace(two_sources.sources[0], path=str(one_doc))
    with pytest.raises(DataError, match="no evaluation block.*data.eval_fraction=0"):
        build_pretrain_data(dataclasses.replace(two_sources, sources=[source]), seq_len=SEQ, seed=0)


def test_shuffled_positions_are_epoch_permutations_and_resumable():
    first = shuffled_positions(10, seed=3, start=0, count=30)
    assert sorted(first[:10].tolist()) == list(range(10)) and not np.array_equal(first[:10], first[10:20])
    assert np.array_equal(shuffled_positions(10, seed=3, start=17, count=5), first[17:22])


def test_gpt3_mix_recipe_loads_and_builds_five_weighted_sources(tmp_path):
    config = load_run_config("recipes/gpt3-mix.yaml", [f"data.cache_dir={tmp_path}"])
    data = build_pretrain_data(config.data, seq_len=128, seed=config.seed)
    assert [s.name for s in data.sources] == ["common_crawl", "webtext2", "books1", "books2", "wikipedia"]
    assert [round(s.weight, 3) for s in data.sources] == [0.594, 0.218, 0.079, 0.079, 0.030]
    assert data.train_tokens > 1_000_000 and data.report.bad_rows == {}
    sources, _ = data.train_order.take(start=0, count=4000)
    assert np.bincount(sources, minlength=5) / 4000 == pytest.approx([s.weight for s in data.sources], abs=0.02)
