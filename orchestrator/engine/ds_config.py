"""The DeepSpeed JSON of a phase or a plan: one function, ``build_ds_config``, writes it for the
runner (``PHASE/ds_config.json``, which every rank reads and hands to ``deepspeed.initialize``
unchanged), for ``orchestrate config -o FILE`` and for ``build_runtime`` called directly. Pure
Python (no torch).

Field names follow DeepSpeed's config reference (deepspeed.ai/docs/config-json). The batch
triple obeys DeepSpeed's identity train_batch_size = micro_batch × grad_accum × dp, where dp is
the data-parallel size (world / (tp · pp)), not the world size.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal, Optional

from orchestrator.config.model import GPTConfig
from orchestrator.plan.layout import Layout
from orchestrator.plan.memory import planned_bucket_elements

if TYPE_CHECKING:
    from orchestrator.config.run import ClusterConfig, RunConfig

Precision = Literal["fp32", "bf16", "fp16"]
DS_CONFIG_FILE = "ds_config.json"
STEPS_PER_PRINT = 10**9
"""DeepSpeed's own step log is off: the train loop logs every step it is asked to."""


def zero_section(layout: Layout, *, bucket_elements: Optional[int] = None, overlap_comm: bool = False) -> dict:
    """``zero_optimization``: the stage, overlap and bucket sizes, and CPU offload of optimizer state.

    ``bucket_elements`` (the planner's ``memory.planned_bucket_elements``) sets the reduce /
    all-gather buckets, and under ZeRO-3 the prefetch bucket, the live-parameter cap and the reuse
    distance (a parameter reused within that many elements is not released), to what the memory
    plan counted; None keeps DeepSpeed's defaults (5e8-element buckets, 1e9 live and reuse).
    ``overlap_comm`` overlaps gradient reduction with the backward pass on GPUs (the time model
    assumes it when pp = 1).
    """
    section: dict = {"stage": layout.zero_stage}
    if layout.zero_stage >= 1:
        section.update(reduce_scatter=True, overlap_comm=overlap_comm, contiguous_gradients=True)
        if bucket_elements:
            section.update(reduce_bucket_size=bucket_elements, allgather_bucket_size=bucket_elements)
    if layout.zero_stage == 3:
        section.update(stage3_gather_16bit_weights_on_model_save=True)
        if bucket_elements:
            section.update(stage3_prefetch_bucket_size=bucket_elements, stage3_max_live_parameters=bucket_elements,
                           stage3_max_reuse_distance=bucket_elements)
    if layout.offload_optimizer:
        section["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    return section


def precision_section(precision: Precision, layout: Layout) -> dict:
    """``bf16`` / ``fp16`` and, for 16-bit training under ZeRO ≥ 1, ``data_types.grad_accum_dtype:
    fp32``: gradients are summed over the micro-batches in fp32 (what the memory plan counts).

    DeepSpeed 0.19 (``engine._do_optimizer_sanity_check``) honours it as follows: ZeRO 1 in bf16
    builds its ``BF16_Optimizer`` (fp32 gradient buffers), ZeRO 1 with offload and ZeRO 2/3 keep
    fp32 gradient partitions (``gradient_accumulation_dtype``); without ZeRO it raises "unsupported
    mix" — there the gradient of each micro-batch stays bf16, so the validator allows 16-bit ZeRO 0
    only with one micro-batch per step (``plan.validate``, code ``bf16_accumulation``).
    """
    if precision == "fp32":
        return {}
    section: dict = {"bf16": {"enabled": True}} if precision == "bf16" else \
        {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}}
    if layout.zero_stage >= 1:
        section["data_types"] = {"grad_accum_dtype": "fp32"}
    return section


def monitor_section(*, tensorboard_dir: Optional[str], wandb_project: Optional[str], job_name: str,
                    csv_dir: Optional[str] = None) -> dict:
    """DeepSpeed's own monitors; the train loop also writes a JSONL file of its own."""
    section: dict = {}
    if csv_dir:
        section["csv_monitor"] = {"enabled": True, "output_path": csv_dir, "job_name": job_name}
    if tensorboard_dir:
        section["tensorboard"] = {"enabled": True, "output_path": tensorboard_dir, "job_name": job_name}
    if wandb_project:
        section["wandb"] = {"enabled": True, "project": wandb_project, "group": job_name}
    return section


def pipeline_section(layout: Layout, *, model: GPTConfig) -> dict:
    """The pipeline engine's options. An MoE model under tp > 1 turns DeepSpeed's tp-partitioned
    stage messages off: that path sends only a stage's first output split over tp and asserts the
    others need no gradient, and the MoE aux loss carried beside the hidden state does
    (``model.pipeline``). The planner prices whole messages anyway (``Job.scatter_gather_p2p``)."""
    section: dict = {"activation_checkpoint_interval": 1 if layout.recompute == "full" else 0}
    if model.is_moe and layout.tp > 1:
        section.update(pipe_partitioned=False, grad_partitioned=False)
    return section


def optimizer_clips(layout: Layout, precision: str) -> bool:
    """Whether our AdamW clips by the global gradient norm itself (and DeepSpeed's
    ``gradient_clipping`` is 0): only with ZeRO 0 in fp32, where DeepSpeed hands the optimizer the
    model's own parameters; everywhere else DeepSpeed clips its fp32 master gradients."""
    return layout.zero_stage == 0 and precision == "fp32"


