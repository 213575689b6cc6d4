"""Pipeline stages of the same GPT, as DeepSpeed ``PipelineModule`` layer specs.

The layer list is the plain GPT's forward written out flat (Huang et al. 2019; DeepSpeed's
pipeline engine runs it with the 1F1B schedule of Narayanan et al. 2021):

    0        TiedLayerSpec "embed": token embedding           (first stage)
    1        positions + embedding dropout                     (first stage)
    2..L+1   the L transformer blocks, balanced over stages    ("type:PipeBlock")
    L+2      final LayerNorm                                   (last stage)
    L+3      TiedLayerSpec "embed": logits = h · Wᵀ            (last stage, same weight)

DeepSpeed keeps the two copies of the tied embedding equal (one broadcast at build, an
all-reduce of their gradients each step). Each block is the plain ``Block`` (tensor-parallel
when tp > 1). Between stages only the hidden state (B, T, h) travels, so a pipelined model takes
``input_ids`` and labels only (no attention mask, no KV cache: those are for PP = 1).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from orchestrator.config.model import GPTConfig
from orchestrator.model.attention import AttentionMasks
from orchestrator.model.gpt import Block, TokenEmbedding

TIED_KEY = "embed"
FIRST_BLOCK = 2


def _parallelise(module: nn.Module, tp_group, dtype: torch.dtype) -> nn.Module:
    if tp_group is not None and torch.distributed.get_world_size(tp_group) > 1:
        from orchestrator.model.tensor_parallel import apply_tp

        apply_tp(module, tp_group=tp_group, dtype=dtype)
    return module


class TiedEmbedding(nn.Module):
    """The token embedding on the first stage and, tied to it, the LM head on the last."""

    def __init__(self, config: GPTConfig, tp_group=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.wte = TokenEmbedding(config.vocab, config.d_model)
        _parallelise(self, tp_group, dtype)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.wte(input_ids)                                               # (B, T, h)


def tied_logits(module: TiedEmbedding, hidden: Tensor) -> Tensor:
    """Last stage: vocab-parallel logits (the loss reduces over the TP group itself)."""
    return module.wte.logits(hidden, parallel_output=True)


class Positions(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.wpe = nn.Embedding(config.ctx, config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        return self.drop(tokens + self.wpe(positions))


class PipeBlock(Block):
    """``Block`` with the pipeline's one-tensor interface (causal masks built on the stage)."""

    def __init__(self, config: GPTConfig, layer_index: int, tp_group=None, dtype: torch.dtype = torch.float32,
                 selective_recompute: bool = False):
        super().__init__(config, layer_index)
        self.window = config.local_window if config.attention == "alternating" else None
        self.attn.recompute_core = selective_recompute
        _parallelise(self, tp_group, dtype)

    def forward(self, hidden: Tensor) -> Tensor:  # type: ignore[override]
        masks = AttentionMasks.build(q_len=hidden.shape[1], past=0, attention_mask=None, window=self.window,
                                     device=hidden.device, dtype=hidden.dtype)
        return super().forward(hidden, masks=masks)[0]


class FinalNorm(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.ln_f(hidden)


def build_pipeline(config: GPTConfig, *, topology, tp_group, loss_fn: Callable[[Tensor, Tensor], Tensor],
                   recompute: str = "none", dtype: torch.dtype = torch.float32) -> nn.Module:
    """This rank's stage of the GPT as a DeepSpeed ``PipelineModule`` on ``topology``.

    Collective: every rank builds its stage, and DeepSpeed ties the embedding across stages.
    ``recompute="full"`` checkpoints every block (PipelineModule's interval 1); "selective"
    recomputes only the attention core inside each block.
    """
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

    # build_runtime refused what this cannot build (MoE, more stages than layers): plan.validate.check_runtime
    embed = partial(TiedLayerSpec, TIED_KEY, TiedEmbedding, config, tp_group, dtype, tied_weight_attr=["wte.weight"])
    specs = [embed(), LayerSpec(Positions, config)]
    specs += [LayerSpec(PipeBlock, config, i, tp_group, dtype, recompute == "selective")
              for i in range(config.n_layers)]
    specs += [LayerSpec(FinalNorm, config), embed(forward_fn=tied_logits)]
    return PipelineModule(layers=specs, topology=topology, loss_fn=loss_fn, partition_method="type:PipeBlock",
                          activation_checkpoint_interval=1 if recompute == "full" else 0,
                          activation_checkpoint_func=partial(checkpoint, use_reentrant=False),
                          checkpointable_layers=["PipeBlock"], dynamic_shape=True)


def pipeline_plain_name(local_name: str, *, n_layers: int) -> str:
    """A PipelineModule parameter name → the plain GPT's: ``tied_modules.embed.wte.weight`` →
    ``wte.weight``, ``5.attn.c_attn.weight`` → ``h.3.attn.c_attn.weight``, ``1.wpe.weight`` → ``wpe.weight``."""
    tied_prefix = f"tied_modules.{TIED_KEY}."
    if local_name.startswith(tied_prefix):
        return local_name[len(tied_prefix):]
    index, rest = local_name.split(".", 1)
    block = int(index) - FIRST_BLOCK
    return f"h.{block}.{rest}" if 0 <= block < n_layers else rest
