"""Which parameters one rank holds: tensor-parallel shards, pipeline stages, expert shards.

Megatron's split (Shoeybi et al. 2019, §3): QKV and MLP-in are column-parallel (weights and biases
split over tp), attention-out and MLP-out are row-parallel (weights split, bias replicated), the
LayerNorms are replicated, and the word embedding is vocab-parallel (its rows split over tp, the
vocabulary padded to a multiple of tp). Pipeline stages hold consecutive layers; the embeddings
sit on the first stage, and with pp > 1 the last stage keeps a tied copy of the word embedding as
the LM head (DeepSpeed ``TiedLayerSpec``) plus the final LayerNorm. Experts are split over the ep
ranks of an expert-parallel group and, like dense MLPs, over tp.

Worked example (gpt3-175b, tp 8, pp 16): each stage has 6 layers of 1.81e9 parameters / 8, and
the first stage adds 50,264 × 12,288 / 8 rows of word embedding: about 1.44e9 parameters per rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from orchestrator.config.model import GPTConfig

Stage = Literal["only", "first", "last"]


def padded_vocab(vocab: int, tp: int) -> int:
    """The vocabulary rounded up to a multiple of tp, so each vocab-parallel shard is equal.

    >>> padded_vocab(50257, 8)
    50264
    """
    return -(-vocab // tp) * tp


def layers_per_stage(n_layers: int, pp: int) -> tuple[int, ...]:
    """Layer counts of the pp stages: equal when pp divides n_layers, else the first
    ``n_layers % pp`` stages take one more (never a layer dropped).

    >>> layers_per_stage(10, 4)
    (3, 3, 2, 2)
    """
    base, extra = divmod(n_layers, pp)
    return tuple(base + (1 if stage < extra else 0) for stage in range(pp))


@dataclass(frozen=True)
class RankParams:
    """Parameters on one rank of a stage, before ZeRO shards them over data parallelism."""

    dense: float
    """Everything but experts: sharded by ZeRO over the dp group."""
    expert: float
    """Local experts: sharded by ZeRO over the expert-data-parallel group (dp / ep ranks)."""
    largest_module: float
    """The biggest single weight ZeRO-3 gathers at once (an embedding or an MLP matrix)."""
    layers: int

    @property
    def total(self) -> float:
        return self.dense + self.expert


def dense_layer_params(model: GPTConfig, *, tp: int, moe: bool) -> float:
    """One block's non-expert parameters on one tp rank (attention, norms, dense MLP or router)."""
    h, d, f = model.d_model, model.d_attn, model.d_ffn
    attention = (3 * h * d + 3 * d + d * h) / tp + h + 2 * (2 * h)  # QKV, out (split); out bias, 2 LNs
    if moe:
        return attention + h * model.n_experts  # the router is replicated
    return attention + (h * f + f + f * h) / tp + h  # MLP in/out split, out bias replicated


def expert_layer_params(model: GPTConfig, *, tp: int, ep: int) -> float:
    """One MoE block's local experts on one rank: n_experts / ep experts, each split over tp."""
    h, f = model.d_model, model.d_ffn
    return (model.n_experts / ep) * ((h * f + f + f * h) / tp + h)


def stage_layer_range(model: GPTConfig, *, pp: int, stage: Stage) -> range:
    """The 0-based layer indices of a stage (the first or last stage of a uniform split)."""
    counts = layers_per_stage(model.n_layers, pp)
    if stage == "last" and pp > 1:
        return range(model.n_layers - counts[-1], model.n_layers)
    return range(0, counts[0])


def moe_layers_in(model: GPTConfig, layers: range) -> int:
    """How many of ``layers`` have an MoE FFN (the last of every group of ``moe_every``)."""
    if not model.is_moe:
        return 0
    return (layers.stop // model.moe_every) - (layers.start // model.moe_every)


@lru_cache(maxsize=4096)
def stage_params(model: GPTConfig, *, tp: int, pp: int, ep: int, stage: Stage) -> RankParams:
    """Parameters one rank of ``stage`` holds (``only`` when pp = 1)."""
    layers = stage_layer_range(model, pp=pp, stage=stage)
    moe_layers = moe_layers_in(model, layers)
    dense = (moe_layers * dense_layer_params(model, tp=tp, moe=True)
             + (len(layers) - moe_layers) * dense_layer_params(model, tp=tp, moe=False))
    expert = moe_layers * expert_layer_params(model, tp=tp, ep=ep) if moe_layers else 0.0
    vocab = padded_vocab(model.vocab, tp)
    word_embedding = vocab * model.d_model / tp
    if stage in ("only", "first"):
        dense += word_embedding + model.ctx * model.d_model  # word (vocab-parallel) + positions
    if stage in ("only", "last"):
        dense += 2 * model.d_model  # final LayerNorm
    if stage == "last":
        dense += word_embedding  # the tied LM head's copy on the last stage
    return RankParams(dense=dense, expert=expert, layers=len(layers),
                      largest_module=largest_module_params(model, tp=tp))


def largest_module_params(model: GPTConfig, *, tp: int) -> float:
    """The largest single parameter tensor on a rank: the word embedding, QKV, or an MLP matrix."""
    h, d, f = model.d_model, model.d_attn, model.d_ffn
    return max(padded_vocab(model.vocab, tp) * h, 3 * h * d, h * f) / tp


def stages_to_check(pp: int) -> tuple[Stage, ...]:
    """The stages whose memory can be the largest: the first (most micro-batches in flight,
    embeddings) and the last (tied LM head, logits). Middle stages hold less than the first."""
    return ("only",) if pp == 1 else ("first", "last")
