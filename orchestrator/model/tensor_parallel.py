"""Tensor parallelism (Shoeybi et al. 2019, "Megatron-LM", §3) applied to the plain GPT.

``apply_tp`` swaps, inside any module, each attention's QKV and each MLP's first linear for
Megatron-core's ``ColumnParallelLinear`` (output features split over the TP group), their output
projections for ``RowParallelLinear`` (input features split, one all-reduce after), and the token
embedding for ``VocabParallelEmbedding`` (vocabulary rows split, padded to a multiple of tp).
Per layer this costs two all-reduces forward and two backward (the paper's f and g operators).

The fused QKV weight is laid out [q | k | v] (GPT-2's layout); it is split with stride 3 so each
rank holds the q, k and v of the same heads. Sequence parallelism is not offered here: Megatron's
sequence-parallel mappings allocate their buffers with ``torch.cuda`` (as does its logits gather
and its RNG tracker), so the one gather we need, the LM logits, is our own autograd function.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                           vocab_parallel_cross_entropy)
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region
from torch import Tensor, nn

from orchestrator.model.attention import CausalSelfAttention
from orchestrator.model.gpt import MLP, TokenEmbedding
from orchestrator.model.params import padded_vocab


class ColumnParallel(ColumnParallelLinear):
    """Megatron's column-parallel linear returning only its output (bias added inside)."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x)[0]


class RowParallel(RowParallelLinear):
    """Megatron's row-parallel linear returning only its output (all-reduced, bias added)."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x)[0]


class _GatherLastDim(torch.autograd.Function):
    """All-gather along the last dimension; backward keeps this rank's slice. Megatron's
    ``gather_from_tensor_model_parallel_region`` does the same but allocates on CUDA."""

    @staticmethod
    def forward(ctx, local: Tensor, group) -> Tensor:
        ctx.group, ctx.width = group, local.shape[-1]
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rank = dist.get_rank(ctx.group)
        return grad[..., rank * ctx.width:(rank + 1) * ctx.width].contiguous(), None


def gather_last_dim(local: Tensor, group) -> Tensor:
    """Concatenate every TP rank's last-dimension slice (e.g. vocab-parallel logits), differentiably."""
    return _GatherLastDim.apply(local, group)


class VocabParallelTokenEmbedding(VocabParallelEmbedding):
    """Rows [rank·V/tp, (rank+1)·V/tp) of the padded vocabulary; also the tied LM head."""

    vocab: int = 0
    """The real (unpadded) vocabulary."""

    def logits(self, hidden: Tensor, *, parallel_output: bool = False) -> Tensor:
        hidden = copy_to_tensor_model_parallel_region(hidden, group=self.tp_group)  # backward: all-reduce
        local = F.linear(hidden, self.weight)                                        # (B, T, V_pad / tp)
        local = _mask_padding(local, start=self.vocab_start_index, vocab=self.vocab)
        if parallel_output:
            return local
        return gather_last_dim(local, self.tp_group)[..., :self.vocab]                # (B, T, V)


def _mask_padding(local_logits: Tensor, *, start: int, vocab: int) -> Tensor:
    """Padding rows exist only to make the vocabulary divisible by tp: give them the lowest logit
    so the softmax, the loss and sampling are exactly those of the unpadded model."""
    real = vocab - start
    if real >= local_logits.shape[-1]:
        return local_logits
    keep = torch.arange(local_logits.shape[-1], device=local_logits.device) < real
    return local_logits.masked_fill(~keep, torch.finfo(local_logits.dtype).min)


def _megatron_config(tp: int, dtype: torch.dtype) -> ModelParallelConfig:
    # Weights are allocated only (perform_initialization=False): init_parameters fills them from
    # the full tensors so every layout starts from the same numbers.
    return ModelParallelConfig(tensor_model_parallel_size=tp, use_cpu_initialization=True,
                               perform_initialization=False, params_dtype=dtype,
                               gradient_accumulation_fusion=False, sequence_parallel=False)


def _mark_split(param: nn.Parameter, *, dim: int, stride: int = 1) -> None:
    """Megatron's tensor_model_parallel / partition_dim / partition_stride attributes (read by
    DeepSpeed's gradient-norm code and by our sharding); allocation without init leaves them unset."""
    for attribute in ("tensor_model_parallel", "partition_dim", "partition_stride"):
        if hasattr(param, attribute):
            delattr(param, attribute)
    set_tensor_model_parallel_attributes(param, True, dim, stride)


