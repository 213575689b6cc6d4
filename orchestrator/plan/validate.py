"""Is a layout runnable for this model on this cluster? Each failure is one ``Issue`` whose
message names the numbers and the fix.

Errors make a layout impossible; "plan only" issues are limits of this project's runtime (the
planner can price the layout, ``orchestrate run`` and ``build_runtime`` refuse it); warnings run
but cost speed; notes report what the planner adjusted (padded vocabulary, rounded batch).

One validator: ``check_runtime`` holds every rule the model and the layout decide, and the
runtime's limits; ``build_runtime`` calls it on each rank (``require_runtime``), and
``check_layout`` (the planner's, which adds what needs the cluster, the batch and the sequence)
calls it too, so ``orchestrate plan``, ``orchestrate run`` (before any process starts) and the
rank refuse with the same words.
Sources: Megatron's grid world = tp · pp · dp (Narayanan et al. 2021, §3); DeepSpeed's limits
(its ``PipelineEngine`` asserts ZeRO < 2, its engine refuses native MoE under ZeRO-3); the 1F1B
schedule needs at least pp micro-batches to fill the pipeline (Narayanan et al. 2021, §2.2.1).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Literal

from orchestrator.config.model import GPTConfig
from orchestrator.plan.job import BATCH_TOLERANCE, Job
from orchestrator.plan.layout import Layout, LayoutError
from orchestrator.plan.partition import layers_per_stage, padded_vocab

Severity = Literal["error", "plan_only", "warning", "note"]
HEADS = ("lm", "scalar")
"""The model's output heads: next-token logits, or one value per position (reward model, critic)."""
RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class Issue:
    severity: Severity
    code: str
    """A stable key for grouping rejections (``heads_tp``, ``memory``, ...)."""
    message: str

    def __str__(self) -> str:
        return f"{self.severity.replace('_', ' ')}: {self.message}"


def error(code: str, message: str) -> Issue:
    return Issue("error", code, message)


def warning(code: str, message: str) -> Issue:
    return Issue("warning", code, message)


def note(code: str, message: str) -> Issue:
    return Issue("note", code, message)


def plan_only(code: str, message: str) -> Issue:
    """A layout the planner can price but this project's runtime cannot run."""
    return Issue("plan_only", code, message)


