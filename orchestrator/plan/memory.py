"""Memory per GPU: model states by ZeRO stage, activations, buffers; CPU memory under offload.

Two accountings of model states (parameters, gradients, optimizer state), both implemented:

* ``zero-paper`` — Rajbhandari et al. 2020, "ZeRO", §3 and Figure 1: mixed-precision Adam keeps
  2Ψ bytes of 16-bit parameters, 2Ψ of 16-bit gradients and KΨ of optimizer state (K = 12:
  fp32 parameters, momentum, variance). Stage 1 shards the K term over N_d data-parallel ranks,
  stage 2 also the gradients, stage 3 also the parameters. The paper's example, 7.5B parameters on
  64 ranks: 120 / 31.4 / 16.6 / 1.9 GB for stages 0-3.
* ``deepspeed`` — what DeepSpeed's runtime allocates and its estimators count
  (``estimate_zero2_model_states_mem_needs``, ``estimate_zero3_model_states_mem_needs``): it also
  keeps an fp32 copy of the gradient partition, so 18 bytes per parameter are sharded (2 16-bit
  gradients + 4 fp32 gradients + 4 fp32 parameters + 8 Adam moments) beside the 16-bit parameters:
  stage 2 is 2Ψ + 18Ψ/N, stage 3 is 4·(largest layer) + 18Ψ/N (the gathered layer's 16-bit
  parameters and gradients).

The planner uses ``deepspeed`` for real jobs: it is what the processes it launches will hold, and
the paper's figure is about 2Ψ/N lower (a layout that fits only under the paper's count runs out
of memory). Under tensor and pipeline parallelism Ψ is the rank's share (``partition.py``);
experts are sharded by ZeRO over the expert-data-parallel group, dp / ep ranks.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config.cluster import GiB
from orchestrator.plan.activations import dropout_mask_bytes, stage_activation_bytes
from orchestrator.plan.job import Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.partition import RankParams, Stage, stage_layer_range, stage_params, stages_to_check

ADAM_STATE_BYTES = 8
"""fp32 momentum and variance."""
FP32_COPY_BYTES = 4
"""DeepSpeed's fp32 master parameters, and separately its fp32 gradient partition."""
BUCKET_ELEMENTS = 200_000_000
"""ZeRO reduce / all-gather bucket (elements), written into the DeepSpeed config too."""
CPU_BUFFER_FACTOR = 1.5
"""DeepSpeed's estimators' ``additional_buffer_factor`` for host memory (pinned staging buffers)."""
USABLE_FRACTION = 0.95
"""Share of device memory a layout may plan to use; the rest is the caching allocator's fragmentation."""


@dataclass(frozen=True)
class ModelStates:
    """Bytes on one rank: parameters, gradients, optimizer state on the device, and state offloaded to host RAM."""

    params: float
    grads: float
    optimizer: float
    cpu: float = 0.0

    def __add__(self, other: "ModelStates") -> "ModelStates":
        return ModelStates(self.params + other.params, self.grads + other.grads,
                           self.optimizer + other.optimizer, self.cpu + other.cpu)

    @property
    def device(self) -> float:
        return self.params + self.grads + self.optimizer


def zero_paper_states(*, params: float, dp: int, zero_stage: int, offload: bool, param_bytes: int = 2) -> ModelStates:
    """Rajbhandari et al. 2020, Fig. 1: (2 + 2 + K)Ψ with K = 12, sharded over dp by stage.

    >>> round(zero_paper_states(params=7.5e9, dp=64, zero_stage=1, offload=False).device / 1e9, 1)
    31.4

    fp32 training (``param_bytes`` 4) keeps 4 + 4 + 8: the parameters are their own master copy.
    With ZeRO-Offload (Ren et al. 2021) the K term lives in host RAM instead.
    """
    k = 3 * FP32_COPY_BYTES if param_bytes == 2 else ADAM_STATE_BYTES
    shard = lambda stage: dp if zero_stage >= stage else 1  # noqa: E731 - stage s shards its own term
    optimizer = k * params / shard(1)
    return ModelStates(params=param_bytes * params / shard(3), grads=param_bytes * params / shard(2),
                       optimizer=0.0 if offload else optimizer, cpu=optimizer if offload else 0.0)


def deepspeed_states(*, params: float, dp: int, zero_stage: int, offload: bool, largest_module: float = 0.0,
                     param_bytes: int = 2) -> ModelStates:
    """DeepSpeed's runtime accounting; stages 2 and 3 equal its estimators' GPU figures.

    stage 0: pΨ + (p + 4)Ψ gradients + 12Ψ optimizer, nothing sharded (16Ψ for plain fp32 Adam)
    stage 1: pΨ + (pΨ + 4Ψ/N) gradients + 12Ψ/N optimizer
    stage 2: pΨ + (p + 4)Ψ/N gradients + 12Ψ/N optimizer          = 2Ψ + 18Ψ/N for p = 2
    stage 3: (pΨ/N + pL) + (4Ψ/N + pL) + 12Ψ/N                    = 4L + 18Ψ/N
    (stage 3 reduce-scatters each gathered layer's 16-bit gradients straight into the fp32
    partition, so its 18 bytes count the 16-bit parameter shard instead of a 16-bit gradient one)
    offload: the fp32 parameters, gradients and moments (16Ψ/N) move to host RAM, and the
    16-bit gradients of stages 2-3 go with them (DeepSpeed's offload estimate: 2Ψ on the GPU).
    """
    p, n = param_bytes, dp
    if zero_stage == 0:
        mixed = p == 2
        return ModelStates(params=p * params, grads=(p + (FP32_COPY_BYTES if mixed else 0)) * params,
                           optimizer=(ADAM_STATE_BYTES + (FP32_COPY_BYTES if mixed else 0)) * params)
    gathered = p * largest_module if zero_stage == 3 else 0.0
    param_bytes_rank = p * params / (n if zero_stage == 3 else 1) + gathered
    grads16 = {1: p * params, 2: p * params / n, 3: 0.0}[zero_stage]  # stage 3 reduces into the fp32 shard
    sharded = (FP32_COPY_BYTES + FP32_COPY_BYTES + ADAM_STATE_BYTES) * params / n  # fp32 grads, params, moments
    if offload:
        return ModelStates(params=param_bytes_rank, grads=(grads16 if zero_stage == 1 else 0.0) + gathered,
                           optimizer=0.0, cpu=sharded)
    return ModelStates(params=param_bytes_rank, grads=grads16 + FP32_COPY_BYTES * params / n + gathered,
                       optimizer=(FP32_COPY_BYTES + ADAM_STATE_BYTES) * params / n)


