"""One fixed layout, reported in full: every reason it is refused, and its numbers anyway.

A user asking "why doesn't my layout fit?" gets the memory breakdown, the parameters per GPU,
the stage split, the bubble and the step time beside the reasons, in text and JSON
(``orchestrate plan`` with every degree fixed). Numbers are missing only where the models cannot
run: a degree below 1, or more stages than layers.

Worked example (the GPT-4 layout the rumour describes, ``tests/unit/plan/test_report.py``):
gpt4-moe on 25,088 A100-80G, TP 8 × PP 16 × DP 196, EP 1, ZeRO 0, 60M-token batches of 8k
sequences, uneven stages 8 × 8 + 8 × 7 layers: 37 micro-batches per step, 1F1B bubble
15 / (37 + 15) = 28.8 %, 15.0B parameters on a first-stage GPU (1.8T / 128 = 14.1B, the first
stages holding 8 of the 7.5 average layers) = 28 GiB in bf16 — refused, since with Adam's states
it needs about 290 GiB of 76 usable.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from orchestrator.config.cluster import GiB
from orchestrator.plan.artifact import Prediction, predict
from orchestrator.plan.evaluate import Evaluation
from orchestrator.plan.job import Job
from orchestrator.plan.partition import layers_per_stage, padded_vocab, stage_params, stages_to_check
from orchestrator.plan.search import describe_layout


@dataclass(frozen=True)
class RankShare:
    """Parameters one GPU of a stage holds before ZeRO shards them (tp and pp shards, ep experts)."""

    stage: str
    dense: float
    expert: float
    """This rank's experts: n_experts / ep of each MoE layer, each split over tp."""

    @property
    def total(self) -> float:
        return self.dense + self.expert


@dataclass(frozen=True)
class LayoutReport:
    """Everything the planner knows about one layout, refused or not."""

    name: str
    layout: dict
    runnable: bool
    """No error and nothing beyond this project's runtime: ``orchestrate run`` would launch it."""
    fits: Optional[bool]
    """Device (and host) memory within the usable limit; None when it could not be estimated."""
    errors: list[dict]
    plan_only: list[dict]
    warnings: list[dict]
    notes: list[dict]
    layers_per_stage: list[int]
    padded_vocab: int
    params_per_gpu: Optional[RankShare] = None
    """The heaviest stage's rank (the one the memory figure is for)."""
    memory_limit_gib: float = 0.0
    prediction: Optional[Prediction] = None
    ppo_models_gib: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON: the layout's fields and the flat numbers ``Plan.row`` has, plus every reason."""
        row = {"layout_name": self.name, **self.layout, "runnable": self.runnable, "fits": self.fits,
               "errors": self.errors, "plan_only": self.plan_only, "warnings": self.warnings, "notes": self.notes,
               "layers_per_stage": self.layers_per_stage, "padded_vocab": self.padded_vocab,
               "memory_limit_gib": self.memory_limit_gib}
        if self.params_per_gpu is not None:
            share = self.params_per_gpu
            row["params_per_gpu"] = {"stage": share.stage, "dense": share.dense, "expert": share.expert,
                                     "total": share.total, "gib_16bit": round(2 * share.total / GiB, 3)}
        if self.prediction is not None:
            row.update(asdict(self.prediction))
        if self.ppo_models_gib:
            row["ppo_models_gib"] = dict(self.ppo_models_gib)
        return row


def _issues(evaluation: Evaluation, severity: str) -> list[dict]:
    return [{"code": issue.code, "message": issue.message} for issue in evaluation.issues
            if issue.severity == severity]


def rank_share(evaluation: Evaluation, job: Job) -> RankShare:
    """The parameters of the rank the memory estimate describes (else the heaviest stage's)."""
    layout = evaluation.layout
    stages = [evaluation.memory.stage] if evaluation.memory is not None else list(stages_to_check(layout.pp))
    shares = [(stage, stage_params(job.model, tp=layout.tp, pp=layout.pp, ep=layout.ep, stage=stage))
              for stage in stages]
    stage, rank = max(shares, key=lambda item: item[1].total)
    return RankShare(stage=stage, dense=rank.dense, expert=rank.expert)