@lru_cache(maxsize=1024)
def _divisors(n: int) -> tuple[int, ...]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return tuple(sorted(set(small + [n // d for d in small])))


def divisors(n: int) -> list[int]:
    """The positive divisors of n, ascending."""
    return list(_divisors(n))


def _names(values: list[int]) -> str:
    return "{" + ", ".join(map(str, values)) + "}"


def check_layout(layout: Layout, job: Job) -> list[Issue]:
    """Every issue of ``layout`` (grad_accum already filled) for ``job``; errors first.

    ``check_runtime``'s rules for the model and the layout, plus what needs the cluster (world,
    tp across nodes), the batch and the sequence length.
    """
    basic = [*_check_ranges(layout), *_check_seq_range(job)]
    if basic:  # degrees below 1 would make the other checks divide by zero
        return basic
    issues = [*_check_world(layout, job),
              *check_runtime(layout, job.model, head=job.head, ppo=job.ppo, precision=job.precision),
              *_check_tensor_cluster(layout, job), *_check_batch(layout, job),
              *_check_sequence(layout, job), *_check_moe_capacity(layout, job)]
    return _ordered(issues)


def check_runtime(layout: Layout, model: GPTConfig, *, head: str = "lm", ppo: bool = False,
                  precision: str = "fp32") -> list[Issue]:
    """What the model, the (resolved) layout and the precision alone decide: errors, and "plan
    only" limits of this project's runtime (sequence parallelism, interleaving, a scalar head under
    pp > 1). MoE runs with every tp, pp and ep DeepSpeed allows (ZeRO ≤ 1 under a pipeline, ≤ 2
    with experts). The rank calls it through ``require_runtime``."""
    basic = list(_check_ranges(layout))
    if head not in HEADS:
        basic.append(error("head", f"head {head!r}: choose one of {', '.join(HEADS)}"))
    if basic:
        return basic
    issues = [*_check_tensor(layout, model), *_check_pipeline(layout, model, head=head, ppo=ppo),
              *_check_experts(layout, model), *_check_zero(layout, model), *_check_accumulation(layout, precision)]
    return _ordered(issues)


def runtime_refusals(issues: list[Issue]) -> list[Issue]:
    """What stops a run: errors and the runtime's limits."""
    return [issue for issue in issues if issue.severity in ("error", "plan_only")]


def require_runtime(layout: Layout, model: GPTConfig, *, head: str = "lm", precision: str = "fp32") -> None:
    """Raise ``LayoutError`` with every reason this runtime cannot run ``layout`` for ``model``."""
    refusals = runtime_refusals(check_runtime(layout, model, head=head, precision=precision))
    if refusals:
        raise LayoutError("; ".join(issue.message for issue in refusals))


def _ordered(issues: list[Issue]) -> list[Issue]:
    order = {"error": 0, "plan_only": 1, "warning": 2, "note": 3}
    return sorted(issues, key=lambda issue: order[issue.severity])


def _check_ranges(layout: Layout) -> Iterator[Issue]:
    for name, value, valid in layout_range_errors(layout):
        yield error("range", f"{name} {value!r} {valid}")


def layout_range_errors(layout: Layout) -> list[tuple[str, object, str]]:
    """(field, value, valid range) of each layout field out of range; a run config reports them
    under their dotted key (``pretrain.layout.tp``)."""
    found = []
    for name in ("tp", "pp", "dp", "ep", "micro_batch", "grad_accum", "interleave"):
        value = getattr(layout, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            found.append((name, value, "must be an integer >= 1" + (" (or dp -1: the rest)" if name == "dp" else "")))
    if layout.zero_stage not in (0, 1, 2, 3):
        found.append(("zero_stage", layout.zero_stage, "must be 0, 1, 2 or 3"))
    if layout.recompute not in RECOMPUTE:
        found.append(("recompute", layout.recompute, f"must be one of {', '.join(RECOMPUTE)}"))
    return found


def _check_seq_range(job: Job) -> Iterator[Issue]:
    if job.seq < 1:
        yield error("range", f"sequence length {job.seq} must be >= 1")


def _check_world(layout: Layout, job: Job) -> Iterator[Issue]:
    if layout.world != job.world:
        fix = (f"use dp {job.world // (layout.tp * layout.pp)}" if job.world % (layout.tp * layout.pp) == 0
               else f"tp × pp must divide the world {job.world}")
        yield error("world", f"world {job.world} != tp {layout.tp} × pp {layout.pp} × dp {layout.dp} "
                             f"(={layout.world}): {fix}")


def _check_tensor(layout: Layout, model: GPTConfig) -> Iterator[Issue]:
    tp, valid = layout.tp, _names(divisors(math.gcd(model.n_heads, model.d_ffn)))  # tp splits heads and the MLP
    if model.n_heads % tp:
        yield error("heads_tp", f"heads {model.n_heads} not divisible by tp {tp}: use tp ∈ {valid}")
    if model.d_ffn % tp:
        yield error("ffn_tp", f"MLP width {model.d_ffn} not divisible by tp {tp}: use tp ∈ {valid}")
    if layout.sequence_parallel and tp == 1:
        yield warning("sp_tp1", "sequence_parallel has no effect with tp 1")
    elif layout.sequence_parallel:
        yield plan_only("runtime_sp", "sequence parallel: this project's runtime does not run it (Megatron-core's "
                                      "sequence-parallel collectives need CUDA): set sequence_parallel false")


def _check_tensor_cluster(layout: Layout, job: Job) -> Iterator[Issue]:
    model, tp, per_node = job.model, layout.tp, job.cluster.gpus_per_node
    if tp > per_node:
        yield warning("tp_nodes", f"tp {tp} > {per_node} GPUs per node: tensor-parallel all-reduces cross "
                                  f"nodes at {job.cluster.device.internode_bandwidth / 1e9:g} GB/s; use tp ≤ {per_node}")
    elif per_node % tp:
        yield warning("tp_nodes", f"tp {tp} does not divide {per_node} GPUs per node: some tp groups straddle "
                                  f"two nodes; use tp ∈ {_names(divisors(per_node))}")
    if tp > 1 and model.vocab % tp:
        yield note("vocab_pad", f"vocab {model.vocab} padded to {padded_vocab(model.vocab, tp)} "
                                f"(a multiple of tp {tp}) for the vocab-parallel embedding")


def _check_pipeline(layout: Layout, model: GPTConfig, *, head: str, ppo: bool) -> Iterator[Issue]:
    layers, pp, v = model.n_layers, layout.pp, layout.interleave
    if pp > layers:
        yield error("pp_empty", f"pp {pp} > {layers} layers: a stage would be empty; use pp ≤ {layers}")
        return
    yield from _check_pipeline_split(layout, model)
    if v > 1:
        yield from _check_interleave(layout, model)
    if ppo and pp > 1:
        yield error("ppo_pp", f"PPO needs whole models on each rank for rollouts: pp {pp} is not supported; "
                              f"use pp 1 with tp or ZeRO-3 to fit the four models")
    elif head != "lm" and pp > 1:
        yield plan_only("runtime_head_pp", f"head {head!r} with pp {pp}: this runtime's pipeline carries the LM "
                                           f"loss only, so the reward model and critic run with pp 1: use pp 1 "
                                           f"(tp, dp and ZeRO are fine)")


def _check_pipeline_split(layout: Layout, model: GPTConfig) -> Iterator[Issue]:
    layers, pp = model.n_layers, layout.pp
    if pp > layers or not layers % pp:
        return
    if layout.uneven_pipeline:
        yield note("pp_uneven", f"{layers} layers over pp {pp}: stages hold {list(layers_per_stage(layers, pp))}")
    else:
        even = [p for p in divisors(layers) if p > 1]
        yield error("pp_layers", f"layers {layers} not divisible by pp {pp}: use pp ∈ {_names(even)} "
                                 f"or allow uneven stages (--uneven-pipeline; layout.uneven_pipeline: true in a recipe)")


def _check_interleave(layout: Layout, model: GPTConfig) -> Iterator[Issue]:
    layers, pp, v = model.n_layers, layout.pp, layout.interleave
    if pp == 1:
        yield error("interleave", f"interleave {v} needs pp > 1 (virtual stages are pieces of a pipeline)")
        return
    if layers % (pp * v):
        valid = [w for w in divisors(layers // pp) if layers % (pp * w) == 0] if layers % pp == 0 else [1]
        yield error("interleave", f"layers {layers} not divisible by pp {pp} × interleave {v} (={pp * v}): "
                                  f"use interleave ∈ {_names(valid)}")
    if layout.grad_accum % pp:
        yield error("interleave", f"the interleaved schedule needs micro-batches {layout.grad_accum} to be a "
                                  f"multiple of pp {pp}: change the global batch or micro-batch")
    yield plan_only("runtime_interleave", f"interleave {v} is Megatron-LM's interleaved 1F1B; DeepSpeed's pipeline "
                                          f"engine, which this runtime uses, runs plain 1F1B: set interleave 1")


def _check_experts(layout: Layout, model: GPTConfig) -> Iterator[Issue]:
    ep, dp = layout.ep, layout.dp
    if not model.is_moe:
        if ep > 1:
            yield error("ep_dense", f"ep {ep} but model {model.name} has no experts: use ep 1")
        return
    if model.n_experts % ep:
        yield error("ep_experts", f"experts {model.n_experts} not divisible by ep {ep}: "
                                  f"use ep ∈ {_names(divisors(model.n_experts))}")
    if dp % ep:
        valid = [e for e in divisors(model.n_experts) if dp % e == 0]
        yield error("ep_dp", f"ep {ep} is carved out of dp {dp} and must divide it: use ep ∈ {_names(valid)}")



def _check_zero(layout: Layout, model: GPTConfig) -> Iterator[Issue]:
    zero = layout.zero_stage
    if layout.pp > 1 and zero > 1:
        yield error("zero_pp", f"DeepSpeed's pipeline engine allows ZeRO ≤ 1 (got zero {zero} with pp "
                               f"{layout.pp}): use zero 0 or 1, or pp 1")
    if model.is_moe and zero > 2:
        yield error("zero_moe", f"DeepSpeed MoE allows ZeRO ≤ 2 (got zero {zero}): use zero 2 "
                                f"with ep to shard the experts")
    if layout.offload_optimizer and zero == 0:
        yield error("offload_zero", "optimizer offload needs ZeRO ≥ 1: use zero 1, 2 or 3")


def _check_accumulation(layout: Layout, precision: str) -> Iterator[Issue]:
    """16-bit gradients summed over micro-batches lose the small ones (bf16 keeps 8 bits of
    mantissa): DeepSpeed 0.19 accumulates in fp32 (``data_types.grad_accum_dtype``, written by
    ``engine.ds_config``) only under ZeRO ≥ 1, and refuses it without ZeRO."""
    if precision != "fp32" and layout.zero_stage == 0 and layout.grad_accum > 1:
        yield error("bf16_accumulation",
                    f"{precision} with ZeRO 0 would sum the gradients of grad_accum {layout.grad_accum} micro-batches "
                    f"in {precision} (DeepSpeed accumulates in fp32 only under ZeRO ≥ 1): use zero_stage 1 (at "
                    f"dp 1 it holds the same memory), grad_accum 1, or cluster.precision=fp32")


def _check_batch(layout: Layout, job: Job) -> Iterator[Issue]:
    per_step, target = layout.micro_batch * layout.dp, job.batch.sequences
    actual = layout.global_batch
    if job.batch.exact and actual != target:
        yield error("batch", f"global batch {target:g} != micro_batch {layout.micro_batch} × grad_accum "
                             f"{layout.grad_accum} × dp {layout.dp} (={actual}): {_batch_fix(target, per_step)}")
    elif not job.batch.exact and abs(actual - target) > BATCH_TOLERANCE * target:
        yield error("batch", f"micro_batch {layout.micro_batch} × dp {layout.dp} = {per_step} sequences per "
                             f"micro-step cannot make {job.batch.describe(job.seq)} within "
                             f"{BATCH_TOLERANCE:.0%} (nearest: {actual}): use a smaller micro-batch or dp")
    elif not job.batch.exact and actual != round(target):
        yield note("batch_round", f"global batch {actual} sequences ({actual * job.seq / 1e6:.3g}M tokens), the "
                                  f"nearest multiple of micro_batch × dp = {per_step} to {job.batch.describe(job.seq)}")
    if layout.pp > 1 and layout.grad_accum < layout.pp:
        yield warning("pp_fill", f"micro-batches per step {layout.grad_accum} < pp {layout.pp}: 1F1B cannot fill "
                                 f"the pipeline (bubble {(layout.pp - 1) / (layout.grad_accum + layout.pp - 1):.0%}); "
                                 f"use ≥ {layout.pp} micro-batches (smaller micro-batch or larger batch)")


def _batch_fix(target: float, per_step: int) -> str:
    if per_step > target:
        return f"micro_batch × dp = {per_step} exceeds the batch; use a smaller micro-batch"
    lower, upper = int(target // per_step) * per_step, int(-(-target // per_step)) * per_step
    return f"use a global batch of {lower} or {upper}, or another micro-batch"


def moe_capacity(model: GPTConfig, *, tokens: int) -> int:
    """Slots per expert DeepSpeed's gate allots a micro-batch of ``tokens`` (``sharded_moe._capacity``):
    ceil(tokens / experts × capacity_factor × k) for top-k ≤ 2, at least ``MOE_MIN_CAPACITY``.

    >>> from orchestrator.config.model import get_model
    >>> moe_capacity(get_model("tiny-moe"), tokens=64)    # ceil(64 / 4 × 1.25 × 2)
    40
    """
    return max(math.ceil(tokens / model.n_experts * model.capacity_factor * min(model.top_k, 2)), MOE_MIN_CAPACITY)


MOE_MIN_CAPACITY = 4
"""``min_capacity`` of the gate ``model.moe.build_moe_ffn`` builds."""


def _check_moe_capacity(layout: Layout, job: Job) -> Iterator[Issue]:
    """Under tp > 1 DeepSpeed splits each expert's capacity slots over the tp ranks (its
    ``drop_tokens`` asserts they divide): the capacity of a micro-batch must be a multiple of tp."""
    model = job.model
    if not model.is_moe or layout.tp == 1:
        return
    capacity = moe_capacity(model, tokens=layout.micro_batch * job.seq)
    if capacity % layout.tp:
        yield error("moe_capacity_tp", f"expert capacity {capacity} slots (micro_batch {layout.micro_batch} × seq "
                                       f"{job.seq} tokens / {model.n_experts} experts × capacity_factor "
                                       f"{model.capacity_factor:g} × top-{model.top_k}) is not divisible by tp "
                                       f"{layout.tp}: DeepSpeed splits it over the tp ranks; change the micro-batch, "
                                       f"the sequence or model.capacity_factor")


def _check_sequence(layout: Layout, job: Job) -> Iterator[Issue]:
    if job.seq > job.model.ctx:
        yield error("seq_ctx", f"sequence {job.seq} > model context {job.model.ctx}: use --seq ≤ "
                               f"{job.model.ctx} or --set model.ctx={job.seq}")


def fill_grad_accum(layout: Layout, job: Job) -> Layout:
    """The layout with grad_accum set to meet the job's global batch (at least 1).

    Exact batches divide (or are left for ``check_layout`` to refuse); token batches round to the
    nearest multiple of micro_batch × dp: 3.2M tokens / 2048 = 1562.5 → 1560 with 8 × 1 per step.
    """
    per_step = max(layout.micro_batch, 1) * max(layout.dp, 1)
    steps = job.batch.sequences / per_step
    grad_accum = max(1, int(steps) if job.batch.exact and steps == int(steps) else round(steps))
    return dataclasses.replace(layout, grad_accum=grad_accum)


def errors(issues: list[Issue]) -> list[Issue]:
    return [issue for issue in issues if issue.severity == "error"]
