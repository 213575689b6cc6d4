"""Memory per GPU: model states by ZeRO stage, activations, buffers; CPU memory under offload.

Two accountings of model states (parameters, gradients, optimizer state), both implemented:

* ``zero-paper`` — Rajbhandari et al. 2020, "ZeRO", §3 and Figure 1: mixed-precision Adam keeps
  2Ψ bytes of 16-bit parameters, 2Ψ of 16-bit gradients and KΨ of optimizer state (K = 12:
  fp32 parameters, momentum, variance). Stage 1 shards the K term over N_d data-parallel ranks,
  stage 2 also the gradients, stage 3 also the parameters. The paper's example, 7.5B parameters on
  64 ranks: 120 / 31.4 / 16.6 / 1.9 GB for stages 0-3.
* ``deepspeed`` — what DeepSpeed's runtime allocates (read off its code, cited where each term
  is computed, and measured by ``benchmarks/memory_accuracy.py``): it also keeps an fp32 copy of
  the gradient partition, so 18 bytes per parameter are sharded (2 16-bit gradients + 4 fp32
  gradients + 4 fp32 parameters + 8 Adam moments) beside the 16-bit parameters: stage 2 is
  2Ψ + 18Ψ/N, as its ``estimate_zero2_model_states_mem_needs`` counts. Stage 3 is 18Ψ/N plus the
  gathered parameters and two transient gradient terms; DeepSpeed's
  ``estimate_zero3_model_states_mem_needs`` counts 4·(largest layer) for those, we count what the
  runtime holds with the config we write (``deepspeed_states``).

The planner uses ``deepspeed`` for real jobs: it is what the processes it launches will hold, and
the paper's figure is about 2Ψ/N lower (a layout that fits only under the paper's count runs out
of memory). Under tensor and pipeline parallelism Ψ is the rank's share (``partition.py``);
experts are sharded by ZeRO over the expert-data-parallel group, dp / ep ranks.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config.cluster import GiB
from orchestrator.config.model import GPTConfig
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
ALLREDUCE_BUCKET_ELEMENTS = 500_000_000
"""Without ZeRO the engine all-reduces gradients flattened in buckets of this many elements
(``deepspeed/runtime/engine.py``: ``MEMORY_OPT_ALLREDUCE_SIZE``, not configurable)."""
SUB_GROUP_ELEMENTS = 1_000_000_000
"""ZeRO-3 steps the optimizer one sub-group of this many partitioned elements at a time
(DeepSpeed's default ``sub_group_size``; we do not set it)."""
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
                     param_bytes: int = 2, live_params: float = 0.0) -> ModelStates:
    """DeepSpeed's runtime accounting; stage 2 equals its estimator's GPU figure.

    stage 0: pΨ + (p + 4)Ψ gradients + 12Ψ optimizer, nothing sharded (16Ψ for plain fp32 Adam)
    stage 1: pΨ + max(pΨ, pΨ/N + 4Ψ/N) gradients + 12Ψ/N optimizer
    stage 2: pΨ + (p + 4)Ψ/N gradients + 12Ψ/N optimizer          = 2Ψ + 18Ψ/N for p = 2
    stage 3: (pΨ/N + pG) + (4Ψ/N + max(pL, 4·min(Ψ/N, S))) + 12Ψ/N
    offload: the fp32 parameters, gradients and moments (16Ψ/N) move to host RAM, and the
    16-bit gradients of stages 2-3 go with them (DeepSpeed's offload estimate: 2Ψ on the GPU).

    Stage 1 holds the full gradients only until the end of the backward pass
    (``stage_1_and_2.py``): ``reduce_independent_p_g_buckets_and_remove_grads`` moves each into the
    reduce bucket (a buffer), ``copy_grads_in_partition`` keeps the rank's partition
    (grads_in_partition), ``_clear_param_grad_only`` drops the rest, and only then does ``step``
    flatten the partition into the fp32 gradient; so the larger of the two moments, not their sum.
    In stages 1 and 2 grads_in_partition holds the whole gradient of a parameter cut by the
    partition's edges (``params_in_partition`` counts full tensors): up to 2L more, not counted
    (it depends on the flat order; ``memory_accuracy`` measures it).

    Stage 3 terms (L the largest layer, ``live_params`` the config's stage3_max_live_parameters):

    - G, parameters gathered at once: none on one rank (``partition_parameters.py``,
      ``Init.all_gather_coalesced`` → ``NoGatherHandle`` points ``param.data`` at the partition),
      else min(Ψ, live_params + L): ``partitioned_param_coordinator.py``, ``_fetch_sub_module_impl``
      prefetches while fewer than stage3_max_live_parameters are gathered and then fetches the
      current module whole; ``__params_to_release`` keeps what is reused within
      stage3_max_reuse_distance (we set it to the same number). With ``live_params`` 0 this is the
      estimator's one gathered layer.
    - gradients: the fp32 partition (``stage3.py``, ``_setup_for_real_optimizer``:
      grad_partitions_flat_buffer, 4Ψ/N) plus the larger of two transients: a gathered layer's
      16-bit gradient before it is copied into the reduce bucket (pL, the estimator's term), and
      the fp32 gradient of the sub-group being stepped, a flattened copy beside the partition
      (``_prepare_fp32_grad_for_sub_group``: flatten(averaged_gradients), S = sub_group_size).
    """
    p, n = param_bytes, dp
    if zero_stage == 0:
        mixed = p == 2
        return ModelStates(params=p * params, grads=(p + (FP32_COPY_BYTES if mixed else 0)) * params,
                           optimizer=(ADAM_STATE_BYTES + (FP32_COPY_BYTES if mixed else 0)) * params)
    gathered = zero3_gathered_params(params=params, dp=n, largest_module=largest_module,
                                     live_params=live_params) if zero_stage == 3 else 0.0
    param_bytes_rank = p * params / (n if zero_stage == 3 else 1) + p * gathered
    sharded = (FP32_COPY_BYTES + FP32_COPY_BYTES + ADAM_STATE_BYTES) * params / n  # fp32 grads, params, moments
    if offload:
        grads = p * params if zero_stage == 1 else p * largest_module if zero_stage == 3 else 0.0
        return ModelStates(params=param_bytes_rank, grads=grads, optimizer=0.0, cpu=sharded)
    if zero_stage == 3:  # reduce-scattered straight into the fp32 partition: no 16-bit shard
        step_gradient = FP32_COPY_BYTES * min(params / n, SUB_GROUP_ELEMENTS)
        grads = FP32_COPY_BYTES * params / n + max(p * largest_module, step_gradient)
    elif zero_stage == 2:
        grads = p * params / n + FP32_COPY_BYTES * params / n
    else:  # full gradients in the backward; after it the partition and its fp32 copy in the step
        grads = max(p * params, p * params / n + FP32_COPY_BYTES * params / n)
    return ModelStates(params=param_bytes_rank, grads=grads, optimizer=(FP32_COPY_BYTES + ADAM_STATE_BYTES) * params / n)


