"""``pretrain_loss``: the held-out loss, on the pretraining corpus, of the model a phase hands on.

InstructGPT §4.2 calls RLHF's regression on the pretraining distribution the *alignment tax*
(PPO-ptx, eq. 2, exists to pay it back). Every phase measures it the same way, so the tax is a
number per phase in the manifests and on the report: next-token cross-entropy on the first
``data.pretrain_loss_blocks`` blocks of the corpus's held-out split (``PretrainData.eval_order``,
fixed by ``data.split_seed``), blocks of ``pretrain.loop.seq_len`` tokens (at most ``model.ctx``),
whatever phase, layout or micro-batch measures it. An imported model is measured on the recipe's
corpus by the SFT phase that starts from it (``parent_pretrain_loss``).

    measure = PretrainLoss.for_run(ctx.config)
    measure.of_runtime(runtime)        # LM-head runtimes, any layout (collective)
    measure.of_shards(shards, config)  # a phase's sharded weights, e.g. the reward model's trunk
                                       # read through its tied embedding (one process)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch

from orchestrator.data.packing import IGNORE_INDEX


def eval_micro_batch(blocks_per_rank: int, micro_batch: int) -> int:
    """The largest micro-batch ≤ ``micro_batch`` that divides ``blocks_per_rank`` (equal batches,
    so the mean of batch means is the mean over blocks): ``eval_micro_batch(64, 24)`` → 16."""
    return max(d for d in range(1, min(micro_batch, blocks_per_rank) + 1) if blocks_per_rank % d == 0)


@dataclass
class PretrainLoss:
    """The corpus's held-out blocks and the two ways of measuring a model's loss on them."""

    data_config: object
    seq_len: int
    seed: int
    blocks: int

    @classmethod
    def for_run(cls, config, *, data=None) -> "PretrainLoss":
        """The run's measure; ``data``: the corpus already built at this length (the pretrain phase's)."""
        measure = cls(data_config=config.data, seq_len=min(config.pretrain.loop.seq_len, config.model.ctx),
                      seed=config.seed, blocks=config.data.pretrain_loss_blocks)
        if data is not None and data.seq_len == measure.seq_len:
            measure.data = data          # fills the cached property
        return measure

    @cached_property
    def data(self):
        from orchestrator.data.pretrain import build_pretrain_data

        return build_pretrain_data(self.data_config, seq_len=self.seq_len, seed=self.seed)

    def usable_blocks(self, dp_size: int) -> int:
        """``blocks`` (or every held-out block, if fewer), rounded down to a multiple of ``dp_size``."""
        order = self.data.eval_order
        available = 0 if order.empty else order.epoch_length(0)
        return min(self.blocks, available) // dp_size * dp_size

    def batches(self, *, micro_batch: int, dp_rank: int, dp_size: int, pipeline: bool) -> list[dict]:
        """This rank's share of the blocks in equal micro-batches. Under a pipeline the micro-batch
        is the layout's own (the engine's fixed shape), so the blocks round down to whole global batches."""
        total = self.usable_blocks(dp_size)
        if pipeline:
            total = total // (micro_batch * dp_size) * micro_batch * dp_size
        per_rank = total // dp_size
        if per_rank == 0:
            return []
        size = micro_batch if pipeline else eval_micro_batch(per_rank, micro_batch)
        start = dp_rank * per_rank
        return [self.data.blocks(order=self.data.eval_order, start=start + i, count=size, split="eval")
                for i in range(0, per_rank, size)]

    def of_runtime(self, runtime) -> Optional[float]:
        """The loss of an LM-head runtime under its own layout (every rank calls it); None without blocks."""
        layout = runtime.layout
        batches = self.batches(micro_batch=layout.micro_batch, dp_rank=runtime.state.dp_rank, dp_size=layout.dp,
                               pipeline=layout.pp > 1)
        return runtime.eval_loss(batches) if batches else None

    @torch.no_grad()
    def of_shards(self, shards, model_config, *, device: torch.device, micro_batch: int = 16) -> Optional[float]:
        """The loss of a phase's sharded weights (``final/shards``) as an LM (a scalar head's
        weights are not read: the trunk is read through the tied token embedding, as the LM it was
        fine-tuned from). One process; the model is built one tensor at a time."""
        from orchestrator.model.loss import lm_loss
        from orchestrator.phases.outputs import frozen_model

        model = frozen_model(model_config, head="lm", shards=shards, device=device, dtype=torch.float32)
        total = tokens = 0.0
        for batch in self.batches(micro_batch=micro_batch, dp_rank=0, dp_size=1, pipeline=False):
            labels = batch["labels"].to(device)
            count = float((labels != IGNORE_INDEX).sum())
            total += float(lm_loss(model(batch["input_ids"].to(device)).logits, labels)) * count
            tokens += count
        return total / tokens if tokens else None
