"""Supervised fine-tuning (InstructGPT, Ouyang et al. 2022 §3.5): start from the pretrained LM and
learn the labeller's demonstrations, with the loss on response tokens only.

Against the alignment tax, ``sft.pretrain_mix`` replaces that share of every micro-batch's rows by
pretraining blocks (labels on every token), the SFT counterpart of PPO-ptx; every evaluation
reports ``pretrain_loss`` (``pretrain_loss.py``), and the phase records its parent's as
``parent_pretrain_loss`` (the level an imported model starts from, measured on the recipe's corpus).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from orchestrator.data import labeller as labellers
from orchestrator.data.mixture import shuffled_positions
from orchestrator.data.phase_data import task_file
from orchestrator.data.rlhf import collate_sft, load_prompts, load_sft
from orchestrator.phases.context import load_run_tokenizer, parent_shards
from orchestrator.phases.pretrain_loss import PretrainLoss
from orchestrator.phases.sampling import oracle_evaluation
from orchestrator.phases.supervised import SupervisedPhase


def phase_file(ctx, name: str) -> Path:
    """Where this run's ``name`` (``sft_train`` … ``ppo_eval``) is: ``data.task_dir`` or ``RUN_DIR/data``."""
    return task_file(ctx.config.data, ctx.data_dir, name)


class SFT(SupervisedPhase):
    name = "sft"
    head = "lm"

    def setup(self, *, resuming: bool) -> None:
        cfg = self.ctx.config
        self.tokenizer = load_run_tokenizer(self.ctx)
        tokenizer, seq_len, template = self.tokenizer.hf(), self.config.loop.seq_len, cfg.data.prompt_template
        self.train_examples, self.data_report = load_sft(phase_file(self.ctx, "sft_train"), tokenizer=tokenizer,
                                                         eos_id=self.tokenizer.eos_id, seq_len=seq_len,
                                                         template=template)
        self.eval_examples, _ = load_sft(phase_file(self.ctx, "sft_eval"), tokenizer=tokenizer,
                                         eos_id=self.tokenizer.eos_id, seq_len=seq_len, template=template)
        self.eval_prompts = load_eval_prompts(self)
        self.pretrain_loss = PretrainLoss.for_run(cfg)
        self.mix = self.pretrain_blocks() if self.config.pretrain_mix else None
        self.build(parent=None if resuming else parent_shards(self.ctx, parent="pretrain", tokenizer=self.tokenizer))
        self.parent_pretrain_loss: Optional[float] = None if resuming else self.pretrain_loss.of_runtime(self.runtime)

    def pretrain_blocks(self):
        from orchestrator.data.pretrain import build_pretrain_data

        cfg = self.ctx.config
        return build_pretrain_data(cfg.data, seq_len=self.config.loop.seq_len, seed=cfg.seed)

    def micro_batch_at(self, position: int, *, micro_batch: int, dp_rank: int, dp_size: int) -> dict:
        """Demonstrations, and with ``pretrain_mix`` its share of pretraining blocks after them.

        ``position`` counts rows of all ranks (a multiple of micro_batch × dp); each micro-batch takes
        ``micro_batch − k`` demonstrations and ``k`` blocks, each from its own contiguous stream."""
        k = self.config.pretrain_rows if self.mix is not None else 0
        index = position // micro_batch + dp_rank            # this micro-batch's index in the global stream
        rows = shuffled_positions(len(self.train_examples), seed=self.ctx.config.seed,
                                  start=index * (micro_batch - k), count=micro_batch - k)
        examples = [self.train_examples[i] for i in rows]
        if not k:
            return self.collate(examples)
        batch = self.collate(examples, pad_to=self.config.loop.seq_len)
        blocks = self.mix.train_batch(position=(index - dp_rank) * k, micro_batch=k, dp_rank=dp_rank, dp_size=dp_size)
        return mixed_batch(batch, blocks)

    def collate(self, examples, *, pad_to: Optional[int] = None) -> dict:
        """Right-padded SFT batch; under pp > 1 fixed to seq_len with input_ids and labels only."""
        pipeline = self.runtime.layout.pp > 1
        batch = collate_sft(examples, pad_id=self.tokenizer.pad_id,
                            pad_to=self.config.loop.seq_len if pipeline else pad_to)
        return {"input_ids": batch["input_ids"], "labels": batch["labels"]} if pipeline else batch

    def evaluate(self) -> dict[str, float]:
        layout, loop = self.runtime.layout, self.config.loop
        per_rank = layout.micro_batch
        stride = per_rank * layout.dp
        batches = [self.collate(self.eval_examples[start + self.runtime.state.dp_rank * per_rank:][:per_rank])
                   for start in range(0, len(self.eval_examples) - stride + 1, stride)][:loop.eval_batches]
        metrics = {}
        if batches:
            loss = self.runtime.eval_loss(batches)
            metrics.update(eval_loss=loss, perplexity=math.exp(min(loss, 50.0)))
        metrics.update(alignment_tax(self.pretrain_loss.of_runtime(self.runtime), self.parent_pretrain_loss))
        if layout.pp == 1:  # sampling needs the whole model on one rank
            metrics.update(score_policy(self, self.runtime))
        return metrics

    def state(self) -> dict:
        return {**super().state(), "parent_pretrain_loss": self.parent_pretrain_loss}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.parent_pretrain_loss = state.get("parent_pretrain_loss")


