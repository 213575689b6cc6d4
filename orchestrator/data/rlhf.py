"""SFT, reward-model and PPO examples from the task files, and the collators that batch them.

Token layout (``format.py``, joined by ``data.template``): prompt ids (with the separator) + response ids + EOS.

* SFT  → ``input_ids`` (B, T), ``labels`` (B, T), ``attention_mask`` (B, T); labels are already
  shifted like pretraining's (``labels[b, t]`` is the target of position t) and are -100 wherever
  the target is a prompt token or padding: the loss covers the response tokens and the EOS after
  them only (InstructGPT SFT, Ouyang et al. 2022 §3.5). Right padding.
* RM   → all K responses of a prompt as one element (Ouyang et al. 2022 §3.5: each response is
  run forward once and all C(K, 2) pairs are formed from the K rewards): ``input_ids`` (B, K, T)
  right-padded, ``attention_mask`` (B, K, T), ``eos_index`` (B, K) the position of each response's
  EOS (where the scalar head is read), ``scores`` (B, K) higher is better (ties = equal scores),
  ``valid`` (B, K) False for the padding responses of prompts with fewer than K.
* PPO  → ``input_ids`` (B, T) LEFT-padded so every prompt ends at the last column and generation
  continues from there, ``attention_mask`` (B, T), ``position_ids`` (B, T) = cumsum(mask) − 1
  (0 on padding), so a prompt's positions do not depend on how much padding it got; ``prompts``.

Rows too long for the phase's length are counted (``too_long``), never cut.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from orchestrator.data.format import DEFAULT, Template, encode_prompts, encode_responses
from orchestrator.data.packing import IGNORE_INDEX
from orchestrator.data.report import DataError, DataReport
from orchestrator.data.taskfiles import TaskRows, ranking_scores, read_task_file


@dataclass(frozen=True)
class SFTExample:
    ids: tuple[int, ...]
    """Prompt + response + EOS."""
    prompt_len: int


@dataclass(frozen=True)
class RMExample:
    prompt: str
    responses: tuple[tuple[int, ...], ...]
    """Each: prompt + response + EOS, best first."""
    scores: tuple[float, ...]


@dataclass(frozen=True)
class PromptExample:
    prompt: str
    ids: tuple[int, ...]


def _finish(read: TaskRows, examples: list) -> DataReport:
    report = read.tally.report()
    if not examples:
        raise DataError(f"{read.path} has no usable row: {report.summary()}")
    return report


def load_sft(path: str | Path, *, tokenizer, eos_id: int, seq_len: int,
             template: Template = DEFAULT) -> tuple[list[SFTExample], DataReport]:
    """Demonstrations whose prompt + response + EOS fits seq_len inputs (seq_len + 1 tokens)."""
    read = read_task_file(path, kind="sft")
    prompts = encode_prompts(tokenizer, [r["prompt"] for r in read.rows], template=template)
    responses = encode_responses(tokenizer, [r["response"] for r in read.rows], eos_id=eos_id, template=template)
    examples = []
    for index, (p, r) in enumerate(zip(prompts, responses)):
        if len(p) + len(r) > seq_len + 1:
            read.tally.add("too_long", read.where(index))
            continue
        examples.append(SFTExample(ids=tuple(p + r), prompt_len=len(p)))
    return examples, _finish(read, examples)


def load_rm(path: str | Path, *, tokenizer, eos_id: int, seq_len: int,
            template: Template = DEFAULT) -> tuple[list[RMExample], DataReport]:
    """Rankings whose every prompt + response + EOS fits in seq_len tokens."""
    read = read_task_file(path, kind="rm")
    prompts = encode_prompts(tokenizer, [r["prompt"] for r in read.rows], template=template)
    flat = encode_responses(tokenizer, [resp for r in read.rows for resp in r["responses"]], eos_id=eos_id,
                            template=template)
    examples, offset = [], 0
    for index, (row, p) in enumerate(zip(read.rows, prompts)):
        k = len(row["responses"])
        sequences = tuple(tuple(p + r) for r in flat[offset:offset + k])
        offset += k
        if max(len(s) for s in sequences) > seq_len:
            read.tally.add("too_long", read.where(index))
            continue
        examples.append(RMExample(prompt=row["prompt"], responses=sequences, scores=tuple(ranking_scores(row))))
    return examples, _finish(read, examples)


def load_prompts(path: str | Path, *, tokenizer, max_prompt_len: int,
                 template: Template = DEFAULT) -> tuple[list[PromptExample], DataReport]:
    """PPO prompts of at most max_prompt_len tokens (seq_len − max_new_tokens leaves room to answer)."""
    read = read_task_file(path, kind="ppo")
    examples = []
    encoded = encode_prompts(tokenizer, [r["prompt"] for r in read.rows], template=template)
    for index, (row, ids) in enumerate(zip(read.rows, encoded)):
        if len(ids) > max_prompt_len:
            read.tally.add("too_long", read.where(index))
            continue
        examples.append(PromptExample(prompt=row["prompt"], ids=tuple(ids)))
    return examples, _finish(read, examples)


def _width(longest: int, pad_to: int | None) -> int:
    if pad_to is None:
        return longest
    if pad_to < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence in the batch ({longest})")
    return pad_to


def collate_sft(examples: list[SFTExample], *, pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) inputs, shifted labels with -100 on prompt targets and padding."""
    width = _width(max(len(e.ids) for e in examples) - 1, pad_to)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.ids, dtype=torch.long)
        n = len(ids) - 1
        input_ids[row, :n] = ids[:-1]
        attention_mask[row, :n] = 1
        # position t predicts ids[t + 1]; targets ids[prompt_len:] are the response and its EOS
        first = example.prompt_len - 1
        labels[row, first:n] = ids[example.prompt_len:]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def collate_rm(examples: list[RMExample], *, pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """(B, K, T) right-padded responses with each EOS position, scores and the valid-response mask."""
    k = max(len(e.responses) for e in examples)
    width = _width(max(len(s) for e in examples for s in e.responses), pad_to)
    input_ids = torch.full((len(examples), k, width), pad_id, dtype=torch.long)  # (B, K, T)
    attention_mask = torch.zeros((len(examples), k, width), dtype=torch.long)
    eos_index = torch.zeros((len(examples), k), dtype=torch.long)  # (B, K)
    scores = torch.zeros((len(examples), k), dtype=torch.float32)
    valid = torch.zeros((len(examples), k), dtype=torch.bool)
    for b, example in enumerate(examples):
        for i, sequence in enumerate(example.responses):
            input_ids[b, i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[b, i, : len(sequence)] = 1
            eos_index[b, i] = len(sequence) - 1
        scores[b, : len(example.scores)] = torch.tensor(example.scores)
        valid[b, : len(example.responses)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "eos_index": eos_index,
            "scores": scores, "valid": valid}


def collate_prompts(examples: list[PromptExample], *, pad_id: int) -> dict:
    """Left-padded prompts with the attention mask and position ids computed from it."""
    width = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, width - len(example.ids):] = torch.tensor(example.ids, dtype=torch.long)
        attention_mask[row, width - len(example.ids):] = 1
    position_ids = position_ids_from_mask(attention_mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "prompts": [e.prompt for e in examples]}


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """cumsum(mask) − 1, clamped at 0 on the left padding: [0 0 1 1 1] → [0 0 0 1 2]."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
