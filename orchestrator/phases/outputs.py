"""What a phase reads from its parents and leaves for its children.

Weights cross phases only in consolidated form (one plain-GPT state dict, ``final/model.pt``),
so a child may run under a different TP / PP / ZeRO layout from its parent: the runtime shards
the consolidated dict into whatever layout it has. Only rank 0 touches manifests.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from orchestrator.handoff.hashing import atomic_write
from orchestrator.model.gpt import GPT
from orchestrator.model.params import load_plain_state, materialize, param_shards
from orchestrator.handoff.manifest import (Manifest, complete_manifest, failed_manifest, start_manifest,
                                           verify_parent, write_manifest)

FINAL_WEIGHTS = "final/model.pt"
CONFIG_ARTIFACTS = ("run_config.yaml", "plan.json", "ds_config.json", "launch.json")


def parent_weights(run_dir: Path, *, parent: str, head: str, model: dict,
                   tokenizer_hash: Optional[str]) -> dict[str, torch.Tensor]:
    """The verified parent's consolidated state dict (every rank reads the same file)."""
    manifest = verify_parent(run_dir, parent_phase=parent, expect_head=head, expect_model=model,
                             expect_tokenizer_hash=tokenizer_hash)
    return torch.load(Path(run_dir) / parent / manifest.checkpoint, map_location="cpu", weights_only=True)


def frozen_model(config, *, head: str, state: dict, device: torch.device, dtype: torch.dtype) -> GPT:
    """A whole GPT in eval mode without gradients (reference policy, reward model), in the
    runtime's ``dtype``: its fp32 state rounded as DeepSpeed rounds the trained model's, so a bf16
    reference computes exactly what the bf16 actor it started as computes (KL 0 at step 1)."""
    with torch.device("meta"):
        model = GPT(config, head=head)
    model = materialize(model, device)
    load_plain_state(param_shards(model), state)
    return model.to(dtype).eval().requires_grad_(False)


def run_dtype(config) -> torch.dtype:
    """The dtype a run's models compute in (``cluster.precision``, auto already resolved)."""
    from orchestrator.engine.ds_config import cluster_precision

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[cluster_precision(config.cluster)]


def phase_device(ctx) -> torch.device:
    """This rank's device as the run config says (``cluster.gpu``); the process group is up."""
    if ctx.config.cluster.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def begin(run_dir: Path, *, phase: str, model: dict, head: str, layout, tokenizer: dict) -> Manifest:
    """The ``running`` manifest, written now so ``orchestrate status`` shows the phase under way."""
    manifest = start_manifest(run_dir, phase=phase, model=model, head=head, layout=dataclasses.asdict(layout),
                              **tokenizer)
    write_manifest(Path(run_dir) / phase, manifest)
    return manifest


def save_final_weights(state: dict[str, torch.Tensor], phase_dir: Path) -> str:
    """Write the consolidated weights atomically (tmp, fsync, rename); returns the path relative to phase_dir."""
    atomic_write(Path(phase_dir) / FINAL_WEIGHTS, lambda handle: torch.save(state, handle))
    return FINAL_WEIGHTS


def complete(manifest: Manifest, phase_dir: Path, *, step: int, metrics: dict) -> Manifest:
    artifacts = [name for name in CONFIG_ARTIFACTS if (Path(phase_dir) / name).is_file()]
    done = complete_manifest(manifest, phase_dir, step=step, checkpoint=FINAL_WEIGHTS, metrics=metrics,
                             artifacts=artifacts)
    write_manifest(phase_dir, done)
    return done


def fail(manifest: Manifest, phase_dir: Path, *, step: int, error: BaseException) -> None:
    try:
        write_manifest(phase_dir, failed_manifest(manifest, step=step, error=f"{type(error).__name__}: {error}"))
    except OSError as unwritable:  # a full disk must not hide the error that stopped the phase
        print(f"could not record the failure in {phase_dir}/manifest.json: {unwritable}", file=sys.stderr)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
