"""The plan as an artifact: a frozen dataclass that round-trips through JSON.

It holds what the runtime needs (the model, the cluster, the ``layout`` with the same fields as a
recipe's ``PHASE.layout``, the padded vocabulary and the stage split) and what the planner
predicted, so a run directory records why it was laid out the way it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import __version__
from orchestrator.config.cluster import GiB
from orchestrator.config.loader import from_dict, to_dict
from orchestrator.config.model import GPTConfig
from orchestrator.plan.checkpoint import checkpoint_cost
from orchestrator.plan.evaluate import Evaluation
from orchestrator.plan.job import Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.partition import layers_per_stage, padded_vocab


@dataclass(frozen=True)
class Prediction:
    """What the planner expects of the layout."""

    memory_gib: float
    """Device memory per GPU on the heaviest stage."""
    memory_breakdown_gib: dict[str, float]
    """params, grads, optimizer, activations, buffers."""
    memory_stage: str
    cpu_memory_gib_per_node: float
    """Host RAM for offloaded optimizer (and PPO frozen-model) state."""
    step_time_s: float
    tokens_per_s: float
    mfu: float
    tflops_per_gpu: float
    """Hardware TFLOP/s per GPU, counting recomputation."""
    bubble_fraction: float
    days_to_train: float
    time_breakdown_s: dict[str, float]
    checkpoint_gib_per_rank: float = 0.0
    """What the heaviest rank writes per checkpoint (fp32 masters and Adam moments, ``plan.checkpoint``)."""
    checkpoint_total_gib: float = 0.0
    checkpoint_save_s: float = 0.0
    """Seconds to write one checkpoint at the cluster's storage bandwidth."""


@dataclass(frozen=True)
class Plan:
    """One planned job: inputs, the chosen layout, and the predictions."""

    model: GPTConfig
    gpu: str
    nodes: int
    gpus_per_node: int
    seq: int
    precision: str
    accounting: str
    layout: Layout
    padded_vocab: int
    layers_per_stage: list[int]
    train_tokens: float
    prediction: Prediction
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plan_only: list[str] = field(default_factory=list)
    """Why this project's runtime cannot run the layout (empty: it can); ``orchestrate run`` refuses it."""
    ppo: bool = False
    ppo_models_gib: dict[str, float] = field(default_factory=dict)
    version: str = __version__

    def row(self) -> dict:
        """A flat summary (``orchestrate plan --json``)."""
        layout, prediction = self.layout, self.prediction
        return {
            "tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "ep": layout.ep, "zero_stage": layout.zero_stage,
            "offload_optimizer": layout.offload_optimizer, "micro_batch": layout.micro_batch,
            "grad_accum": layout.grad_accum, "micro_batches": layout.grad_accum, "global_batch": layout.global_batch,
            "recompute": layout.recompute, "interleave": layout.interleave,
            "sequence_parallel": layout.sequence_parallel, "uneven_pipeline": layout.uneven_pipeline,
            "layers_per_stage": list(self.layers_per_stage), "bubble_fraction": prediction.bubble_fraction,
            "memory_gib": prediction.memory_gib, "memory_breakdown_gib": prediction.memory_breakdown_gib,
            "cpu_memory_gib_per_node": prediction.cpu_memory_gib_per_node, "step_time_s": prediction.step_time_s,
            "tokens_per_s": prediction.tokens_per_s, "mfu": prediction.mfu,
            "tflops_per_gpu": prediction.tflops_per_gpu, "days_to_train": prediction.days_to_train,
            "checkpoint_gib_per_rank": prediction.checkpoint_gib_per_rank,
            "checkpoint_total_gib": prediction.checkpoint_total_gib, "checkpoint_save_s": prediction.checkpoint_save_s,
            "warnings": list(self.warnings), "plan_only": list(self.plan_only),
        }

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return from_dict(cls, json.loads(text), "plan")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_json(Path(path).read_text())


def _round(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def predict(evaluation: Evaluation, job: Job) -> Prediction:
    """The numbers of an evaluation that has its memory and time (``evaluation.time`` set)."""
    assert evaluation.time is not None and evaluation.memory is not None
    step, memory = evaluation.time, evaluation.memory
    parts = {"compute": step.compute_s, "memory": step.memory_s, "tp": step.tp_comm_s, "ep": step.ep_comm_s,
             "pp": step.pp_comm_s}
    time_breakdown = {name + "_per_micro_batch": _round(value) for name, value in parts.items()}
    time_breakdown.update(pipeline=_round(step.pipeline_s), dp_exposed=_round(step.dp_exposed_s),
                          dp_total=_round(step.dp_comm_s), optimizer=_round(step.optimizer_s))
    checkpoint = checkpoint_cost(evaluation.layout, job)
    return Prediction(
        memory_gib=_round(memory.total / GiB), memory_breakdown_gib=memory.breakdown.gib(),
        memory_stage=memory.stage, cpu_memory_gib_per_node=_round(memory.cpu_bytes_per_node / GiB),
        step_time_s=_round(step.step_s), tokens_per_s=_round(step.tokens_per_s), mfu=_round(step.mfu, 3),
        tflops_per_gpu=_round(step.tflops_per_gpu), bubble_fraction=_round(step.bubble_fraction, 3),
        days_to_train=_round(step.days_to_train(job.train_tokens)), time_breakdown_s=time_breakdown,
        checkpoint_gib_per_rank=_round(checkpoint.bytes_per_rank / GiB),
        checkpoint_total_gib=_round(checkpoint.total_bytes / GiB), checkpoint_save_s=_round(checkpoint.save_s))


def make_plan(evaluation: Evaluation, job: Job) -> Plan:
    """The plan of an evaluated layout that fits (``evaluation.time`` and ``memory`` set)."""
    if evaluation.time is None or evaluation.memory is None:
        raise ValueError("a plan needs a layout that validated; this one has errors: "
                         + "; ".join(issue.message for issue in evaluation.errors))
    layout = evaluation.layout
    return Plan(model=job.model, gpu=job.cluster.device.name, nodes=job.cluster.nodes,
                gpus_per_node=job.cluster.gpus_per_node, seq=job.seq, precision=job.precision,
                accounting=job.accounting, layout=layout, padded_vocab=padded_vocab(job.model.vocab, layout.tp),
                layers_per_stage=list(layers_per_stage(job.model.n_layers, layout.pp)), train_tokens=job.train_tokens,
                prediction=predict(evaluation, job), warnings=[i.message for i in evaluation.warnings],
                notes=[i.message for i in evaluation.issues if i.severity == "note"],
                plan_only=[i.message for i in evaluation.plan_only], ppo=job.ppo,
                ppo_models_gib=dict(evaluation.ppo_models_gib))
