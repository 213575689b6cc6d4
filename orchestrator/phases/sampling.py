"""Sampling responses with a KV cache, and scoring them with the run's labeller.

Prompts arrive left-padded (``data.rlhf.collate_prompts``), so every prompt ends in the last
column and generation appends to all rows at once; position ids come from the attention mask,
so a prompt's positions do not depend on how much padding it got (SPEC §6). Each step feeds
only the new token and reuses the cached keys and values of everything before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from orchestrator.model.attention import KVCache


@dataclass(frozen=True)
class Rollout:
    """Prompts and their sampled responses, as token ids."""

    sequences: Tensor
    """(B, P + N): left-padded prompt then response (pad after an early EOS)."""
    attention_mask: Tensor
    """(B, P + N): 1 on prompt and response tokens (the EOS included), 0 on padding."""
    response_mask: Tensor
    """(B, N): 1 on response tokens up to and including EOS."""
    prompt_len: int
    """P: the response of every row starts at this column."""

    @property
    def responses(self) -> Tensor:
        return self.sequences[:, self.prompt_len:]

    @property
    def position_ids(self) -> Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


NUCLEUS_CANDIDATES = 256
"""Tokens ``nucleus_sample`` selects before it falls back to sorting the whole vocabulary."""


def next_token(logits: Tensor, *, temperature: float, top_p: float, generator: torch.Generator) -> Tensor:
    """One token per row from (B, V) logits: temperature, then nucleus (top-p) sampling (Holtzman et al. 2020)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        return nucleus_sample(probs, top_p, generator=generator)
    return draw(probs, generator=generator)


def nucleus_sample(probs: Tensor, top_p: float, *, generator: torch.Generator) -> Tensor:
    """A token per row of (B, V) ``probs`` from its nucleus: the most probable tokens, in descending
    order, up to and including the one whose cumulative probability first exceeds ``top_p``.

    A trained model's nucleus is a few dozen tokens, so the ``NUCLEUS_CANDIDATES`` most probable
    are selected first (``topk``, linear in V) and the vocabulary is sorted only when they hold at
    most ``top_p`` of some row's mass (as for an untrained, near-uniform model); the sort then runs
    on the probabilities' float32 bit patterns, which order as the values do (non-negative floats)
    and sort faster than floats on CPU. The draw happens in sorted order, so nothing is scattered
    back to vocabulary order. Timed against sort + scatter + ``torch.multinomial`` in
    ``benchmarks/rollout_speed.py`` (BENCHMARKS.md).
    """
    vocab = probs.shape[-1]
    top, index = None, None
    if vocab > NUCLEUS_CANDIDATES and bool((probs.amax(dim=-1) * NUCLEUS_CANDIDATES > top_p).all()):
        top, index = probs.topk(NUCLEUS_CANDIDATES, dim=-1)
        if not bool((top.sum(dim=-1) > top_p).all()):         # some row's nucleus reaches further
            top = None
    if top is None:
        bits, index = probs.float().view(torch.int32).sort(dim=-1, descending=True)
        top = bits.view(torch.float32)
    outside = top.cumsum(dim=-1) - top > top_p                  # mass before the token exceeds top_p
    return index.gather(-1, draw(top.masked_fill(outside, 0.0), generator=generator)[:, None]).squeeze(-1)


def draw(probs: Tensor, *, generator: torch.Generator) -> Tensor:
    """One index per row of (B, V) non-negative weights, with probability proportional to its weight.

    Inverse-CDF sampling: one uniform per row against the running sum, where ``torch.multinomial``
    draws one exponential per vocabulary entry.
    """
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:].contiguous()
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=cdf.dtype) * total
    first_above = torch.searchsorted(cdf, u, right=True)
    # u rounds up to the total only when rand is within an ulp of 1: then take the last entry of
    # non-zero weight, the first whose cdf reaches the total
    last_weighted = torch.searchsorted(cdf, total, right=False)
    return torch.minimum(first_above, last_weighted).squeeze(-1)


@torch.no_grad()
def sample(model, *, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, eos_id: int, pad_id: int,
           temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator,
           lockstep_group=None) -> Rollout:
    """Sample up to ``max_new_tokens`` per prompt, stopping each row at its EOS. ``model`` must be in eval mode.

    ``lockstep_group``: the ranks whose every forward is one collective (ZeRO-3's data-parallel
    group, ``Runtime.forward_group``); generation stops only when no row of any of them is
    alive, so all run the same number of forwards (a rank stopping at its own EOS would leave
    the others waiting in a parameter all-gather). Tensor-parallel ranks need no group: they
    draw the same tokens from the same generator (``replica_generator``).

    ``no_grad``, not ``inference_mode``: under ZeRO-3 the forward's hooks gather parameters into
    ``param.data``, which must stay ordinary tensors for the training step that follows.
    """
    batch, prompt_len = input_ids.shape
    # the prompt's mask, then 1 for every token generated (rows past their EOS included: the
    # model still reads their pad tokens); the step at length L passes the first L columns
    mask = F.pad(attention_mask.long(), (0, max_new_tokens), value=1)
    position = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = KVCache.empty(capacity=prompt_len + max_new_tokens)
    out = model(input_ids, attention_mask=mask[:, :prompt_len], position_ids=position, kv_cache=cache,
                last_only=True)
    tokens, alive = [], torch.ones(batch, dtype=torch.bool, device=input_ids.device)
    response_mask = []
    next_position = position[:, -1:] + 1
    for step in range(max_new_tokens):
        token = next_token(out.logits[:, -1], temperature=temperature, top_p=top_p, generator=generator)
        token = torch.where(alive, token, torch.full_like(token, pad_id))
        tokens.append(token)
        response_mask.append(alive.long())
        alive = alive & (token != eos_id)
        if not any_alive(alive, group=lockstep_group):
            break
        out = model(token[:, None], attention_mask=mask[:, :prompt_len + step + 1], position_ids=next_position,
                    kv_cache=cache)
        next_position = next_position + 1
    response = torch.stack(tokens, dim=1)                                     # (B, N)
    response_mask = torch.stack(response_mask, dim=1)
    sequences = torch.cat([input_ids, response], dim=1)
    full_mask = torch.cat([attention_mask.long(), response_mask], dim=1)
    return Rollout(sequences=sequences, attention_mask=full_mask, response_mask=response_mask, prompt_len=prompt_len)


