"""The plain GPT state dict from any layout, and back (the phase-to-phase handoff).

Gather: ZeRO-3 partitions are gathered per tensor (``deepspeed.zero.GatheredParameters``), TP
pieces are all-gathered and reassembled (``Shard.assemble``), then each plain tensor is sent to
rank 0 by exactly one owner: TP rank 0 of data-parallel rank 0 for dense tensors, of
expert-data-parallel rank 0 for experts, the first pipeline copy of the tied embedding.
The send is streamed on the host: each owner keeps its own tensors on the CPU (one shard), and
rank 0 receives them rank by rank, tensor by tensor, over a gloo group into CPU tensors of the
announced shape — so rank 0 holds its result plus at most one tensor in flight, and nothing of the
model is staged in GPU memory (``gather_object`` over NCCL would pickle every rank's shard into GPU
byte buffers, world × the largest shard on GPU 0).
Load: every rank cuts its pieces out of the plain state dict (``Shard.take``).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from orchestrator.config.model import GPTConfig
from orchestrator.engine.parallel import ParallelState
from orchestrator.model.moe import local_expert_offset
from orchestrator.model.params import Shard, load_plain_state, param_shards, plain_parameter_shapes
from orchestrator.model.pipeline import pipeline_plain_name

Master = Callable[[nn.Parameter], Optional[Tensor]]


def local_shards(module: nn.Module, *, state: ParallelState, config: GPTConfig) -> list[tuple[nn.Parameter, Shard]]:
    """(parameter, shard) for every parameter this rank holds, named as in the plain GPT."""
    layout = state.layout
    offset = local_expert_offset(n_experts=config.n_experts, ep_size=layout.ep, ep_rank=state.ep_rank) \
        if config.is_moe else 0
    if layout.pp > 1:
        return param_shards(module, tp_rank=state.tp_rank, tp_size=layout.tp, expert_offset=offset,
                            rename=lambda name: pipeline_plain_name(name, n_layers=config.n_layers))
    return param_shards(module, tp_rank=state.tp_rank, tp_size=layout.tp, expert_offset=offset)


def _gathered(param: nn.Parameter, *, zero3: bool, modifier_rank=None):
    if not zero3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([param], modifier_rank=modifier_rank)


def _owns(param: nn.Parameter, state: ParallelState) -> bool:
    if state.tp_rank != 0 or getattr(param, "ds_pipe_replicated", False):
        return False
    is_expert = getattr(param, "allreduce", True) is False
    return (state.expert_dp_rank if is_expert else state.dp_rank) == 0


def _full_tensors(shards: list[tuple[nn.Parameter, Shard]], *, state: ParallelState, zero3: bool,
                  master: Optional[Master] = None) -> Iterator[tuple[nn.Parameter, Shard, Tensor]]:
    for param, shard in shards:
        value = master(param) if master is not None else None   # a 16-bit engine's fp32 master (collective)
        with _gathered(param, zero3=zero3 and value is None):
            local = param.detach() if value is None else value
            if shard.dim is None:
                full = local
            else:
                pieces = [torch.empty_like(local) for _ in range(shard.parts)]
                dist.all_gather(pieces, local.contiguous(), group=state.tp_group)
                full = shard.assemble(pieces)
            yield param, shard, full.to("cpu", torch.float32, copy=True)


def gather_plain_state(shards: list[tuple[nn.Parameter, Shard]], *, state: ParallelState,
                       zero3: bool, master: Optional[Master] = None) -> dict[str, Tensor]:
    """The plain GPT state dict on rank 0 (an empty dict on the other ranks). Collective.
    ``master(param)``: the fp32 master of a 16-bit engine's parameter (``engine.master``), or None."""
    mine = {shard.name: full for param, shard, full in _full_tensors(shards, state=state, zero3=zero3, master=master)
            if _owns(param, state)}
    group = _host_group()
    try:
        return stream_to_rank0(mine, rank=state.rank, world=dist.get_world_size(), group=group)
    finally:
        if group is not None:
            dist.destroy_process_group(group)


def _host_group():
    """A gloo group over every rank for host tensors: None (the default group) when the job
    already runs on gloo, else a new one (NCCL moves only GPU tensors). Collective."""
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def stream_to_rank0(mine: dict[str, Tensor], *, rank: int, world: int, group=None) -> dict[str, Tensor]:
    """Every rank's ``mine`` (CPU tensors, names unique to their owner) merged on rank 0; {} elsewhere.

    Only names and shapes travel as objects; each tensor goes point to point into a buffer rank 0
    allocates for it, in the order its owner announced. The first owner of a name wins. Collective.
    """
    announced: list = [None] * world if rank == 0 else None
    dist.gather_object([(name, tuple(t.shape), t.dtype) for name, t in mine.items()], announced,
                       dst=0, group=group)
    if rank != 0:
        for tensor in mine.values():
            dist.send(tensor.contiguous(), dst=0, group=group)
        return {}
    merged = dict(mine)
    for source in range(1, world):
        for name, shape, dtype in announced[source]:
            buffer = torch.empty(shape, dtype=dtype)
            dist.recv(buffer, src=source, group=group)
            merged.setdefault(name, buffer)
    return merged


def check_plain_state(state_dict: dict[str, Tensor], *, config: GPTConfig, head: str) -> None:
    """Refuse a state dict that is not exactly the plain GPT of ``config`` with ``head``."""
    expected = plain_parameter_shapes(config, head=head)
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(f"state dict does not fit model {config.name} with head={head!r}: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}: load a checkpoint of the same model config and head")
    wrong = [(name, tuple(state_dict[name].shape), shape) for name, shape in expected.items()
             if tuple(state_dict[name].shape) != shape]
    if wrong:
        name, got, want = wrong[0]
        raise ValueError(f"{name}: shape {got} but model {config.name} needs {want}: the model configs differ")


def load_plain_state_sharded(shards: list[tuple[nn.Parameter, Shard]], state_dict: dict[str, Tensor], *,
                             zero3: bool) -> None:
    """Every rank copies its pieces out of ``state_dict`` (under ZeRO-3, into the gathered tensor,
    which DeepSpeed re-partitions on leaving the context)."""
    for param, shard in shards:
        with _gathered(param, zero3=zero3, modifier_rank=0):
            load_plain_state([(param, shard)], state_dict)
