"""Step time, tokens/s and MFU of a layout: compute, memory traffic, communication, pipeline bubble.

Per micro-batch, on the slowest pipeline stage:
  compute  = FLOPs / (peak · gemm_efficiency); FLOPs per token from Narayanan et al. 2021, eq. (3)
             (``GPTConfig.flops_per_token``: 72·l·h²·(1 + s/6h + V/12lh), 96·… with full recompute)
  memory   = memory_traffic_factor · Korthikanti activation bytes · (1 + recomputed share / 3) / HBM
  TP       = 4 all-reduces per layer (2 forward, 2 backward; +2 under full recompute) of s·b·h
             values, ring cost 2(t−1)/t · bytes / bandwidth (Narayanan et al. 2021, §3.3). In an
             MoE layer the experts are split over tp too (DeepSpeed's expert tensor parallelism),
             so per pass: the attention's all-reduce of s·b·h, the experts' row-parallel
             all-reduce of the k·c·s·b·h dispatched tokens, and DeepSpeed's two all-gathers of
             them (``gather_tokens`` before the experts and after the combine)
  EP       = 4 all-to-alls per MoE layer (dispatch and combine, forward and backward; +2 recompute),
             (e−1)/e · bytes / bandwidth, of k·c·s·b·h / t: DeepSpeed drops the tp ranks'
             duplicate tokens before the all-to-all (``sharded_moe.MOELayer.forward``)
  PP       = activations forward and gradients back, s·b·h per rank per virtual stage
             (s·b·h/t with Megatron's scatter/gather or the sequence-parallel shard)
Per step:
  pipeline = (m + (p−1)/v) · micro-batch time: 1F1B's bubble (p−1)/(m+p−1), interleaved (p−1)/(v·m+p−1)
  DP       = gradient all-reduce (ZeRO: reduce-scatter + all-gather; ZeRO-2 reduces every
             micro-batch; ZeRO-3 also gathers parameters forward and backward every micro-batch),
             overlapped with the backward pass when pp = 1 and exposed when pp > 1 (as measured)
  optimizer= Adam's memory-bound update of the local shard (on the CPU under offload)
Bandwidths are NVLink when a group fits in a node and the inter-node link otherwise; ranks are
ordered tp fastest, then dp, then pp (DeepSpeed's ``PipeModelDataParallelTopology``).
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config.model import GPTConfig
from orchestrator.plan.activations import ATTENTION_CORE, layer_bytes
from orchestrator.plan.job import Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.partition import moe_layers_in, stage_layer_range, stage_params, stages_to_check

ADAM_STEP_BYTES = 30
"""Bytes Adam moves per parameter: reads fp32 gradient, master, m, v (16); writes master, m, v (12) and the 16-bit copy (2)."""
SECONDS_PER_DAY = 86_400
OVERLAP_EFFICIENCY = 0.6
"""Share of overlappable data-parallel communication actually hidden behind compute. An assumption,
not fitted: the calibration table cannot constrain it (its pp = 1 rows have little to hide). 0.6
brings ZeRO-3 without model parallelism on GPT-3 175B (384-1536 A100s, batch 1536) to the
roughly 45-145 TFLOP/s per GPU that Narayanan et al. 2021 report for it beside Megatron's 3D layout."""


def ring_all_reduce(nbytes: float, ranks: int, bandwidth: float) -> float:
    """Ring all-reduce: each rank sends and receives 2(n−1)/n of the buffer (Patarasuk & Yuan 2009)."""
    return 0.0 if ranks <= 1 else 2 * (ranks - 1) / ranks * nbytes / bandwidth


def ring_half(nbytes: float, ranks: int, bandwidth: float) -> float:
    """Reduce-scatter or all-gather: half a ring all-reduce, (n−1)/n of the buffer."""
    return 0.0 if ranks <= 1 else (ranks - 1) / ranks * nbytes / bandwidth


