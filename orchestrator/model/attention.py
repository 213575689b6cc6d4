"""Causal self-attention with GPT-3's locally banded option, left padding and a KV cache.

Masks are built once per forward (``AttentionMasks.build``), as additive masks in the activations'
dtype, and shared by every layer: a dense causal mask and, for ``attention="alternating"``, a
sliding-window band (Brown et al. 2020, §2.1, after the Sparse Transformer of Child et al. 2019).
A token at absolute position i sees keys j with ``i - window < j <= i`` in a local layer
(``window`` tokens, itself included, as GPT-Neo counts). With no padding or only right padding and
no cache, dense layers use SDPA's ``is_causal`` fast path (no mask tensor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from orchestrator.config.model import GPTConfig


class KVCache:
    """Keys and values of every layer for the tokens seen so far, each (B, H_local, T, d_head).

    Start sampling with ``KVCache.empty(capacity=P + N)``: each layer's keys and values go into one
    buffer of ``capacity`` tokens, allocated at the first forward and written in place after that,
    so a decoding step copies only its new token (a cache grown by concatenation copies everything
    cached, every step). Without a capacity, or past it, the buffer grows by doubling. The forward
    fills the cache passed in and returns it; ``attention_mask`` passed with a cache covers past +
    new tokens. Inference only: the returned keys and values are views of buffers the next step
    writes into, so they must not be saved for a backward pass.
    """

    def __init__(self, capacity: Optional[int] = None):
        self.capacity = capacity
        self.length = 0
        """Tokens cached in every layer (advanced by ``advance`` once all layers have written)."""
        self._keys: dict[int, Tensor] = {}
        self._values: dict[int, Tensor] = {}

    @staticmethod
    def empty(capacity: Optional[int] = None) -> "KVCache":
        return KVCache(capacity)

    def update(self, index: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write layer ``index``'s new keys and values (B, H, T_new, d) after the cached ones;
        return the keys and values of all ``length + T_new`` tokens (views of the buffers)."""
        end = self.length + k.shape[2]
        if index not in self._keys:
            self._keys[index], self._values[index] = self._allocate(k, end), self._allocate(v, end)
        elif end > self._keys[index].shape[2]:
            self._keys[index] = self._grow(self._keys[index], end)
            self._values[index] = self._grow(self._values[index], end)
        keys, values = self._keys[index], self._values[index]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, tokens: int) -> None:
        self.length += tokens

    def _allocate(self, like: Tensor, needed: int) -> Tensor:
        batch, heads, _, d_head = like.shape
        size = max(needed, self.capacity or 0)
        return like.new_empty(batch, heads, size, d_head)

    def _grow(self, buffer: Tensor, needed: int) -> Tensor:
        grown = buffer.new_empty(*buffer.shape[:2], max(needed, 2 * buffer.shape[2]), buffer.shape[3])
        grown[:, :, :self.length] = buffer[:, :, :self.length]
        return grown


@dataclass(frozen=True)
class AttentionMasks:
    """Additive masks (0 = may attend, -inf = may not) in the activations' dtype, broadcastable to
    (B, H, T_q, T_k), built once per forward and shared by every layer; ``dense`` None = SDPA's
    ``is_causal`` (no mask tensor: the flash kernel on GPU and CPU).

    A boolean mask handed to SDPA is turned into such an additive one inside every call, so a
    boolean mask shared by the layers still cost one T_q × T_k conversion per layer; and any mask
    rules out the flash kernel. Two cases therefore need no mask at all: no padding, and right
    padding (SFT, reward model), where a real token's causal keys are all real — the padded
    queries then see padding, but their outputs are never read (labels -100, rewards read at EOS).
    """

    dense: Optional[Tensor]
    local: Optional[Tensor]

    @staticmethod
    def build(*, q_len: int, past: int, attention_mask: Optional[Tensor], window: Optional[int],
              device: torch.device, dtype: torch.dtype = torch.float32) -> "AttentionMasks":
        dense, local = visible_keys(q_len=q_len, past=past, attention_mask=attention_mask, window=window,
                                    device=device)
        if dense is not None and past == 0 and _right_padded(attention_mask):
            dense = None
        return AttentionMasks(dense=_additive(dense, dtype), local=_additive(local, dtype))

    def for_layer(self, local: bool) -> Optional[Tensor]:
        return self.local if local else self.dense


