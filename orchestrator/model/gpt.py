"""The GPT: one plain ``nn.Module`` that every phase and every layout uses.

GPT-2/3 architecture (Radford et al. 2019; Brown et al. 2020): token + learned position
embeddings, pre-LayerNorm blocks (x + attn(ln_1(x)), x + mlp(ln_2(x))), a final LayerNorm and
the LM head tied to the token embedding; GELU (tanh form, as GPT-2) MLP of ffn_mult · d_model;
dropout on embeddings, attention probabilities and residual branches. ``head="scalar"`` swaps the
LM head for a Linear(d_model, 1) value head: one value per position (the reward model reads it at
EOS, the PPO critic at every position).

Parameter names follow Hugging Face ``GPT2LMHeadModel`` without its ``transformer.`` prefix
(``wte``, ``wpe``, ``h.{i}.ln_1``, ``h.{i}.attn.c_attn``, ``h.{i}.attn.c_proj``, ``h.{i}.ln_2``,
``h.{i}.mlp.c_fc``, ``h.{i}.mlp.c_proj``, ``ln_f``); our ``nn.Linear`` weights are the transpose of
HF's ``Conv1D`` weights. Parallelism never edits this file: ``apply_tp`` swaps layers for Megatron's,
``build_pipeline`` cuts the same modules into stages, and the MoE FFN comes from ``moe.py``.

Usage::

    model = GPT(config)                                 # head="lm"
    out = model(input_ids)                              # out.logits (B, T, V), out.aux_loss
    cache = KVCache.empty(capacity=T + max_new)         # filled in place by each forward
    out = model(ids, attention_mask=mask, position_ids=pos, kv_cache=cache, last_only=True)
    out = model(next_ids, attention_mask=mask2, position_ids=pos2, kv_cache=out.kv_cache)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from orchestrator.config.model import GPTConfig
from orchestrator.model.attention import AttentionMasks, CausalSelfAttention, KVCache

Head = Literal["lm", "scalar"]
HEADS: tuple[str, ...] = ("lm", "scalar")


@dataclass(frozen=True)
class GPTOutput:
    """What a forward returns.

    ``logits``: (B, T, V) for ``head="lm"`` — the full vocabulary unless the caller asked for
    ``parallel_logits`` under tensor parallelism, then this rank's (padded) vocabulary shard —
    or (B, T) values for ``head="scalar"`` (T = 1 with ``last_only``). ``aux_loss``: the MoE
    load-balancing loss already weighted by ``aux_loss_coef`` and summed over layers (0 for dense
    models), to be added to the training loss. ``kv_cache``: the cache passed in, now holding the
    new tokens too (None without one).
    """

    logits: Tensor
    aux_loss: Tensor
    kv_cache: Optional[KVCache] = None


class TokenEmbedding(nn.Module):
    """The token embedding, also the tied LM head: logits = h · Wᵀ (Press & Wolf 2017)."""

    def __init__(self, vocab: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, d_model))

    def forward(self, input_ids: Tensor) -> Tensor:
        return F.embedding(input_ids, self.weight)

    def logits(self, hidden: Tensor, *, parallel_output: bool = False) -> Tensor:
        return F.linear(hidden, self.weight)                            # (B, T, V)


class MLP(nn.Module):
    """h → ffn_mult·h → h with GELU (tanh approximation, as GPT-2's ``gelu_new``)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, config.d_ffn)
        self.c_proj = nn.Linear(config.d_ffn, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """A pre-LN transformer block; its FFN is an MoE layer when the config says so."""

    def __init__(self, config: GPTConfig, layer_index: int, *, ep_size: int = 1):
        super().__init__()
        self.layer_index = layer_index
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.is_moe = config.is_moe_layer(layer_index)
        if self.is_moe:
            from orchestrator.model.moe import build_moe_ffn
            self.mlp = build_moe_ffn(config, ep_size=ep_size)
        else:
            self.mlp = MLP(config)
        self.aux_loss_coef = config.aux_loss_coef

    def forward(self, x: Tensor, *, masks: AttentionMasks, cache: Optional[KVCache] = None) -> tuple[Tensor, Tensor]:
        x = x + self.attn(self.ln_1(x), masks=masks, cache=cache)
        if self.is_moe:
            ffn_out, aux = self.mlp(self.ln_2(x))
            aux = self.aux_loss_coef * aux
        else:
            ffn_out, aux = self.mlp(self.ln_2(x)), x.new_zeros(())
        return x + ffn_out, aux


class GPT(nn.Module):
    """The whole model. ``ep_size`` > 1 keeps only this rank's share of each MoE layer's experts.

    Parameters are allocated uninitialised: ``orchestrator.model.params.init_parameters`` fills
    them (N(0, init_std), residual projections scaled by 1/sqrt(2·n_layers)) the same way under
    every layout.
    """

    def __init__(self, config: GPTConfig, *, head: Head = "lm", ep_size: int = 1):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r}: choose one of {', '.join(HEADS)}")
        self.config, self.head = config, head
        self.wte = TokenEmbedding(config.vocab, config.d_model)
        self.wpe = nn.Embedding(config.ctx, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i, ep_size=ep_size) for i in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        if head == "scalar":
            self.value_head = nn.Linear(config.d_model, 1)
        self.recompute_blocks = False
        """Full recompute: keep only each block's input, re-run the block in backward."""

    def forward(self, input_ids: Tensor, *, attention_mask: Optional[Tensor] = None,
                position_ids: Optional[Tensor] = None, kv_cache: Optional[KVCache] = None,
                parallel_logits: bool = False, last_only: bool = False) -> GPTOutput:
        """``input_ids`` (B, T). ``attention_mask`` (B, T_past + T), 1 = real token, 0 = (left)
        padding. ``position_ids`` (B, T) default to T_past, T_past+1, …; for left-padded rows pass
        ``(attention_mask.cumsum(-1) - 1).clamp(min=0)`` (the new tokens' part of it).
        ``last_only``: apply the head to the last position only (a sampler's prompt forward), so
        the output is (B, 1, V) or (B, 1)."""
        past = kv_cache.length if kv_cache is not None else 0
        x = self.embed(input_ids, position_ids=position_ids, past=past)
        masks = AttentionMasks.build(q_len=input_ids.shape[1], past=past, attention_mask=attention_mask,
                                     window=self.config.local_window if self.config.attention == "alternating"
                                     else None, device=x.device, dtype=x.dtype)
        aux_loss = x.new_zeros(())
        for block in self.h:
            if self.recompute_blocks and self.training and kv_cache is None:
                x, aux = checkpoint(block, x, masks=masks, use_reentrant=False)
            else:
                x, aux = block(x, masks=masks, cache=kv_cache)
            aux_loss = aux_loss + aux
        if kv_cache is not None:
            kv_cache.advance(input_ids.shape[1])
        x = self.ln_f(x[:, -1:] if last_only else x)
        output = self.value_head(x).squeeze(-1) if self.head == "scalar" else \
            self.wte.logits(x, parallel_output=parallel_logits)
        return GPTOutput(output, aux_loss, kv_cache)

    def embed(self, input_ids: Tensor, *, position_ids: Optional[Tensor], past: int) -> Tensor:
        seq = input_ids.shape[1]
        if past + seq > self.config.ctx:
            raise ValueError(f"{past} cached + {seq} new tokens exceed the context of {self.config.ctx}: "
                             f"shorten the input or use a model with a longer ctx")
        if position_ids is None:
            position_ids = torch.arange(past, past + seq, device=input_ids.device)[None, :]
        return self.drop(self.wte(input_ids) + self.wpe(position_ids))          # (B, T, h)
