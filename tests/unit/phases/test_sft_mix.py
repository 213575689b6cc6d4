"""``sft.pretrain_mix``: each micro-batch holds micro_batch − k demonstrations and k pretraining
blocks, each drawn from its own contiguous stream, so every rank and step reads distinct rows and
a resume at a position reads exactly what the uninterrupted run would."""
from types import SimpleNamespace

import torch

from orchestrator.config.run import load_run_config
from orchestrator.data.mixture import shuffled_positions
from orchestrator.data.rlhf import SFTExample
from orchestrator.phases.sft import SFT

SEQ = 12


class StubBlocks:
    def train_batch(self, *, position, micro_batch, dp_rank, dp_size):
        start = position + dp_rank * micro_batch
        ids = torch.arange(start, start + micro_batch)[:, None].repeat(1, SEQ) + 10_000
        return {"input_ids": ids, "labels": ids}


def sft_phase(mix: float, micro_batch: int) -> SFT:
    config = load_run_config({"sft": {"pretrain_mix": mix, "layout": {"micro_batch": micro_batch},
                                      "loop": {"seq_len": SEQ}}})
    phase = SFT(SimpleNamespace(config=config))
    phase.train_examples = [SFTExample(ids=(i + 100, i + 100, 1), prompt_len=1) for i in range(50)]
    phase.tokenizer = SimpleNamespace(pad_id=0)
    phase.trained = {"model": SimpleNamespace(layout=SimpleNamespace(pp=1))}
    phase.mix = StubBlocks()
    return phase


def test_demonstrations_and_blocks_each_come_from_one_contiguous_stream_over_ranks_and_steps():
    phase, micro_batch, dp = sft_phase(0.25, 8), 8, 2
    demos, blocks = [], []
    for step in range(3):
        for rank in range(dp):
            batch = phase.micro_batch_at(step * micro_batch * dp, micro_batch=micro_batch, dp_rank=rank, dp_size=dp)
            assert batch["input_ids"].shape == (8, SEQ) and batch["attention_mask"].shape == (8, SEQ)
            firsts = batch["input_ids"][:, 0].tolist()
            demos += [f - 100 for f in firsts[:6]]
            blocks += [f - 10_000 for f in firsts[6:]]
            assert (batch["labels"][6:] == batch["input_ids"][6:]).all()          # blocks: every token a target
            assert (batch["labels"][:6, 2:] == -100).all()                          # demonstrations: padded to SEQ
    assert demos == shuffled_positions(50, seed=phase.ctx.config.seed, start=0, count=36).tolist()
    assert blocks == list(range(12))


def test_without_a_mix_the_batch_is_the_demonstrations_alone():
    phase = sft_phase(0.0, 8)
    phase.mix = None
    batch = phase.micro_batch_at(8, micro_batch=8, dp_rank=1, dp_size=2)
    assert batch["input_ids"].shape == (8, 2)
    assert (batch["input_ids"][:, 0] - 100).tolist() == \
        shuffled_positions(50, seed=phase.ctx.config.seed, start=16, count=8).tolist()
