"""This rank's fp32 optimizer state, fragment by fragment: what the sharded checkpoint saves and
loads (``handoff.sharded``), read from and written into DeepSpeed's own buffers.

A ``Fragment`` is one parameter's elements whose fp32 master and Adam moments this rank's
optimizer keeps: a flat range of the parameter's TP piece and the 1-D views of those elements in
the flat tensor the torch optimizer steps. Where DeepSpeed 0.19 keeps them:

- ZeRO 1/2 (``DeepSpeedZeroOptimizer``) and ``BF16_Optimizer``: ``param._hp_mapping`` (None when
  none of the parameter falls in this rank's partition) gives the range in the parameter
  (``lp_fragment_address``) and in the flat fp32 partition (``hp_fragment_address``) of group
  ``param_group_index``; the 16-bit/fp32 model weights are all-gathered from the partitions by
  the optimizer's ``update_lp_params`` (collective);
- ZeRO 3: partition ``r`` of a parameter is its flat range ``[r·p, r·p + p)`` with
  ``p = param.ds_tensor.ds_numel = ceil(numel / dp)`` (the last one padded); it sits at
  ``grad_position``'s offset in ``fp32_partitioned_groups_flat``; the module's partition is
  ``param.ds_tensor``;
- ZeRO 0: the whole piece — the parameter itself in fp32, ``fp32_groups`` of DeepSpeed's
  ``FP16_UnfusedOptimizer`` in 16 bits.

The torch AdamW under each of them creates its state at its first step; a checkpoint loaded
before any step creates it (``step``, ``exp_avg``, ``exp_avg_sq``) as AdamW would.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from orchestrator.engine.master import _unfused_master as unfused_master, trains_in_16_bit
from orchestrator.engine.parallel import ParallelState
from orchestrator.handoff.sharded import KINDS, MASTER, MOMENTS, Region, ShardedReader, write_rank_shards
from orchestrator.model.params import Shard


@dataclass(frozen=True)
class Fragment:
    param: nn.Parameter
    region: Region
    master: Tensor
    """1-D fp32 view of the master elements (writing it writes the optimizer's copy)."""
    flat: Tensor
    """The tensor the torch optimizer keeps state for (a flat partition, or the parameter)."""
    offset: int
    """Where ``master``'s elements start in ``flat``."""

    def moment(self, optimizer: torch.optim.Optimizer, key: str) -> Tensor:
        state = optimizer.state.get(self.flat)
        if not state or key not in state:
            return torch.zeros(self.region.numel, dtype=torch.float32)
        return state[key].view(-1).narrow(0, self.offset, self.region.numel)


def torch_optimizer(engine) -> torch.optim.Optimizer:
    """The torch AdamW inside DeepSpeed's wrapper (ZeRO, BF16, FP16) — or the engine's own."""
    optimizer = engine.optimizer
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer.optimizer


def local_fragments(engine, shards: list[tuple[nn.Parameter, Shard]]) -> list[Fragment]:
    """Every fragment this rank's optimizer holds, in parameter order (empty ones left out)."""
    found = []
    for param, shard in shards:
        fragment = _fragment(engine, param, shard)
        if fragment is not None and fragment.region.numel:
            found.append(fragment)
    return found


def _region(shard: Shard, local_shape, *, start: int, numel: int) -> Region:
    return Region(shard, shard.full_shape(torch.Size(local_shape)), tuple(local_shape), start, numel)


def _fragment(engine, param: nn.Parameter, shard: Shard) -> Optional[Fragment]:
    optimizer = engine.optimizer
    if hasattr(param, "ds_id"):                                   # ZeRO 3
        group, offset, _ = optimizer.grad_position[optimizer.get_param_id(param)]
        per_rank = param.ds_tensor.ds_numel
        start = per_rank * dist.get_rank(group=optimizer._get_param_partition_group(param))
        numel = max(0, min(per_rank, param.ds_numel - start))
        flat = optimizer.fp32_partitioned_groups_flat[group]
        return Fragment(param, _region(shard, param.ds_shape, start=start, numel=numel),
                        flat.narrow(0, offset, numel), flat, offset)
    if hasattr(param, "_hp_mapping"):                             # ZeRO 1/2, BF16_Optimizer
        mapping = param._hp_mapping
        if mapping is None:
            return None
        partitions = getattr(optimizer, "single_partition_of_fp32_groups", None) or \
            optimizer.fp32_groups_flat_partition
        flat = partitions[mapping.param_group_index]
        address = mapping.lp_fragment_address
        return Fragment(param, _region(shard, param.shape, start=address.start, numel=address.numel),
                        mapping.hp_fragment, flat, mapping.hp_fragment_address.start)
    master = param if not trains_in_16_bit(engine) else _unfused_master(optimizer, param)   # ZeRO 0
    return Fragment(param, _region(shard, param.shape, start=0, numel=param.numel()),
                    master.detach().view(-1), master, 0)


def _unfused_master(optimizer, param: nn.Parameter) -> Tensor:
    master = unfused_master(optimizer, param)
    if master is None:
        raise RuntimeError(f"no fp32 master for a parameter of shape {tuple(param.shape)} in DeepSpeed's "
                           f"{type(optimizer).__name__}: this DeepSpeed version keeps them elsewhere")
    return master


def adam_step(optimizer: torch.optim.Optimizer) -> int:
    """AdamW's step count (the bias correction's t), equal in every state it keeps; 0 before the first step."""
    steps = [float(state["step"]) for state in optimizer.state.values() if "step" in state]
    return int(max(steps)) if steps else 0


def fragment_tensors(fragment: Fragment, optimizer: torch.optim.Optimizer, *,
                     kinds: tuple[str, ...] = KINDS) -> dict[str, Tensor]:
    """What the checkpoint stores for ``fragment``: fp32 master and moments (views, not copies);
    ``kinds=(MASTER,)`` for a handoff, which starts a fresh optimizer."""
    tensors = {MASTER: fragment.master.float()}
    tensors.update({key: fragment.moment(optimizer, key).float() for key in MOMENTS if key in kinds})
    return tensors


@torch.no_grad()
def ensure_adam_state(optimizer: torch.optim.Optimizer, fragments: list[Fragment], *, step: int) -> None:
    """AdamW's state for every flat tensor of ``fragments`` as its first step would create it, at
    ``step`` (torch keeps ``step`` as a float32 tensor, on the parameter's device for the fused
    kernel; the moments zero until loaded)."""
    on_device = bool(optimizer.defaults.get("fused") or optimizer.defaults.get("capturable"))
    for flat in {id(f.flat): f.flat for f in fragments}.values():
        state = optimizer.state[flat]
        if "exp_avg" not in state:
            state["step"] = torch.tensor(float(step), dtype=torch.float32, device=flat.device if on_device else "cpu")
            state["exp_avg"] = torch.zeros_like(flat, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(flat, memory_format=torch.preserve_format)
        else:
            state["step"].fill_(float(step))


@torch.no_grad()
def write_fragment(optimizer, fragment: Fragment, values: dict[str, Tensor]) -> None:
    """Set ``fragment``'s master and moments; under ZeRO 0/3 also the module's copy of its elements
    (ZeRO 1/2 all-gather theirs afterwards: ``refresh_model_weights``)."""
    fragment.master.copy_(values[MASTER])
    for key in (key for key in MOMENTS if key in values):
        optimizer.state[fragment.flat][key].view(-1).narrow(0, fragment.offset, fragment.region.numel) \
            .copy_(values[key])
    param = fragment.param
    if hasattr(param, "ds_id"):
        param.ds_tensor.data.view(-1).narrow(0, 0, fragment.region.numel).copy_(values[MASTER])
    elif not hasattr(param, "_hp_mapping") and fragment.master.data_ptr() != param.data_ptr():
        param.data.view(-1).copy_(values[MASTER])          # a 16-bit ZeRO-0 weight: its rounding


def refresh_model_weights(engine, *, link_optimizer_state: bool = True) -> None:
    """ZeRO 1/2 / BF16: every model weight from the fp32 partitions just written, and (unless
    ``link_optimizer_state`` is False: a handoff, whose optimizer has no state yet) each
    parameter's ``_hp_mapping`` linked to the optimizer state just created (as DeepSpeed does
    after its first step, so ``safe_get_full_optimizer_state`` works at once). Collective."""
    optimizer = engine.optimizer
    if hasattr(optimizer, "fp32_partitioned_groups_flat") or not hasattr(optimizer, "update_lp_params"):
        return                                        # ZeRO 3 and ZeRO 0 wrote the module's copy directly
    optimizer.update_lp_params()
    link = getattr(optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None and link_optimizer_state:
        link()


def stores(fragment: Fragment, state: ParallelState, *, zero_stage: int) -> bool:
    """Whether this rank writes ``fragment`` (each element of the model once): not a pipeline
    stage's tied copy, not a TP-replicated tensor off TP rank 0, not a data-parallel replica
    without ZeRO (data-parallel rank 0 writes; expert-data-parallel rank 0 for experts)."""
    param = fragment.param
    if getattr(param, "ds_pipe_replicated", False):
        return False
    if fragment.region.shard.dim is None and state.tp_rank != 0:
        return False
    if zero_stage == 0:
        is_expert = getattr(param, "allreduce", True) is False
        return (state.expert_dp_rank if is_expert else state.dp_rank) == 0
    return True


def save_rank_shards(engine, shards: list[tuple[nn.Parameter, Shard]], directory: Path, *,
                     state: ParallelState, kinds: tuple[str, ...] = KINDS) -> dict[str, str]:
    """This rank's fragments into ``directory`` (``handoff.sharded`` format); {file: sha256}. Not
    collective. ``kinds``: what each fragment stores (a handoff's final weights: ``(MASTER,)``)."""
    optimizer = torch_optimizer(engine)
    zero_stage = state.layout.zero_stage
    mine = [f for f in local_fragments(engine, shards) if stores(f, state, zero_stage=zero_stage)]
    return write_rank_shards(directory, rank=state.rank, metadata={"adam_step": adam_step(optimizer),
                                                                   "kinds": list(kinds)},
                             fragments=((f.region, fragment_tensors(f, optimizer, kinds=kinds)) for f in mine))


def load_rank_shards(engine, shards: list[tuple[nn.Parameter, Shard]], directory: Path) -> int:
    """Every fragment this rank holds, read from a sharded checkpoint of any layout: fp32 master,
    Adam moments and step, then the model weights. Returns AdamW's step. Collective (ZeRO 1/2)."""
    reader = ShardedReader(directory)
    step = int(reader.metadata[0]["adam_step"])
    optimizer = torch_optimizer(engine)
    fragments = local_fragments(engine, shards)
    ensure_adam_state(optimizer, fragments, step=step)
    for fragment in fragments:                      # one parameter's fragment in flight at a time
        write_fragment(optimizer, fragment, {kind: reader.read(fragment.region, kind) for kind in KINDS})
    reader.close()
    refresh_model_weights(engine)
    return step


def load_rank_weights(engine, shards: list[tuple[nn.Parameter, Shard]], directory: Path, *,
                      fresh: frozenset[str] = frozenset()) -> None:
    """A handoff: the fp32 master (and the module's copy) of every fragment this rank holds, read
    from another phase's sharded weights of any layout; the optimizer keeps no state (a new phase
    starts a fresh AdamW). ``fresh``: parameters the parent does not have (a reward model's new
    scalar head), which keep their initial values. Collective (ZeRO 1/2 all-gather)."""
    reader = ShardedReader(directory)
    optimizer = torch_optimizer(engine)
    for fragment in local_fragments(engine, shards):    # one parameter's fragment in flight at a time
        if fragment.region.name not in fresh:
            write_fragment(optimizer, fragment, {MASTER: reader.read(fragment.region, MASTER)})
    reader.close()
    refresh_model_weights(engine, link_optimizer_state=False)