def any_alive(alive: Tensor, *, group=None) -> bool:
    """Whether a row is still being sampled here, or with ``group`` on any of its ranks."""
    if group is None or dist.get_world_size(group) == 1:
        return bool(alive.any())
    flag = alive.any().to(torch.int32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag.item())


def sampling_generator(*, seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def replica_generator(*seed: int, dp_rank: int, device: torch.device) -> torch.Generator:
    """The generator of one model replica, ``derived_seed(*seed, dp_rank)``: seeded from the
    data-parallel rank, never the global rank, so the tensor-parallel ranks of a replica draw the
    same tokens (their forwards are collectives over the TP group, and different tokens would
    desynchronise them). Without TP the data-parallel rank is the global rank: same streams as before."""
    from orchestrator.data.mixture import derived_seed

    return sampling_generator(seed=derived_seed(*seed, dp_rank), device=device)


def rank_batches(items: list, *, dp_rank: int, dp_size: int, batch_size: int, lockstep: bool) -> list:
    """This data-parallel rank's share of ``items`` (every ``dp_size``-th), in batches. In
    lockstep (``Runtime.forward_group`` is set) every rank gets as many batches as the rank with
    the most, the missing ones None: a rank then runs a placeholder forward that it does not count."""
    mine = items[dp_rank::dp_size]
    batches: list = [mine[start:start + batch_size] for start in range(0, len(mine), batch_size)]
    if lockstep:
        most = -(-len(items) // dp_size)                 # rank 0 holds ceil(len / dp)
        batches += [None] * (-(-most // batch_size) - len(batches))
    return batches


def sums_over_ranks(values: list[float], *, device: torch.device, group=None) -> list[float]:
    """Element-wise Σ over the ranks of ``group`` (the data-parallel group)."""
    stats = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(stats, group=group)
    return stats.cpu().tolist()


@torch.no_grad()
def oracle_evaluation(model, *, prompts: list, labeller: Optional[Callable[[str, str], float]], tokenizer,
                      eos_id: int, pad_id: int, batch_size: int, max_new_tokens: int, temperature: float,
                      top_p: float, seed: int, dp_rank: int, dp_size: int, device: torch.device, group=None,
                      lockstep_group=None,
                      extra_stats: Optional[Callable[[Rollout], dict[str, float]]] = None) -> dict[str, float]:
    """Mean labeller score (``oracle_score``; left out when ``labeller`` is None), length and EOS rate
    of responses sampled for held-out ``prompts`` (``PromptExample``s).

    Sampled at ``temperature`` (1.0: greedy decoding of a tiny model repeats one token and hides
    the differences between policies, SPEC §6), with a fixed seed so two policies are compared on
    the same prompts and the same random stream. Prompts are dealt out over data-parallel ranks
    (the seed is per data-parallel rank, so the tensor-parallel ranks of a replica agree); with
    ``lockstep_group`` (ZeRO-3) every rank runs the same number of batches and of sampling steps
    (``rank_batches``, ``sample``). ``extra_stats(rollout)`` may add per-batch sums (e.g. KL to a
    reference); they are averaged per prompt.
    """
    from orchestrator.data.format import decode_response
    from orchestrator.data.labeller import score
    from orchestrator.data.rlhf import collate_prompts

    batches = rank_batches(prompts, dp_rank=dp_rank, dp_size=dp_size, batch_size=batch_size,
                           lockstep=lockstep_group is not None)
    generator = sampling_generator(seed=seed + dp_rank, device=device)
    sums, counted = {"response_length": 0.0, "eos_rate": 0.0, **({"oracle_score": 0.0} if labeller else {})}, 0
    was_training = model.training
    model.eval()
    try:
        for chunk in batches:
            batch = collate_prompts(chunk if chunk is not None else prompts[:1], pad_id=pad_id)
            rollout = sample(model, input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device), max_new_tokens=max_new_tokens,
                             eos_id=eos_id, pad_id=pad_id, temperature=temperature, top_p=top_p, generator=generator,
                             lockstep_group=lockstep_group)
            extra = extra_stats(rollout) if extra_stats else {}     # forwards too: run on placeholders as well
            if chunk is None:
                for key in extra:   # every rank sums the same keys, also one that only ran placeholders
                    sums.setdefault(key, 0.0)
                continue
            counted += len(chunk)
            for prompt, ids, mask in zip(batch["prompts"], rollout.responses.cpu(), rollout.response_mask.cpu()):
                if labeller is not None:
                    sums["oracle_score"] += score(labeller, prompt, decode_response(tokenizer, ids, eos_id=eos_id))
                sums["response_length"] += float(mask.sum())
                sums["eos_rate"] += float((ids[mask.bool()] == eos_id).any())
            for key, value in extra.items():
                sums[key] = sums.get(key, 0.0) + value
    finally:
        model.train(was_training)
    keys = sorted(sums)
    totals = sums_over_ranks([sums[k] for k in keys] + [float(counted)], device=device, group=group)
    count = max(totals[-1], 1.0)
    return {key: total / count for key, total in zip(keys, totals)}