def zero3_gathered_params(*, params: float, dp: int, largest_module: float, live_params: float) -> float:
    """Parameters ZeRO-3 holds gathered at its peak beside the partitions (see ``deepspeed_states``).

    >>> zero3_gathered_params(params=1e6, dp=2, largest_module=1e5, live_params=1e6)   # a small model: all of it
    1000000.0
    >>> zero3_gathered_params(params=2e10, dp=64, largest_module=8e7, live_params=2e8)
    280000000.0
    """
    if dp == 1:
        return 0.0
    return min(params, max(live_params, 0.0) + largest_module)


def rank_model_states(rank: RankParams, layout: Layout, job: Job) -> ModelStates:
    """Dense parameters sharded over dp, experts over the expert-data-parallel group (dp / ep)."""
    common = dict(zero_stage=layout.zero_stage, offload=layout.offload_optimizer, param_bytes=job.param_bytes)
    if job.accounting == "zero-paper":
        dense = zero_paper_states(params=rank.dense, dp=layout.dp, **common)
        expert = zero_paper_states(params=rank.expert, dp=max(layout.dp // layout.ep, 1), **common)
    else:
        dense = deepspeed_states(params=rank.dense, dp=layout.dp, largest_module=rank.largest_module,
                                 live_params=planned_bucket_elements(job.model, layout), **common)
        expert = deepspeed_states(params=rank.expert, dp=max(layout.dp // layout.ep, 1), **common)
    return dense + expert


def bucket_elements(params_per_rank: float) -> int:
    """The ZeRO bucket: BUCKET_ELEMENTS, or the rank's whole parameter count if that is smaller."""
    return int(max(1, min(BUCKET_ELEMENTS, params_per_rank)))


def planned_bucket_elements(model: GPTConfig, layout: Layout) -> int:
    """The bucket the DeepSpeed config carries for ``layout`` (``orchestrate config`` and
    ``build_runtime`` both write it): ``bucket_elements`` of the largest rank among the stages the
    planner checks. ZeRO allocates this many elements whatever the stage holds.

    >>> from orchestrator.config.model import get_model
    >>> planned_bucket_elements(get_model("gpt3-175b"), Layout(tp=8, pp=1, dp=1))
    200000000
    """
    largest = max(stage_params(model, tp=layout.tp, pp=layout.pp, ep=layout.ep, stage=stage).total
                  for stage in stages_to_check(layout.pp))
    return bucket_elements(largest)


def reduction_buffer_bytes(rank: RankParams, layout: Layout, job: Job) -> float:
    """Gradient-reduction buffers at their peak (during or just after the backward pass).

    - ZeRO-0: the engine flattens the gradients into buckets of up to ALLREDUCE_BUCKET_ELEMENTS to
      all-reduce them (``engine.py``: ``allreduce_no_retain`` → ``allreduce_bucket`` → flatten), in
      the fp32 gradients BF16_Optimizer keeps (``bf16_optimizer.py``: ``get_grads_for_reduction``)
      or the model's own. Nothing when dp = pp = 1: ``build_runtime`` turns the all-reduce off.
    - ZeRO-1/2: the contiguous reduce bucket, allocated at the first gradient of the backward and
      released after it (``stage_1_and_2.py``: ``setup_buckets``, ``_release_ipg_buffers``), and, with
      dp > 1, the flattened copy of the rank slices ``average_tensor`` reduces (``allreduce_and_scatter``
      → ``allreduce_bucket``; on one rank the bucket is one slice and flattening it is a view).
      The all-gather after the step is in place (``runtime/utils.py``: ``all_gather_into_tensor_dp_groups``).
    - ZeRO-3: the reduce bucket, kept for the whole run (``stage3.py``: ``_setup_for_real_optimizer``),
      and the interleaved copy its reduce-scatter makes (``comm/coalesced_collectives.py``:
      ``reduce_scatter_coalesced``, torch.cat). Gathered parameters count as parameters.
    The bucket is ``planned_bucket_elements``. ``overlap_comm``, which ``engine.ds_config`` sets on
    GPUs (never on CPU ranks, where these figures are measured), adds a second ZeRO-1/2 reduce
    bucket (``stage_1_and_2.py`` double-buffers its ``ipg_buffer``) that is not counted here.
    """
    if layout.zero_stage == 0:
        if layout.dp == 1 and layout.pp == 1:
            return 0.0
        element_bytes = FP32_COPY_BYTES if job.precision == "bf16" else job.param_bytes
        return min(ALLREDUCE_BUCKET_ELEMENTS, rank.total) * element_bytes
    buckets = 1 if layout.zero_stage in (1, 2) and layout.dp == 1 else 2
    return buckets * planned_bucket_elements(job.model, layout) * job.param_bytes


def buffer_bytes(rank: RankParams, layout: Layout, job: Job) -> float:
    """Framework reserve (CUDA context, workspaces) plus the gradient-reduction buffers."""
    return job.cluster.device.reserved_gib * GiB + reduction_buffer_bytes(rank, layout, job)


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
