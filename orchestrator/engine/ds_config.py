"""The DeepSpeed JSON for a layout. Pure Python (no torch): the planner writes it, the runtime
passes the same dict to ``deepspeed.initialize``.

Field names follow DeepSpeed's config reference (deepspeed.ai/docs/config-json). The batch
triple obeys DeepSpeed's identity train_batch_size = micro_batch × grad_accum × dp, where dp is
the data-parallel size (world / (tp · pp)), not the world size.
"""
from __future__ import annotations

from typing import Literal, Optional

from orchestrator.plan.layout import Layout

Precision = Literal["fp32", "bf16", "fp16"]


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


def precision_section(precision: Precision) -> dict:
    if precision == "bf16":
        return {"bf16": {"enabled": True}}
    if precision == "fp16":
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}}
    return {}


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


def build_ds_config(layout: Layout, *, precision: Precision = "fp32", grad_clip: float = 1.0,
                    tensorboard_dir: Optional[str] = None, wandb_project: Optional[str] = None,
                    job_name: str = "orchestrator", steps_per_print: int = 10**9,
                    bucket_elements: Optional[int] = None, overlap_comm: bool = False,
                    csv_dir: Optional[str] = None) -> dict:
    """The DeepSpeed config dict for ``layout`` (dp must be resolved).

    The optimizer and LR schedule are not in the JSON: the runtime builds AdamW with our own
    parameter groups (no decay on biases and norms, expert groups for MoE) and passes it to
    ``deepspeed.initialize``, so the same schedule code serves every layout.
    """
    config: dict = {
        "train_batch_size": layout.global_batch,
        "train_micro_batch_size_per_gpu": layout.micro_batch,
        "gradient_accumulation_steps": layout.grad_accum,
        "gradient_clipping": grad_clip,
        "steps_per_print": steps_per_print,
        "wall_clock_breakdown": False,
        "zero_optimization": zero_section(layout, bucket_elements=bucket_elements, overlap_comm=overlap_comm),
        **precision_section(precision),
        **monitor_section(tensorboard_dir=tensorboard_dir, wandb_project=wandb_project, job_name=job_name,
                          csv_dir=csv_dir),
    }
    if layout.pp > 1:
        config["pipeline"] = {"activation_checkpoint_interval": 1 if layout.recompute == "full" else 0}
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