def layout_report(evaluation: Evaluation, job: Job) -> LayoutReport:
    """The full report of ``evaluation`` (from ``evaluate(..., numbers_when_refused=True)``)."""
    layout = evaluation.layout
    priced = evaluation.time is not None and evaluation.memory is not None
    fits = None if evaluation.memory is None else not any(
        issue.code in ("memory", "host_memory") for issue in evaluation.errors)
    share = rank_share(evaluation, job) if min(layout.tp, layout.pp, layout.ep) >= 1 \
        and layout.pp <= job.model.n_layers else None
    return LayoutReport(
        name=describe_layout(layout), layout=asdict(layout), runnable=not evaluation.refusals, fits=fits,
        errors=_issues(evaluation, "error"), plan_only=_issues(evaluation, "plan_only"),
        warnings=_issues(evaluation, "warning"), notes=_issues(evaluation, "note"),
        layers_per_stage=list(layers_per_stage(job.model.n_layers, max(layout.pp, 1))),
        padded_vocab=padded_vocab(job.model.vocab, max(layout.tp, 1)), params_per_gpu=share,
        memory_limit_gib=round(evaluation.memory.limit_bytes / GiB, 3) if evaluation.memory else 0.0,
        prediction=predict(evaluation, job) if priced else None, ppo_models_gib=dict(evaluation.ppo_models_gib))


def storage(job: Job) -> str:
    """The storage bandwidths the checkpoint time assumes, for the text reports."""
    aggregate, per_node = job.cluster.storage
    return f"storage {aggregate / 1e9:g} GB/s in all, {per_node / 1e9:g} GB/s per node"


def describe_report(report: LayoutReport, job: Job) -> str:
    """The text form: verdict, every reason, then the numbers."""
    verdict = "runs" if report.runnable else "refused"
    lines = [f"{job.model.name} on {job.cluster.describe()}: {report.name} — {verdict}"]
    lines += [f"  error: {issue['message']}" for issue in report.errors]
    lines += [f"  plan only: {issue['message']} (orchestrate run refuses it)" for issue in report.plan_only]
    if report.params_per_gpu is not None:
        share = report.params_per_gpu
        lines.append(f"  params   {share.total / 1e9:.3g}B per GPU ({share.stage} stage: {share.dense / 1e9:.3g}B "
                     f"dense + {share.expert / 1e9:.3g}B expert) = {2 * share.total / GiB:.1f} GiB in 16-bit")
    p = report.prediction
    if p is not None:
        lines += [f"  memory   {p.memory_gib:.1f} GiB per GPU of {report.memory_limit_gib:.1f} usable "
                  f"({p.memory_stage} stage): " + ", ".join(f"{k} {v:.2f}" for k, v in p.memory_breakdown_gib.items())
                  + (f"; host {p.cpu_memory_gib_per_node:.0f} GiB per node" if p.cpu_memory_gib_per_node else ""),
                  f"  step     {p.step_time_s:.3g} s, {p.tokens_per_s:,.0f} tokens/s, MFU {p.mfu:.1%}, "
                  f"bubble {p.bubble_fraction:.1%}, {p.days_to_train:.1f} days for {job.train_tokens / 1e9:g}B tokens",
                  "  time     " + ", ".join(f"{k} {v:.3g}" for k, v in p.time_breakdown_s.items()),
                  f"  ckpt     {p.checkpoint_gib_per_rank:.3g} GiB per rank, {p.checkpoint_total_gib:,.0f} GiB in all, "
                  f"written in {p.checkpoint_save_s:.3g} s ({storage(job)})"]
    else:
        lines.append("  (no numbers: the memory and time models need every degree ≥ 1 and no empty stage)")
    lines.append(f"  stages   {report.layers_per_stage} layers, vocab padded to {report.padded_vocab}")
    if report.ppo_models_gib:
        lines.append("  ppo      " + ", ".join(f"{k} {v:.2f} GiB" for k, v in report.ppo_models_gib.items()))
    lines += [f"  warning: {issue['message']}" for issue in report.warnings]
    lines += [f"  note: {issue['message']}" for issue in report.notes]
    return "\n".join(lines)
