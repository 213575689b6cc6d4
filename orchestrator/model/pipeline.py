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

An MoE model carries its load-balancing loss through the pipeline beside the hidden state: every
stage passes the pair (hidden (B, T, h), aux (1,)), each MoE block adds its weighted aux loss, and
the last stage's loss is LM loss + aux (``Runtime.pipeline_loss``). DeepSpeed's 1F1B engine sends
both tensors and returns both gradients (d loss / d aux = 1 on every stage), so the experts and
routers of every stage get the aux loss's gradient, as in the single-process model. The first
stage starts the sum from a zero leaf that requires grad (DeepSpeed's backward calls
``backward`` on every floating output of a stage). Dense models keep the one-tensor interface.
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
from orchestrator.plan.partition import layers_per_stage

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


def tied_logits(module: TiedEmbedding, carried: Tensor | tuple[Tensor, Tensor]):
    """Last stage: vocab-parallel logits (the loss reduces over the TP group itself), and an MoE
    model's aux-loss sum beside them."""
    if isinstance(carried, tuple):
        hidden, aux = carried
        return module.wte.logits(hidden, parallel_output=True), aux
    return module.wte.logits(carried, parallel_output=True)


class Positions(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.wpe = nn.Embedding(config.ctx, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.carries_aux = config.is_moe

    def forward(self, tokens: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        hidden = self.drop(tokens + self.wpe(positions))
        if not self.carries_aux:
            return hidden
        return hidden, torch.zeros(1, device=hidden.device, requires_grad=True)   # the aux-loss sum starts here


class PipeBlock(Block):
    """``Block`` with the pipeline's one-tensor interface (causal masks built on the stage)."""

    def __init__(self, config: GPTConfig, layer_index: int, tp_group=None, dtype: torch.dtype = torch.float32,
                 selective_recompute: bool = False, ep_size: int = 1):
        super().__init__(config, layer_index, ep_size=ep_size)
        self.window = config.local_window if config.attention == "alternating" else None
        self.attn.recompute_core = selective_recompute
        _parallelise(self, tp_group, dtype)

    def forward(self, carried: Tensor | tuple[Tensor, Tensor]):  # type: ignore[override]
        hidden, aux = carried if isinstance(carried, tuple) else (carried, None)
        masks = AttentionMasks.build(q_len=hidden.shape[1], past=0, attention_mask=None, window=self.window,
                                     device=hidden.device, dtype=hidden.dtype)
        hidden, layer_aux = super().forward(hidden, masks=masks)
        if aux is None:
            return hidden
        return hidden, aux + layer_aux.float().reshape(1)          # (B, T, h), (1,)


class FinalNorm(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, carried: Tensor | tuple[Tensor, Tensor]):
        if isinstance(carried, tuple):
            hidden, aux = carried
            return self.ln_f(hidden), aux
        return self.ln_f(carried)


def build_pipeline(config: GPTConfig, *, topology, tp_group, loss_fn: Callable[[Tensor, Tensor], Tensor],
                   recompute: str = "none", dtype: torch.dtype = torch.float32, ep_size: int = 1) -> nn.Module:
    """This rank's stage of the GPT as a DeepSpeed ``PipelineModule`` on ``topology``.

    Collective: every rank builds its stage, and DeepSpeed ties the embedding across stages.
    ``recompute="full"`` checkpoints every block (PipelineModule's interval 1); "selective"
    recomputes only the attention core inside each block. ``ep_size``: an MoE model's experts are
    dealt out over that many data-parallel ranks of each stage (``model.moe``).
    """
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

    # build_runtime refused what this cannot build (more stages than layers, an uneven split not asked for):
    # plan.validate.check_runtime
    embed = partial(TiedLayerSpec, TIED_KEY, TiedEmbedding, config, tp_group, dtype, tied_weight_attr=["wte.weight"])
    specs = [embed(), LayerSpec(Positions, config)]
    specs += [LayerSpec(PipeBlock, config, i, tp_group, dtype, recompute == "selective", ep_size)
              for i in range(config.n_layers)]
    specs += [LayerSpec(FinalNorm, config), embed(forward_fn=tied_logits)]
    module = PipelineModule(layers=specs, topology=topology, loss_fn=loss_fn, partition_method="type:PipeBlock",
                            activation_checkpoint_interval=1 if recompute == "full" else 0,
                            activation_checkpoint_func=partial(checkpoint, use_reentrant=False),
                            checkpointable_layers=["PipeBlock"], dynamic_shape=True)
    check_stage_bounds(list(module.parts), n_layers=config.n_layers, pp=topology.get_dim("pipe"))
    return module


def planned_stage_bounds(*, n_layers: int, pp: int) -> list[int]:
    """Layer-spec index where each stage starts (and the end): the planner's split
    (``plan.partition.layers_per_stage``: the first ``n_layers % pp`` stages one block more), with
    the embeddings before the first block on the first stage and the head after the last on the last.

    >>> planned_stage_bounds(n_layers=10, pp=4)      # blocks 3, 3, 2, 2 at spec indices 2..11
    [0, 5, 8, 10, 14]
    """
    bounds, end = [0], FIRST_BLOCK
    for blocks in layers_per_stage(n_layers, pp)[:-1]:
        end += blocks
        bounds.append(end)
    return bounds + [n_layers + FIRST_BLOCK + 2]


def check_stage_bounds(parts: list[int], *, n_layers: int, pp: int) -> None:
    """DeepSpeed's balanced split (``partition_method="type:PipeBlock"``) must be the planner's, so
    memory plans, checkpoints and stage sizes name the same layers; raise if a DeepSpeed change moved it."""
    planned = planned_stage_bounds(n_layers=n_layers, pp=pp)
    if [int(p) for p in parts] != planned:
        raise RuntimeError(f"DeepSpeed split the {n_layers} blocks over pp {pp} at spec indices {list(map(int, parts))}, "
                           f"the planner at {planned} (stages {list(layers_per_stage(n_layers, pp))})")


def pipeline_plain_name(local_name: str, *, n_layers: int) -> str:
    """A PipelineModule parameter name → the plain GPT's: ``tied_modules.embed.wte.weight`` →
    ``wte.weight``, ``5.attn.c_attn.weight`` → ``h.3.attn.c_attn.weight``, ``1.wpe.weight`` → ``wpe.weight``."""
    tied_prefix = f"tied_modules.{TIED_KEY}."
    if local_name.startswith(tied_prefix):
        return local_name[len(tied_prefix):]
    index, rest = local_name.split(".", 1)
    block = int(index) - FIRST_BLOCK
    return f"h.{block}.{rest}" if 0 <= block < n_layers else rest
