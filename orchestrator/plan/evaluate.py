"""One layout, judged: its issues, its memory per rank, and its predicted step.

``evaluate`` fills grad_accum from the job's batch, validates, estimates memory (all four models
for PPO), refuses layouts over the device or host memory, and predicts the step.

Worked example::

    job = Job(model=get_model("gpt3-175b"), cluster=make_cluster(gpu="a100-80g", gpus=1024),
              seq=2048, batch=BatchTarget.from_tokens(3.2e6, seq=2048))
    evaluate(Layout(tp=8, pp=16, dp=8, zero_stage=1, recompute="full"), job).ok   # True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from orchestrator.config.cluster import GiB
from orchestrator.plan.job import Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.memory import MemoryEstimate, estimate_memory, host_limit_bytes
from orchestrator.plan.ppo import ppo_memory, ppo_step
from orchestrator.plan.timing import StepTime, predict_step
from orchestrator.plan.validate import Issue, check_layout, error, fill_grad_accum


@dataclass(frozen=True)
class Evaluation:
    layout: Layout
    issues: tuple[Issue, ...]
    memory: Optional[MemoryEstimate] = None
    time: Optional[StepTime] = None
    ppo_models_gib: dict[str, float] = field(default_factory=dict)
    """PPO only: device GiB of each model's parameters, gradients and optimizer state."""

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def plan_only(self) -> list[Issue]:
        """Limits of this project's runtime: the layout is priced, ``orchestrate run`` refuses it."""
        return [issue for issue in self.issues if issue.severity == "plan_only"]

    @property
    def refusals(self) -> list[Issue]:
        """What stops ``orchestrate run``: the errors (memory included) and the runtime's limits."""
        return self.errors + self.plan_only

    @property
    def warnings(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "warning"]

    @property
    def ok(self) -> bool:
        """The planner can rank it (a "plan only" layout is ranked, and marked)."""
        return not self.errors and self.time is not None

    @property
    def reason(self) -> Optional[Issue]:
        """The first error: why this layout was rejected."""
        return self.errors[0] if self.errors else None


def memory_error(estimate: MemoryEstimate, job: Job, layout: Optional[Layout] = None) -> Issue:
    """Over device memory: the numbers, the breakdown, and what would shrink the largest part."""
    parts = estimate.breakdown.gib()
    largest = max(("params", "grads", "optimizer", "activations"), key=parts.get)
    more_ep = (job.model.is_moe and layout is not None and layout.ep < job.model.n_experts)
    fix = ("use recompute full, a smaller micro-batch, or more tp (with sequence parallel)"
           if largest == "activations" else
           f"use more ep (ep {layout.ep} keeps {job.model.n_experts // layout.ep} of {job.model.n_experts} experts "
           f"per rank), a higher ZeRO stage, optimizer offload, or more tp / pp" if more_ep else
           "use a higher ZeRO stage, optimizer offload, or more tp / pp")
    where = f" on the {estimate.stage} stage" if estimate.stage != "only" else ""
    listing = ", ".join(f"{name} {value:.1f}" for name, value in parts.items())
    return error("memory", f"memory {estimate.total / GiB:.1f} GiB per GPU{where} > {estimate.limit_bytes / GiB:.1f} "
                           f"GiB usable of {job.cluster.device_memory_bytes / GiB:.1f} GiB ({listing} GiB): {fix}")


def host_memory_error(estimate: MemoryEstimate, job: Job) -> Optional[Issue]:
    limit = host_limit_bytes(job)
    if estimate.cpu_bytes_per_node <= limit:
        return None
    return error("host_memory", f"offloaded state needs {estimate.cpu_bytes_per_node / GiB:.0f} GiB of host RAM per "
                                f"node > {limit / GiB:.0f} GiB usable: use a higher ZeRO stage or more nodes")


def evaluate(layout: Layout, job: Job, *, time_when_over_memory: bool = True,
             numbers_when_refused: bool = False) -> Evaluation:
    """Judge ``layout`` (dp resolved) for ``job``; grad_accum is derived from the job's batch.

    ``numbers_when_refused``: estimate memory and time even when the layout has errors (heads not
    divisible by tp, a wrong world, ZeRO 2 under a pipeline...), so a user asking about one fixed
    layout gets its numbers beside every reason; only degrees out of range (below 1) give none.
    """
    layout = fill_grad_accum(layout, job)
    issues = check_layout(layout, job)
    refused = any(issue.severity == "error" for issue in issues)
    if refused and not (numbers_when_refused and _priceable(issues)):
        return Evaluation(layout, tuple(issues))
    per_model: dict[str, float] = {}
    if job.ppo:
        memory, per_model = ppo_memory(layout, job)
    else:
        memory = estimate_memory(layout, job)
    problems = [memory_error(memory, job, layout)] if not memory.fits else []
    host = host_memory_error(memory, job)
    problems += [host] if host else []
    if problems and not (time_when_over_memory or numbers_when_refused):
        return Evaluation(layout, tuple(problems + issues), memory, None, per_model)
    step = predict_step(layout, job)
    step = ppo_step(step, layout) if job.ppo else step
    return Evaluation(layout, tuple(problems + issues), memory, step, per_model)


def _priceable(issues: list[Issue]) -> bool:
    """The memory and time models can run: every degree is at least 1 and no stage is empty."""
    unpriceable = ("range", "pp_empty")
    return not any(issue.code in unpriceable for issue in issues if issue.severity == "error")
