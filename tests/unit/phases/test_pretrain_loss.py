"""``pretrain_loss`` is measured on the same held-out blocks whatever the phase's micro-batch,
data-parallel size or pipeline, and a consolidated state dict measures as its runtime would."""
from types import SimpleNamespace

import pytest
import torch

from orchestrator.phases.pretrain_loss import PretrainLoss, eval_micro_batch


class StubBlocks:
    """The eval order of 100 blocks; a block is its own position (so the test sees which it got)."""

    eval_order = SimpleNamespace(empty=False, epoch_length=lambda epoch: 100)

    def blocks(self, *, order, start, count, split):
        assert split == "eval"
        ids = torch.arange(start, start + count)[:, None].repeat(1, 3)
        return {"input_ids": ids, "labels": ids}


def measure(blocks=64) -> PretrainLoss:
    loss = PretrainLoss(data_config=None, seq_len=3, seed=0, blocks=blocks)
    loss.data = StubBlocks()
    return loss


def seen(batches) -> list[int]:
    return sorted(int(b["input_ids"][i, 0]) for b in batches for i in range(len(b["input_ids"])))


@pytest.mark.parametrize("micro_batch, dp", [(16, 1), (24, 1), (5, 1), (32, 2), (4, 4), (64, 1)])
def test_every_micro_batch_and_dp_size_reads_the_first_blocks_in_equal_batches(micro_batch, dp):
    ranks = [measure().batches(micro_batch=micro_batch, dp_rank=r, dp_size=dp, pipeline=False) for r in range(dp)]
    assert seen([b for batches in ranks for b in batches]) == list(range(64))
    sizes = {len(b["input_ids"]) for batches in ranks for b in batches}
    assert len(sizes) == 1 and sizes.pop() <= micro_batch


def test_a_pipeline_keeps_its_micro_batch_and_rounds_down_to_whole_global_batches():
    batches = measure().batches(micro_batch=24, dp_rank=0, dp_size=1, pipeline=True)
    assert [len(b["input_ids"]) for b in batches] == [24, 24] and seen(batches) == list(range(48))


def test_fewer_held_out_blocks_than_asked_uses_them_all():
    assert seen(measure(blocks=500).batches(micro_batch=10, dp_rank=0, dp_size=1, pipeline=False)) == list(range(100))
    assert eval_micro_batch(64, 24) == 16 and eval_micro_batch(7, 4) == 1


def test_sharded_weights_measure_the_mean_token_loss_and_a_scalar_head_is_read_as_its_trunk(tmp_path):
    from orchestrator.config.model import get_model
    from orchestrator.model.loss import lm_loss
    from orchestrator.model.params import initial_value, plain_parameter_shapes
    from orchestrator.handoff.final import write_whole_tensors
    from orchestrator.phases.outputs import frozen_model

    config = get_model("tiny")
    weights = {name: initial_value(name, shape, config=config, seed=0)
               for name, shape in plain_parameter_shapes(config, head="lm").items()}
    write_whole_tensors(tmp_path / "lm", weights.items())
    model = frozen_model(config, head="lm", shards=tmp_path / "lm", device=torch.device("cpu"), dtype=torch.float32)
    data = SimpleNamespace(eval_order=SimpleNamespace(empty=False, epoch_length=lambda epoch: 8))
    ids = torch.randint(0, config.vocab, (8, 17))
    data.blocks = lambda *, order, start, count, split: {"input_ids": ids[start:start + count, :-1],
                                                         "labels": ids[start:start + count, 1:]}
    loss = PretrainLoss(data_config=None, seq_len=16, seed=0, blocks=8)
    loss.data = data
    with torch.no_grad():
        expected = float(lm_loss(model(ids[:, :-1]).logits, ids[:, 1:]))
    state = {**weights, "value_head.weight": torch.zeros(1, config.d_model), "value_head.bias": torch.zeros(1)}
    write_whole_tensors(tmp_path / "scalar", state.items())
    assert loss.of_shards(tmp_path / "scalar", config, device=torch.device("cpu"), micro_batch=3) == \
        pytest.approx(expected, rel=1e-5)
