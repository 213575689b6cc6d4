"""Supervised fine-tuning (InstructGPT, Ouyang et al. 2022 §3.5): start from the pretrained LM and
learn the labeller's demonstrations, with the loss on response tokens only."""
from __future__ import annotations

import math
from pathlib import Path

from orchestrator.data.mixture import shuffled_positions
from orchestrator.data.rlhf import collate_sft, load_prompts, load_sft
from orchestrator.phases.context import load_run_tokenizer, parent_state
from orchestrator.phases.sampling import oracle_evaluation
from orchestrator.phases.supervised import SupervisedPhase


def task_dir(ctx) -> Path:
    """Where the SFT / RM / PPO files are: the recipe's ``data.task_dir`` or the run's generated task."""
    return Path(ctx.config.data.task_dir) if ctx.config.data.task_dir else ctx.data_dir


class SFT(SupervisedPhase):
    name = "sft"
    head = "lm"

    def setup(self, *, resuming: bool) -> None:
        self.tokenizer = load_run_tokenizer(self.ctx)
        tokenizer, seq_len = self.tokenizer.hf(), self.config.loop.seq_len
        self.train_examples, self.data_report = load_sft(task_dir(self.ctx) / "sft_train.jsonl", tokenizer=tokenizer,
                                                         eos_id=self.tokenizer.eos_id, seq_len=seq_len)
        self.eval_examples, _ = load_sft(task_dir(self.ctx) / "sft_eval.jsonl", tokenizer=tokenizer,
                                         eos_id=self.tokenizer.eos_id, seq_len=seq_len)
        self.eval_prompts = load_eval_prompts(self)
        self.build(init_state=None if resuming else parent_state(self.ctx, parent="pretrain", tokenizer=self.tokenizer))

    def micro_batch_at(self, position: int, *, micro_batch: int, dp_rank: int, dp_size: int) -> dict:
        rows = shuffled_positions(len(self.train_examples), seed=self.ctx.config.seed,
                                  start=position + dp_rank * micro_batch, count=micro_batch)
        return self.collate([self.train_examples[i] for i in rows])

    def collate(self, examples) -> dict:
        """Right-padded SFT batch; under pp > 1 fixed to seq_len with input_ids and labels only."""
        pipeline = self.runtime.layout.pp > 1
        batch = collate_sft(examples, pad_id=self.tokenizer.pad_id,
                            pad_to=self.config.loop.seq_len if pipeline else None)
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
        if layout.pp == 1:  # sampling needs the whole model on one rank
            metrics.update(score_policy(self, self.runtime))
        return metrics


def load_eval_prompts(phase) -> list:
    """The held-out prompts both SFT and PPO are scored on (the first ``oracle_eval.prompts``)."""
    evaluation = phase.ctx.config.oracle_eval
    prompts, _ = load_prompts(task_dir(phase.ctx) / "ppo_eval.jsonl", tokenizer=phase.tokenizer.hf(),
                              max_prompt_len=phase.ctx.config.model.ctx - evaluation.max_new_tokens)
    return prompts[:evaluation.prompts]


def score_policy(phase, runtime) -> dict[str, float]:
    """Oracle score of the policy's samples on the held-out prompts (SPEC §6 protocol)."""
    evaluation = phase.ctx.config.oracle_eval
    return oracle_evaluation(runtime.module_for_inference(), prompts=phase.eval_prompts,
                             tokenizer=phase.tokenizer.hf(), eos_id=phase.tokenizer.eos_id,
                             pad_id=phase.tokenizer.pad_id, batch_size=evaluation.batch_size,
                             max_new_tokens=evaluation.max_new_tokens, temperature=evaluation.temperature,
                             top_p=evaluation.top_p, seed=evaluation.seed, dp_rank=runtime.state.dp_rank,
                             dp_size=runtime.layout.dp, device=runtime.device, group=runtime.state.dp_group,
                             lockstep_group=runtime.forward_group)