def visible_keys(*, q_len: int, past: int, attention_mask: Optional[Tensor], window: Optional[int],
                 device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Which keys each query may see (True = may attend): the (dense, local) boolean masks,
    broadcastable to (B, 1, T_q, T_k); dense None = plain causal (no padding, no cache)."""
    k_len = past + q_len
    if attention_mask is not None and attention_mask.shape[-1] != k_len:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} tokens but the cache "
                         f"holds {past} and the input {q_len}: pass the mask of all {k_len} tokens")
    plain_causal = attention_mask is None and past == 0
    query_pos = torch.arange(past, k_len, device=device)[:, None]    # (T_q, 1), absolute i
    key_pos = torch.arange(k_len, device=device)[None, :]            # (1, T_k), j
    causal = key_pos <= query_pos                                      # (T_q, T_k)
    band = causal & (key_pos > query_pos - window) if window else None
    if attention_mask is not None:
        # Left padding: a key that is padding is never seen. A padded query would then see
        # nothing (SDPA gives NaN), so every query may always see itself; its output is unused.
        keys_valid = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]   # (B, 1, 1, T_k)
        itself = key_pos == query_pos
        causal = (causal & keys_valid) | itself
        band = (band & keys_valid) | itself if band is not None else None
    return (None if plain_causal else causal), band


def _right_padded(attention_mask: Optional[Tensor]) -> bool:
    """Every row is real tokens, then padding (or none): causal attention is then exact for the
    real tokens. One host sync per forward, for prompt and training forwards only."""
    if attention_mask is None:
        return True
    valid = attention_mask.bool()
    return bool((valid[..., :-1] >= valid[..., 1:]).all())


def _additive(allowed: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    if allowed is None:
        return None
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


class CausalSelfAttention(nn.Module):
    """Multi-head attention: fused QKV projection ``c_attn`` (laid out [q | k | v] like GPT-2),
    output projection ``c_proj``. Under tensor parallelism both are replaced by Megatron's column /
    row parallel layers and this code sees only its local heads (d_local = c_attn.out / 3)."""

    def __init__(self, config: GPTConfig, layer_index: int):
        super().__init__()
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_attn)
        self.c_proj = nn.Linear(config.d_attn, config.d_model)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.d_head = config.d_head
        self.attn_dropout = config.dropout
        self.layer_index = layer_index
        self.is_local = config.is_local_layer(layer_index)
        self.recompute_core = False
        """Selective recompute (Korthikanti et al. 2022, §4.1): re-run softmax(QKᵀ)V in backward."""

    def forward(self, x: Tensor, *, masks: AttentionMasks,
                cache: Optional[KVCache] = None) -> Tensor:
        batch, q_len, _ = x.shape
        qkv = self.c_attn(x)                                                   # (B, T, 3·H·d)
        q, k, v = qkv.view(batch, q_len, 3, -1, self.d_head).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
        mask = masks.for_layer(self.is_local)
        dropout = self.attn_dropout if self.training else 0.0
        if self.recompute_core and self.training:
            y = checkpoint(_attend, q, k, v, mask, dropout, use_reentrant=False)
        else:
            y = _attend(q, k, v, mask, dropout)
        y = y.transpose(1, 2).reshape(batch, q_len, -1)                        # (B, T, H·d)
        return self.resid_dropout(self.c_proj(y))


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], dropout: float) -> Tensor:
    """softmax(QKᵀ/√d)V (Vaswani et al. 2017) through PyTorch's fused SDPA kernels."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