def build_ds_config(layout: Layout, *, model: GPTConfig, precision: Precision = "fp32", gpu: bool = False,
                    grad_clip: float = 1.0, job_name: str = "orchestrator", tensorboard_dir: Optional[str] = None,
                    wandb_project: Optional[str] = None, csv_dir: Optional[str] = None) -> dict:
    """The DeepSpeed config dict the engine runs ``model`` under ``layout`` with (dp resolved).

    - the batch triple, ZeRO stage, offload, precision, pipeline and activation checkpointing;
    - the reduce / all-gather (ZeRO-3: prefetch, live, reuse) buckets the memory plan counted
      (``plan.memory.planned_bucket_elements``), not DeepSpeed's 5e8-element defaults;
    - ``overlap_comm`` on GPUs (the time model assumes the gradient reduction overlaps the backward);
    - ``gradient_clipping`` = ``grad_clip``, or 0 where our optimizer clips (``optimizer_clips``);
    - ``zero_allow_untested_optimizer``: the engine's optimizer is torch's AdamW plus a skip guard
      (``engine.optim.GuardedAdamW``), and DeepSpeed vets ZeRO optimizers by exact type.

    The optimizer and LR schedule are not in the JSON: the runtime builds AdamW with our own
    parameter groups (no decay on biases and norms, expert groups for MoE) and passes it to
    ``deepspeed.initialize``, so the same schedule code serves every layout.
    """
    config: dict = {
        "train_batch_size": layout.global_batch,
        "train_micro_batch_size_per_gpu": layout.micro_batch,
        "gradient_accumulation_steps": layout.grad_accum,
        "gradient_clipping": 0.0 if optimizer_clips(layout, precision) else grad_clip,
        "steps_per_print": STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
        "zero_optimization": zero_section(layout, bucket_elements=planned_bucket_elements(model, layout),
                                          overlap_comm=gpu),
        "zero_allow_untested_optimizer": True,
        **precision_section(precision, layout),
        **monitor_section(tensorboard_dir=tensorboard_dir, wandb_project=wandb_project, job_name=job_name,
                          csv_dir=csv_dir),
    }
    if layout.pp > 1:
        config["pipeline"] = pipeline_section(layout, model=model)
    if layout.recompute != "none":
        config["activation_checkpointing"] = {
            # with sequence parallelism the checkpointed inputs are already split over tp
            "partition_activations": layout.tp > 1 and layout.recompute == "full" and not layout.sequence_parallel,
            "contiguous_memory_optimization": False,
            "cpu_checkpointing": False,
            "number_checkpoints": None,
            "synchronize_checkpoint_boundary": False,
            "profile": False,
        }
    if layout.zero_stage >= 1 and layout.offload_optimizer:
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def cluster_precision(cluster: "ClusterConfig") -> Precision:
    """The precision a cluster config trains in: ``cluster.precision``, with auto meaning bf16 on
    GPUs. auto on a CPU is settled by measurement (``engine.precision.resolve_run_precision``,
    which ``orchestrate run`` applies before anything reads this)."""
    if cluster.precision != "auto":
        return cluster.precision
    if cluster.device_type == "cuda":
        return "bf16"
    raise ValueError("cluster.precision=auto on gpu: cpu is chosen by measuring this machine's bf16 and fp32 "
                     "matmuls (`orchestrate run` does it): set cluster.precision=fp32 or bf16 to plan without it")


def phase_ds_config(config: "RunConfig", *, phase: str, layout: Layout) -> dict:
    """``build_ds_config`` for one phase of a run, ``layout`` resolved against the cluster's world:
    what the runner writes to ``PHASE/ds_config.json``."""
    return build_ds_config(layout, model=config.model, precision=cluster_precision(config.cluster),
                           gpu=config.cluster.device_type == "cuda", grad_clip=config.phase(phase).optim.grad_clip,
                           job_name=f"{config.name}-{phase}")


def ds_config_text(config: dict) -> str:
    """The JSON text every writer of a DeepSpeed config uses (so equal dicts give equal bytes)."""
    return json.dumps(config, indent=2) + "\n"


def config_precision(config: dict) -> Precision:
    """The precision a DeepSpeed config trains in (its ``bf16`` / ``fp16`` sections)."""
    if config.get("bf16", {}).get("enabled"):
        return "bf16"
    if config.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


def check_ds_config(config: dict, layout: Layout, *, source: str) -> None:
    """Refuse a DeepSpeed config whose batch triple or ZeRO stage is not the layout's (a
    ``ds_config.json`` left over from another layout or world), naming the fields and the fix."""
    expected = {"train_batch_size": layout.global_batch, "train_micro_batch_size_per_gpu": layout.micro_batch,
                "gradient_accumulation_steps": layout.grad_accum}
    found = {key: config.get(key) for key in expected}
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if found != expected or stage != layout.zero_stage:
        raise ValueError(f"{source} says {found} and ZeRO stage {stage}, but the layout on this world "
                         f"(tp {layout.tp} × pp {layout.pp} × dp {layout.dp}) needs {expected} and ZeRO stage "
                         f"{layout.zero_stage}: start the phase with `orchestrate run`, which rewrites it")