def recomputed_forwards(recompute: str) -> float:
    return 1.0 if recompute == "full" else 0.0


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step and its parts; rates per second."""

    compute_s: float
    """Matmul time of one micro-batch on the slowest stage."""
    memory_s: float
    tp_comm_s: float
    ep_comm_s: float
    pp_comm_s: float
    micro_batch_s: float
    pipeline_s: float
    dp_comm_s: float
    dp_exposed_s: float
    optimizer_s: float
    step_s: float
    bubble_fraction: float
    tokens_per_step: float
    model_flops_per_step: float
    hardware_flops_per_step: float
    world: int
    peak_flops: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s

    @property
    def mfu(self) -> float:
        """Model FLOPs utilisation: model FLOPs (no recompute) / (time · GPUs · peak)."""
        return self.model_flops_per_step / (self.step_s * self.world * self.peak_flops)

    @property
    def tflops_per_gpu(self) -> float:
        """Hardware TFLOP/s per GPU, counting recomputed work (how Megatron's Table 1 counts)."""
        return self.hardware_flops_per_step / (self.step_s * self.world) / 1e12

    def days_to_train(self, tokens: float) -> float:
        return tokens / self.tokens_per_s / SECONDS_PER_DAY


def flops_per_token_split(model: GPTConfig, *, seq: int, recompute: str) -> tuple[float, float]:
    """(FLOPs per layer, FLOPs of the logit layer) per training token, from ``flops_per_token``.

    Selective recompute adds one more forward of the attention scores and weighted sum, 4·s·d_attn
    per token and layer (Korthikanti et al. 2022, §5).
    """
    logits = 3 * 2 * model.d_model * model.vocab
    total = model.flops_per_token(seq, recompute=recompute == "full")
    per_layer = (total - logits) / model.n_layers
    if recompute == "selective":
        per_layer += 4 * seq * model.d_attn
    return per_layer, logits


def hardware_flops_per_token(model: GPTConfig, *, seq: int, recompute: str) -> float:
    per_layer, logits = flops_per_token_split(model, seq=seq, recompute=recompute)
    return per_layer * model.n_layers + logits


def stage_flops_per_token(model: GPTConfig, layout: Layout, *, seq: int) -> float:
    """FLOPs per token of the slowest stage (layers, plus the logit layer on the last stage)."""
    per_layer, logits = flops_per_token_split(model, seq=seq, recompute=layout.recompute)
    worst = 0.0
    for stage in stages_to_check(layout.pp):
        layers = len(stage_layer_range(model, pp=layout.pp, stage=stage))
        worst = max(worst, per_layer * layers + (logits if stage in ("only", "last") else 0.0))
    return worst


def memory_traffic_s(layout: Layout, job: Job, *, layers: int) -> float:
    """Elementwise kernels' HBM time for one micro-batch: factor × activation bytes, the recomputed
    forward (full: all of it, selective: the attention core) adding a third of a pass."""
    model = job.model
    kwargs = dict(seq=job.seq, micro_batch=layout.micro_batch, tp=layout.tp,
                  sequence_parallel=layout.sequence_parallel)
    stored = layer_bytes(model, recompute="none", **kwargs)
    if layout.recompute == "full":
        recomputed = stored
    elif layout.recompute == "selective":
        recomputed = ATTENTION_CORE * model.n_heads * job.seq ** 2 * layout.micro_batch / layout.tp
    else:
        recomputed = 0.0
    traffic = (stored + recomputed / 3) * layers * job.param_bytes / 2
    return job.constants.memory_traffic_factor * traffic / job.cluster.device.hbm_bandwidth


def tp_comm_s(layout: Layout, job: Job, *, layers: int, moe_layers: int = 0) -> float:
    """Megatron's per-layer all-reduces (or the equal-volume reduce-scatter/all-gather pairs of
    sequence parallelism) for one micro-batch; ``moe_layers`` of the ``layers`` carry the expert
    traffic instead of the dense MLP's (see the module docstring)."""
    if layout.tp == 1:
        return 0.0
    passes = 2 + recomputed_forwards(layout.recompute)  # forward, backward, recomputed forward
    nbytes = job.seq * layout.micro_batch * job.model.d_model * job.param_bytes
    bandwidth = job.cluster.bandwidth(group_span=layout.tp)
    all_reduce = ring_all_reduce(nbytes, layout.tp, bandwidth)
    dense = 2 * all_reduce * (layers - moe_layers)
    routed = dispatched_tokens_factor(job.model) * nbytes
    expert = (all_reduce + ring_all_reduce(routed, layout.tp, bandwidth)
              + 2 * ring_half(routed, layout.tp, bandwidth)) * moe_layers
    return passes * (dense + expert)


def dispatched_tokens_factor(model: GPTConfig) -> float:
    """Tokens an MoE layer dispatches per input token: top_k copies, padded to the capacity factor."""
    return min(model.top_k, model.n_experts) * model.capacity_factor


def ep_comm_s(layout: Layout, job: Job, *, moe_layers: int) -> float:
    """DeepSpeed MoE's all-to-alls for one micro-batch: each token's hidden state goes to top_k
    experts; each tp rank sends 1/tp of them (DeepSpeed drops the duplicates a tp group holds)."""
    if moe_layers == 0 or layout.ep == 1:
        return 0.0
    model = job.model
    tokens = job.seq * layout.micro_batch / layout.tp
    nbytes = tokens * dispatched_tokens_factor(model) * model.d_model * job.param_bytes
    per_all_to_all = (layout.ep - 1) / layout.ep * nbytes / job.cluster.bandwidth(group_span=layout.tp * layout.ep)
    return (4 + 2 * recomputed_forwards(layout.recompute)) * moe_layers * per_all_to_all


def pp_comm_s(layout: Layout, job: Job) -> float:
    """Point-to-point activations and gradients between stages, per micro-batch; v times with interleaving."""
    if layout.pp == 1:
        return 0.0
    split = layout.tp if (layout.sequence_parallel or job.scatter_gather_p2p) else 1
    nbytes = job.seq * layout.micro_batch * job.model.d_model * job.param_bytes / split
    bandwidth = job.cluster.bandwidth(group_span=2 * layout.tp * layout.dp)
    return 2 * layout.interleave * nbytes / bandwidth


@dataclass(frozen=True)
class DataParallelComm:
    """Gradient and parameter collectives of one step over the data-parallel groups."""

    per_step_s: float
    """Once per step after the last backward: the all-reduce (ZeRO 0) or reduce-scatter (ZeRO 1)."""
    after_step_s: float
    """The all-gather of updated parameters (ZeRO 1-2), which nothing overlaps."""
    per_micro_batch_forward_s: float
    """ZeRO-3's forward parameter all-gather."""
    per_micro_batch_backward_s: float
    """ZeRO-2's gradient reduce-scatter; ZeRO-3's backward (and recompute) all-gathers and reduce-scatter."""


def dp_comm(layout: Layout, job: Job) -> DataParallelComm:
    """The collectives over dp (dense) and dp / ep (experts) ranks, from the slowest stage's parameters."""
    heaviest = max((stage_params(job.model, tp=layout.tp, pp=layout.pp, ep=layout.ep, stage=stage)
                    for stage in stages_to_check(layout.pp)), key=lambda rank: rank.total)
    bandwidth = job.cluster.bandwidth(group_span=layout.tp * layout.dp)
    groups = [(heaviest.dense * job.param_bytes, layout.dp),
              (heaviest.expert * job.param_bytes, max(layout.dp // layout.ep, 1))]
    half = sum(ring_half(nbytes, ranks, bandwidth) for nbytes, ranks in groups)  # one RS or one AG
    zero = layout.zero_stage
    if zero == 0:
        return DataParallelComm(2 * half, 0.0, 0.0, 0.0)
    if zero == 1:
        return DataParallelComm(half, half, 0.0, 0.0)
    if zero == 2:
        return DataParallelComm(0.0, half, 0.0, half)
    gathers_backward = 1 + recomputed_forwards(layout.recompute)
    return DataParallelComm(0.0, 0.0, half, (gathers_backward + 1) * half)


def dp_exposed_s(comm: DataParallelComm, layout: Layout, *, micro_batch_s: float) -> float:
    """DP time not hidden behind compute. With pp = 1 gradient reduction overlaps the backward pass
    (which, with the recomputed forward, is (2 + r)/(3 + r) of a micro-batch) and ZeRO-3's forward
    gathers overlap the forward pass; with pp > 1 nothing overlaps (DeepSpeed's pipeline engine
    reduces after the flush, as Megatron did in the calibration runs)."""
    m = layout.grad_accum
    total = comm.per_step_s + comm.after_step_s + m * (comm.per_micro_batch_forward_s + comm.per_micro_batch_backward_s)
    if layout.pp > 1:
        return total
    r = recomputed_forwards(layout.recompute)
    backward, forward = micro_batch_s * (2 + r) / (3 + r), micro_batch_s / (3 + r)
    return (hidden_remainder(comm.per_step_s, backward) + comm.after_step_s
            + m * hidden_remainder(comm.per_micro_batch_forward_s, forward)
            + m * hidden_remainder(comm.per_micro_batch_backward_s, backward))


def hidden_remainder(comm_s: float, window_s: float) -> float:
    """What of ``comm_s`` stays exposed when it runs beside ``window_s`` of compute: only
    OVERLAP_EFFICIENCY of the overlapping part is hidden (collectives and GEMMs share SMs and HBM)."""
    return comm_s - OVERLAP_EFFICIENCY * min(comm_s, window_s)


def optimizer_s(layout: Layout, job: Job) -> float:
    """Adam over the rank's optimizer shard, bound by memory bandwidth: HBM, or under offload the
    node's host memory shared by its ranks plus the PCIe copies (16-bit gradients down, parameters up)."""
    heaviest = max((stage_params(job.model, tp=layout.tp, pp=layout.pp, ep=layout.ep, stage=stage)
                    for stage in stages_to_check(layout.pp)), key=lambda rank: rank.total)
    shard_dense = heaviest.dense / (layout.dp if layout.zero_stage >= 1 else 1)
    shard_expert = heaviest.expert / (max(layout.dp // layout.ep, 1) if layout.zero_stage >= 1 else 1)
    shard = shard_dense + shard_expert
    device = job.cluster.device
    if layout.offload_optimizer:
        host_bandwidth = device.host_memory_bandwidth / job.cluster.gpus_per_node
        return shard * ADAM_STEP_BYTES / host_bandwidth + 2 * job.param_bytes * shard / device.pcie_bandwidth
    return shard * ADAM_STEP_BYTES / device.hbm_bandwidth


def micro_batch_parts(layout: Layout, job: Job) -> tuple[float, float, float, float, float]:
    """(compute, memory, tp, ep, pp) seconds of one micro-batch on the slowest stage."""
    model = job.model
    layers = stage_layer_range(model, pp=layout.pp, stage="first" if layout.pp > 1 else "only")
    tokens = job.seq * layout.micro_batch
    flops = stage_flops_per_token(model, layout, seq=job.seq) * tokens / layout.tp
    compute = flops / (job.cluster.device.peak_flops * job.constants.gemm_efficiency)
    moe_layers = moe_layers_in(model, layers)
    return (compute, memory_traffic_s(layout, job, layers=len(layers)),
            tp_comm_s(layout, job, layers=len(layers), moe_layers=moe_layers),
            ep_comm_s(layout, job, moe_layers=moe_layers), pp_comm_s(layout, job))


def bubble_fraction(layout: Layout) -> float:
    """Idle share of a 1F1B step: (p−1)/(m+p−1), interleaved (p−1)/(v·m+p−1) (Narayanan et al. 2021, §2.2)."""
    p, m, v = layout.pp, layout.grad_accum, layout.interleave
    return (p - 1) / (v * m + p - 1)


def predict_step(layout: Layout, job: Job) -> StepTime:
    """The predicted optimizer step of ``layout`` (valid, grad_accum filled) for ``job``."""
    compute, memory, tp, ep, pp = micro_batch_parts(layout, job)
    micro_batch_s = compute + memory + tp + ep + pp
    pipeline_s = (layout.grad_accum + (layout.pp - 1) / layout.interleave) * micro_batch_s
    comm = dp_comm(layout, job)
    dp_total = comm.per_step_s + comm.after_step_s + layout.grad_accum * (
        comm.per_micro_batch_forward_s + comm.per_micro_batch_backward_s)
    exposed = dp_exposed_s(comm, layout, micro_batch_s=micro_batch_s)
    step_s = pipeline_s + exposed + optimizer_s(layout, job)
    tokens = layout.global_batch * job.seq
    return StepTime(
        compute_s=compute, memory_s=memory, tp_comm_s=tp, ep_comm_s=ep, pp_comm_s=pp, micro_batch_s=micro_batch_s,
        pipeline_s=pipeline_s, dp_comm_s=dp_total, dp_exposed_s=exposed, optimizer_s=step_s - pipeline_s - exposed,
        step_s=step_s, bubble_fraction=bubble_fraction(layout), tokens_per_step=tokens,
        model_flops_per_step=job.model.flops_per_token(job.seq) * tokens,
        hardware_flops_per_step=hardware_flops_per_token(job.model, seq=job.seq, recompute=layout.recompute) * tokens,
        world=job.world, peak_flops=job.cluster.device.peak_flops)
