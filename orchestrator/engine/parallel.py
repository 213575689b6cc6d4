"""Processes and their grid: ``init_distributed`` and the ``ParallelState`` of one rank.

The grid is DeepSpeed's ``PipeModelDataParallelTopology`` with axes (pipe, data, model): the TP
("model") coordinate varies fastest, then data, then pipe — rank = pp·(dp·tp) + d·tp + t, the
order Megatron-LM uses too (Narayanan et al. 2021, §3: TP inside a node, PP across nodes).
Expert parallelism is carved out of data parallelism the way DeepSpeed-MoE builds its groups:
consecutive blocks of ``ep`` data-parallel ranks share the experts.

No module-level state: everything a rank needs about the grid is in its ``ParallelState``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.engine.launch.ports import free_port
from orchestrator.engine.launch.shm import remove_rank_buffer
from orchestrator.plan.layout import Layout


@dataclass(frozen=True)
class DistributedContext:
    """This process in the job: where it runs and how it talks to the others."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str


DEVICE_TYPES = ("cpu", "cuda")
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


def local_device(device_type: str, local_rank: int) -> torch.device:
    """This rank's device: the CPU, or GPU ``local_rank`` of this node — from the run config
    (``cluster.gpu``), never from what happens to be visible, so a ``gpu: cpu`` job stays on the
    CPU on a GPU machine, and a GPU job that finds too few GPUs stops with the reason."""
    if device_type not in DEVICE_TYPES:
        raise ValueError(f"device {device_type!r}: choose one of {', '.join(DEVICE_TYPES)}")
    if device_type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"the run config asks for GPUs but this process sees none (torch {torch.__version__}, "
                           f"torch.cuda.is_available() is False): run on a GPU node with a CUDA build of torch, "
                           f"or set cluster.gpu=cpu")
    visible = torch.cuda.device_count()
    if local_rank >= visible:
        raise RuntimeError(f"LOCAL_RANK {local_rank} but this node has {visible} visible GPU(s) (one rank per GPU): "
                           f"set cluster.gpus_per_node ≤ {visible}, or check CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", local_rank)


def use_accelerator(device_type: str) -> None:
    """Point DeepSpeed's accelerator at ``device_type`` (it picks CUDA whenever one is visible).

    ``set_accelerator``, not ``DS_ACCELERATOR``: with the variable set, DeepSpeed's JIT op for CPU
    collectives hashes differently and is rebuilt (minutes) by every process that differs in it.
    """
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if get_accelerator().device_name() != device_type:
        if device_type == "cpu":
            from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator as Accelerator
        else:
            from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator as Accelerator
        set_accelerator(Accelerator())


def init_distributed(*, device_type: str = "cpu", timeout_minutes: float = 10.0) -> DistributedContext:
    """Join the job's process group (idempotent) on ``device_type`` ranks: CPU + gloo or CUDA + NCCL.

    Under ``torchrun`` or the ``deepspeed`` launcher the rendezvous comes from RANK / WORLD_SIZE /
    MASTER_ADDR / MASTER_PORT / LOCAL_RANK; under mpirun DeepSpeed discovers it from MPI; a plain
    ``python`` process becomes a world of one. ``timeout_minutes`` bounds every collective, so a
    dead rank fails the job instead of hanging it.
    """
    launched = any(key in os.environ for key in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"))
    if not dist.is_initialized() and not launched:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device, backend = local_device(device_type, local_rank), BACKENDS[device_type]
    if dist.is_initialized() and dist.get_backend() != backend:
        raise RuntimeError(f"this process already joined a {dist.get_backend()} job, but {device_type} ranks need "
                           f"{backend}: one process runs on one kind of device")
    use_accelerator(device_type)
    import deepspeed

    if device.type == "cuda":
        torch.cuda.set_device(device)
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes), verbose=False)
    return DistributedContext(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                              device=device, backend=dist.get_backend())


def shutdown_distributed() -> None:
    """Leave the job in order: a barrier, so no rank tears down while a peer still talks to it,
    then ``destroy_process_group``. Without it each rank's process groups are destroyed during
    interpreter exit, in no fixed order with the C++ statics and the other ranks' exits. Call it
    on success only: after a failure the peers may be gone, and the launcher ends the job.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    remove_rank_buffer()   # DeepSpeed's CPU all-reduce buffer in /dev/shm (engine/launch/shm.py)


@dataclass(frozen=True, eq=False)
class ParallelState:
    """One rank's coordinates in the (pipe, data, model) grid and its process groups."""

    layout: Layout
    """The resolved layout (dp filled in)."""
    context: DistributedContext
    grid: Any
    """DeepSpeed's ``PipelineParallelGrid`` over the topology (its groups are the job's groups)."""
    tp_rank: int
    pp_rank: int
    dp_rank: int
    ep_rank: int
    """Rank inside this rank's expert-parallel group (which experts it holds)."""
    expert_dp_rank: int
    """Rank among the replicas of the same experts."""

    @property
    def rank(self) -> int:
        return self.context.rank

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def tp_group(self):
        return self.grid.get_slice_parallel_group()

    @property
    def dp_group(self):
        return self.grid.get_data_parallel_group()

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.layout.pp - 1

    def describe(self) -> str:
        return (f"rank {self.rank}/{self.context.world}: tp {self.tp_rank}/{self.layout.tp} "
                f"pp {self.pp_rank}/{self.layout.pp} dp {self.dp_rank}/{self.layout.dp} ep {self.ep_rank}/{self.layout.ep}")


def build_parallel_state(layout: Layout, context: DistributedContext) -> ParallelState:
    """The grid for ``layout`` (dp resolved against the world). Collective: every rank calls it."""
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology, PipelineParallelGrid

    topology = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)
    grid = PipelineParallelGrid(topology=topology)
    coord = topology.get_coord(context.rank)
    if layout.tp > 1:
        _initialise_megatron_tp(layout, grid)
    return ParallelState(layout=layout, context=context, grid=grid, tp_rank=coord.model, pp_rank=coord.pipe,
                         dp_rank=coord.data, ep_rank=coord.data % layout.ep, expert_dp_rank=coord.data // layout.ep)


def _initialise_megatron_tp(layout: Layout, grid) -> None:
    """Megatron-core's ``vocab_parallel_cross_entropy`` reads Megatron's own (module-level) TP group,
    so Megatron's parallel state is initialised with the same degrees — and checked to hold
    exactly the ranks of the DeepSpeed grid's TP slice, so the two can never disagree."""
    from megatron.core import parallel_state as megatron_state

    if megatron_state.model_parallel_is_initialized():
        megatron_state.destroy_model_parallel()
    megatron_state.initialize_model_parallel(tensor_model_parallel_size=layout.tp,
                                             pipeline_model_parallel_size=layout.pp)
    megatron_ranks = dist.get_process_group_ranks(megatron_state.get_tensor_model_parallel_group())
    grid_ranks = dist.get_process_group_ranks(grid.get_slice_parallel_group())
    if sorted(megatron_ranks) != sorted(grid_ranks):
        raise RuntimeError(f"Megatron's TP group {megatron_ranks} differs from DeepSpeed's grid slice {grid_ranks}")