def rank_model_states(rank: RankParams, layout: Layout, job: Job) -> ModelStates:
    """Dense parameters sharded over dp, experts over the expert-data-parallel group (dp / ep)."""
    common = dict(zero_stage=layout.zero_stage, offload=layout.offload_optimizer, param_bytes=job.param_bytes)
    if job.accounting == "zero-paper":
        dense = zero_paper_states(params=rank.dense, dp=layout.dp, **common)
        expert = zero_paper_states(params=rank.expert, dp=max(layout.dp // layout.ep, 1), **common)
    else:
        dense = deepspeed_states(params=rank.dense, dp=layout.dp, largest_module=rank.largest_module, **common)
        expert = deepspeed_states(params=rank.expert, dp=max(layout.dp // layout.ep, 1), **common)
    return dense + expert


def bucket_elements(params_per_rank: float) -> int:
    """The ZeRO bucket: BUCKET_ELEMENTS, or the rank's whole parameter count if that is smaller."""
    return int(max(1, min(BUCKET_ELEMENTS, params_per_rank)))


def buffer_bytes(rank: RankParams, layout: Layout, job: Job) -> float:
    """Framework reserve (CUDA context, workspaces) plus the gradient-reduction buckets: one
    all-reduce bucket without ZeRO, a reduce and an all-gather (or prefetch) bucket with it."""
    buckets = 1 if layout.zero_stage == 0 else 2
    return job.cluster.device.reserved_gib * GiB + buckets * bucket_elements(rank.total) * job.param_bytes


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one rank of the heaviest stage."""

    params: float
    grads: float
    optimizer: float
    activations: float
    buffers: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.buffers

    def gib(self) -> dict[str, float]:
        parts = dict(params=self.params, grads=self.grads, optimizer=self.optimizer,
                     activations=self.activations, buffers=self.buffers)
        return {name: round(value / GiB, 3) for name, value in parts.items()}


@dataclass(frozen=True)
class MemoryEstimate:
    breakdown: MemoryBreakdown
    stage: Stage
    """Which pipeline stage is the heaviest (``only`` without a pipeline)."""
    cpu_bytes_per_node: float
    """Host RAM for offloaded optimizer state, ranks per node × per-rank share × buffer factor."""
    limit_bytes: float
    accounting: str

    @property
    def total(self) -> float:
        return self.breakdown.total

    @property
    def fits(self) -> bool:
        return self.total <= self.limit_bytes


def stage_memory(layout: Layout, job: Job, *, stage: Stage) -> tuple[MemoryBreakdown, float]:
    """The breakdown of one stage's rank and that rank's offloaded host bytes."""
    rank = stage_params(job.model, tp=layout.tp, pp=layout.pp, ep=layout.ep, stage=stage)
    states = rank_model_states(rank, layout, job)
    activations = stage_activation_bytes(job.model, layout, seq=job.seq, stage=stage,
                                         layers=stage_layer_range(job.model, pp=layout.pp, stage=stage),
                                         activation_bytes=job.param_bytes,
                                         mask_bytes=dropout_mask_bytes(job.cluster.device.kind, job.param_bytes))
    breakdown = MemoryBreakdown(params=states.params, grads=states.grads, optimizer=states.optimizer,
                                activations=activations, buffers=buffer_bytes(rank, layout, job))
    return breakdown, states.cpu


def estimate_memory(layout: Layout, job: Job) -> MemoryEstimate:
    """The heaviest stage's memory per rank (first or last under a pipeline) and host RAM per node."""
    per_stage = {stage: stage_memory(layout, job, stage=stage) for stage in stages_to_check(layout.pp)}
    stage = max(per_stage, key=lambda s: per_stage[s][0].total)
    breakdown, _ = per_stage[stage]
    cpu_per_rank = max(cpu for _, cpu in per_stage.values())
    host = cpu_per_rank * job.cluster.gpus_per_node * CPU_BUFFER_FACTOR
    return MemoryEstimate(breakdown=breakdown, stage=stage, cpu_bytes_per_node=host,
                          limit_bytes=job.cluster.device_memory_bytes * USABLE_FRACTION, accounting=job.accounting)


def host_limit_bytes(job: Job) -> float:
    return job.cluster.device.host_memory_gib * GiB * USABLE_FRACTION
