"""Every parameter of every layout, named by the plain GPT parameter it is (a piece of).

A ``Shard`` says where a rank's local tensor sits in the full tensor of the plain GPT: its
canonical name (``h.3.attn.c_attn.weight``), the dimension tensor parallelism splits (Megatron's
``partition_dim``), the TP rank and size, the stride of a fused split (QKV: 3), and the real
vocabulary when the rows are padded to a multiple of tp. Three things are built on it:

- ``init_parameters``: every rank draws the *full* tensor from a generator seeded by
  (seed, canonical name) and keeps its piece (as Megatron's CPU init does, per tensor), so a model
  starts from the same numbers under any TP / PP / EP layout;
- consolidation: gather the pieces into the plain state dict (``engine/consolidate.py``);
- resharding: cut a plain state dict into the pieces of another layout.

Init (Radford et al. 2019, §2.3; GPT-2 code): weights N(0, init_std); the projections that write
into the residual stream (attention and MLP ``c_proj``) N(0, init_std / sqrt(2·n_layers));
biases 0; LayerNorm gains 1.
"""
from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from orchestrator.config.model import GPTConfig
from orchestrator.plan.partition import padded_vocab

_EXPERT = re.compile(r"(deepspeed_experts\.)(\d+)(\.)")


@dataclass(frozen=True)
class Shard:
    """Where one local tensor sits in the full tensor ``name`` of the plain GPT."""

    name: str
    dim: Optional[int] = None
    """Dimension split over the TP group; None: the tensor is whole on this rank."""
    parts: int = 1
    index: int = 0
    stride: int = 1
    """Fused tensors split per part: [q | k | v] with stride 3 gives rank r (q_r, k_r, v_r)."""
    rows: Optional[int] = None
    """Rows of the plain tensor when the local one comes from a vocabulary padded for TP."""

    def full_shape(self, local_shape: torch.Size) -> tuple[int, ...]:
        shape = list(local_shape)
        if self.dim is not None:
            shape[self.dim] *= self.parts
        if self.rows is not None:
            shape[0] = self.rows
        return tuple(shape)

    def take(self, full: Tensor) -> Tensor:
        """This rank's piece of the plain tensor ``full``."""
        if self.dim is None:
            return full
        if self.rows is not None:
            padding = padded_vocab(self.rows, self.parts) - self.rows
            full = torch.cat([full, full.new_zeros(padding, *full.shape[1:])]) if padding else full
        pieces = full.chunk(self.stride * self.parts, dim=self.dim)
        return torch.cat(pieces[self.index::self.parts], dim=self.dim)

    def assemble(self, pieces: list[Tensor]) -> Tensor:
        """The plain tensor from every TP rank's piece, in TP-rank order (inverse of ``take``)."""
        if self.dim is None:
            return pieces[0]
        per_rank = [piece.chunk(self.stride, dim=self.dim) for piece in pieces]
        full = torch.cat([per_rank[r][s] for s in range(self.stride) for r in range(self.parts)], dim=self.dim)
        return full[: self.rows] if self.rows is not None else full


def canonical_name(local_name: str, *, expert_offset: int = 0) -> str:
    """A local expert ``deepspeed_experts.i`` is global expert ``i + expert_offset``."""
    if not expert_offset:
        return local_name
    return _EXPERT.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + expert_offset}{m.group(3)}", local_name)


def param_shards(module: nn.Module, *, tp_rank: int = 0, tp_size: int = 1, expert_offset: int = 0,
                 rename: Callable[[str], str] = lambda name: name) -> list[tuple[nn.Parameter, Shard]]:
    """(parameter, shard) for every parameter of ``module``. ``rename`` maps a local module path
    to the plain GPT's (the pipeline's ``3.attn…`` → ``h.1.attn…``)."""
    shards = []
    for local_name, param in module.named_parameters():
        name = canonical_name(rename(local_name), expert_offset=expert_offset)
        if tp_size > 1 and getattr(param, "tensor_model_parallel", False):
            rows = getattr(module_of(module, local_name), "vocab", None) if name == "wte.weight" else None
            shard = Shard(name, dim=param.partition_dim, parts=tp_size, index=tp_rank,
                          stride=param.partition_stride, rows=rows)
        else:
            shard = Shard(name)
        shards.append((param, shard))
    return shards


def module_of(root: nn.Module, param_name: str) -> nn.Module:
    path = param_name.rsplit(".", 1)[0] if "." in param_name else ""
    return root.get_submodule(path) if path else root


def initial_value(name: str, shape: tuple[int, ...], *, config: GPTConfig, seed: int) -> Tensor:
    """The full initial tensor of plain parameter ``name``, the same on every rank and layout."""
    leaf = name.rsplit(".", 2)
    if name.endswith(".bias"):
        return torch.zeros(shape)
    if len(leaf) >= 2 and leaf[-2].startswith("ln_"):
        return torch.ones(shape)
    std = config.init_std
    if name.endswith("c_proj.weight"):
        std = std / math.sqrt(2 * config.n_layers)   # GPT-2: scale residual writes by 1/sqrt(N)
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**62)
    return torch.empty(shape).normal_(0.0, std, generator=generator)


@torch.no_grad()
def init_parameters(shards: Iterable[tuple[nn.Parameter, Shard]], *, config: GPTConfig, seed: int) -> None:
    for param, shard in shards:
        full = initial_value(shard.name, shard.full_shape(param.shape), config=config, seed=seed)
        param.copy_(shard.take(full).to(param.dtype))


@torch.no_grad()
def load_plain_state(shards: Iterable[tuple[nn.Parameter, Shard]], state_dict: dict[str, Tensor]) -> None:
    """Copy each local piece out of a plain (consolidated) state dict. A pipeline stage or an
    expert-parallel rank uses only part of it; a missing name or a wrong shape is refused."""
    for param, shard in shards:
        if shard.name not in state_dict:
            raise ValueError(f"state dict has no {shard.name!r}: was it saved from the same model config and head?")
        full = state_dict[shard.name]
        if tuple(full.shape) != shard.full_shape(param.shape):
            raise ValueError(f"{shard.name}: state dict has shape {tuple(full.shape)}, the model "
                             f"{shard.full_shape(param.shape)}: the model configs differ")
        param.copy_(shard.take(full.to(param.device)).to(param.dtype))


def plain_parameter_shapes(config: GPTConfig, *, head: str) -> dict[str, tuple[int, ...]]:
    """Name → shape of every parameter of the plain GPT (built on the meta device: no memory)."""
    from orchestrator.model.gpt import GPT

    with torch.device("meta"):
        model = GPT(config, head=head)  # type: ignore[arg-type]
    return {name: tuple(param.shape) for name, param in model.named_parameters()}


def materialize(module: nn.Module, device: torch.device) -> nn.Module:
    """Give every meta-device parameter real (uninitialised) storage on ``device``, keeping the
    attributes DeepSpeed and Megatron hang on parameters (``allreduce``, ``group_name``, …) —
    ``nn.Module.to_empty`` would replace them with bare Parameters."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.is_meta:
                real = nn.Parameter(torch.empty_like(param, device=device), requires_grad=param.requires_grad)
                real.__dict__.update(param.__dict__)
                sub._parameters[name] = real
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None and buffer.is_meta:
                sub._buffers[name] = torch.empty_like(buffer, device=device)
    return module.to(device)