def mixed_batch(batch: dict, blocks: dict) -> dict:
    """SFT rows (padded to the blocks' length) then pretraining blocks, labels kept as each has them."""
    mixed = {key: torch.cat([batch[key], blocks[key]]) for key in ("input_ids", "labels")}
    if "attention_mask" in batch:
        mixed["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(blocks["input_ids"])])
    return mixed


def alignment_tax(pretrain_loss: Optional[float], parent: Optional[float]) -> dict[str, float]:
    """``pretrain_loss`` and, when known, the parent's (what SFT started from)."""
    metrics = {} if pretrain_loss is None else {"pretrain_loss": pretrain_loss}
    return metrics if parent is None else {**metrics, "parent_pretrain_loss": parent}


def load_eval_prompts(phase) -> list:
    """The held-out prompts both SFT and PPO are scored on (the first ``oracle_eval.prompts``)."""
    cfg = phase.ctx.config
    evaluation = cfg.oracle_eval
    prompts, _ = load_prompts(phase_file(phase.ctx, "ppo_eval"), tokenizer=phase.tokenizer.hf(),
                              max_prompt_len=cfg.model.ctx - evaluation.max_new_tokens,
                              template=cfg.data.prompt_template)
    return prompts[:evaluation.prompts]


def run_labeller(ctx):
    """The run's labeller (``data.labeller``), or None."""
    return labellers.resolve(ctx.config.data.labeller_spec)


def score_policy(phase, runtime, *, model=None) -> dict[str, float]:
    """The labeller's score of the policy's samples on the held-out prompts (SPEC §6 protocol), with
    their length and EOS rate; without a labeller only the latter two."""
    evaluation = phase.ctx.config.oracle_eval
    return oracle_evaluation(model if model is not None else runtime.module_for_inference(),
                             prompts=phase.eval_prompts, labeller=run_labeller(phase.ctx),
                             tokenizer=phase.tokenizer.hf(), eos_id=phase.tokenizer.eos_id,
                             pad_id=phase.tokenizer.pad_id, batch_size=evaluation.batch_size,
                             max_new_tokens=evaluation.max_new_tokens, temperature=evaluation.temperature,
                             top_p=evaluation.top_p, seed=evaluation.seed, dp_rank=runtime.state.dp_rank,
                             dp_size=runtime.layout.dp, device=runtime.device, group=runtime.state.dp_group,
                             lockstep_group=runtime.forward_group)
