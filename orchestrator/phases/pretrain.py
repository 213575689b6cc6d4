"""Pretraining: next-token loss on the packed corpus mixture (GPT-3, Brown et al. 2020)."""
from __future__ import annotations

import math

from orchestrator.data.pretrain import build_pretrain_data
from orchestrator.phases.context import load_run_tokenizer
from orchestrator.phases.pretrain_loss import PretrainLoss
from orchestrator.phases.supervised import SupervisedPhase


class Pretrain(SupervisedPhase):
    name = "pretrain"
    head = "lm"

    def setup(self, *, resuming: bool) -> None:
        cfg = self.ctx.config
        self.tokenizer = load_run_tokenizer(self.ctx)
        self.data = build_pretrain_data(cfg.data, seq_len=self.config.loop.seq_len, seed=cfg.seed)
        if self.data.tokenizer.tokenizer_hash != self.tokenizer.info.tokenizer_hash:
            raise ValueError(f"the corpus was tokenized with {self.data.tokenizer.path}, not the run's tokenizer "
                             f"{self.tokenizer.info.path}: prepare the run's data again")
        self.pretrain_loss = PretrainLoss.for_run(cfg, data=self.data)
        self.build()

    def micro_batch_at(self, position: int, *, micro_batch: int, dp_rank: int, dp_size: int) -> dict:
        return self.data.train_batch(position=position, micro_batch=micro_batch, dp_rank=dp_rank, dp_size=dp_size)

    def evaluate(self) -> dict[str, float]:
        layout = self.runtime.layout
        batches = list(self.data.eval_batches(micro_batch=layout.micro_batch, max_batches=self.config.loop.eval_batches,
                                              dp_rank=self.runtime.state.dp_rank, dp_size=layout.dp))
        metrics = {}
        if batches:
            loss = self.runtime.eval_loss(batches)
            metrics.update(eval_loss=loss, perplexity=math.exp(min(loss, 50.0)))
        if (tax := self.pretrain_loss.of_runtime(self.runtime)) is not None:
            metrics["pretrain_loss"] = tax
        return metrics