def _column(linear: nn.Linear, *, config: ModelParallelConfig, tp_group, stride: int) -> ColumnParallel:
    layer = ColumnParallel(linear.in_features, linear.out_features, config=config, init_method=nn.init.zeros_,
                           bias=True, gather_output=False, stride=stride, tp_group=tp_group)
    _mark_split(layer.weight, dim=0, stride=stride)
    _mark_split(layer.bias, dim=0, stride=stride)
    return layer


def _row(linear: nn.Linear, *, config: ModelParallelConfig, tp_group) -> RowParallel:
    layer = RowParallel(linear.in_features, linear.out_features, config=config, init_method=nn.init.zeros_,
                        bias=True, input_is_parallel=True, skip_bias_add=False, tp_group=tp_group)
    _mark_split(layer.weight, dim=1)
    return layer


def _vocab_parallel_embedding(embedding: TokenEmbedding, *, config: ModelParallelConfig,
                              tp_group) -> VocabParallelTokenEmbedding:
    vocab, d_model = embedding.weight.shape
    layer = VocabParallelTokenEmbedding(padded_vocab(vocab, dist.get_world_size(tp_group)), d_model,
                                        init_method=nn.init.zeros_, config=config, tp_group=tp_group)
    _mark_split(layer.weight, dim=0)
    layer.vocab = vocab
    return layer


def apply_tp(module: nn.Module, *, tp_group, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Swap ``module``'s dense layers for tensor-parallel ones over ``tp_group``, in place.

    Works on a whole GPT or on one pipeline stage's pieces. The new layers are uninitialised.
    Experts are split like the dense MLP (``model.moe``: DeepSpeed's expert tensor parallelism).
    """
    tp = dist.get_world_size(tp_group)
    if tp == 1:
        return module
    config = _megatron_config(tp, dtype)
    for parent in list(module.modules()):
        if isinstance(parent, CausalSelfAttention):
            parent.c_attn = _column(parent.c_attn, config=config, tp_group=tp_group, stride=3)
            parent.c_proj = _row(parent.c_proj, config=config, tp_group=tp_group)
        elif isinstance(parent, MLP):
            expert_group = _expert_group_name(parent)
            parent.c_fc = _column(parent.c_fc, config=config, tp_group=tp_group, stride=1)
            parent.c_proj = _row(parent.c_proj, config=config, tp_group=tp_group)
            if expert_group is not None:
                _mark_expert(parent, expert_group)
        for name, child in list(parent.named_children()):
            if isinstance(child, TokenEmbedding):
                setattr(parent, name, _vocab_parallel_embedding(child, config=config, tp_group=tp_group))
    return module


def _expert_group_name(mlp: MLP):
    """The DeepSpeed expert group of an expert MLP (its parameters carry ``allreduce=False``), else None."""
    for param in mlp.parameters():
        if getattr(param, "allreduce", True) is False:
            return param.group_name
    return None


def _mark_expert(mlp: MLP, group_name: str) -> None:
    """An expert's new tensor-parallel parameters keep DeepSpeed's expert marks (``Experts`` set
    them on the dense copies): reduced over the expert-data-parallel group, not over dp. Megatron's
    layers mark their parameters ``allreduce=True``, which would make DeepSpeed treat them as dense."""
    for param in mlp.parameters():
        param.allreduce = False
        param.group_name = group_name


def vocab_parallel_lm_loss(local_logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed token cross-entropy and the count of counted tokens, from vocab-sharded logits,
    through Megatron-core's ``vocab_parallel_cross_entropy`` (its max / sum-exp all-reduces keep
    the full softmax without gathering the logits). Labels of -100 are not counted. Megatron
    computes the softmax in place: ``local_logits`` holds garbage afterwards. It reads
    Megatron's own TP group, which ``ParallelState`` initialises to the DeepSpeed grid's."""
    counted = labels != -100
    per_token = vocab_parallel_cross_entropy(local_logits.float(), labels.clamp(min=0))   # (B, T)
    return (per_token * counted).sum(), counted.sum()
