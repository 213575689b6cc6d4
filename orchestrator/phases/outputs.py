"""What a phase reads from its parents and leaves for its children.

Weights cross phases as sharded fp32 masters (``final/shards``, ``handoff.final``): every rank
writes the fragments it holds, and a child under any TP / PP / ZeRO layout reads only the
regions it holds (``Runtime.load_weights_sharded``) — nothing is gathered onto one rank. Frozen
models (PPO's reference and reward model, the reward phase's sampler) read one whole tensor at
a time from the shards, laid out over the trained models' TP group when there is one. Only rank 0
touches manifests.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from orchestrator.handoff import final as final_weights
from orchestrator.handoff.final import FINAL_WEIGHTS
from orchestrator.handoff.sharded import MASTER, Region, ShardedReader
from orchestrator.model.gpt import GPT
from orchestrator.model.params import materialize, param_shards
from orchestrator.handoff.manifest import (Manifest, complete_manifest, failed_manifest, start_manifest,
                                           verify_parent, write_manifest)

CONFIG_ARTIFACTS = ("run_config.yaml", "plan.json", "ds_config.json", "launch.json")


def parent_shards(run_dir: Path, *, parent: str, head: str, model: dict, tokenizer_hash: Optional[str]) -> Path:
    """The verified parent's sharded final weights (a directory; each rank reads its own regions).
    Every rank checks the manifest and hashes its share of the parent's files; all ranks agree
    (``agree``), so a corrupt file stops every rank with the same message. Collective."""
    rank, world = _rank_and_world()

    def verified():
        manifest = verify_parent(run_dir, parent_phase=parent, expect_head=head, expect_model=model,
                                 expect_tokenizer_hash=tokenizer_hash, share=(rank, world))
        final_weights.parent_reader(Path(run_dir) / parent, checkpoint=manifest.checkpoint,
                                    files=manifest.files).close()
        return manifest

    manifest = agree(verified)
    return Path(run_dir) / parent / manifest.checkpoint


def agree(check):
    """``check()`` on every rank, then every rank raises the first rank's ``HandoffError`` if any
    rank's check failed (so no rank walks on into a collective the others never reach); returns
    this rank's result. Collective when a process group is up."""
    from orchestrator.handoff.errors import HandoffError

    result, error = None, None
    try:
        result = check()
    except HandoffError as refused:
        error = str(refused)
    _, world = _rank_and_world()
    errors = [error]
    if world > 1:
        errors = [None] * world
        dist.all_gather_object(errors, error)
    failed = [message for message in errors if message is not None]
    if failed:
        raise HandoffError(failed[0])
    return result


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def frozen_model(config, *, head: str, shards: Path | str, device: torch.device, dtype: torch.dtype,
                 tp_group=None) -> GPT:
    """A GPT in eval mode without gradients (reference policy, reward model), in the runtime's
    ``dtype``, read from a phase's sharded weights one parameter at a time: each fp32 master
    rounded as DeepSpeed rounds the trained model's, so a bf16 reference computes exactly what the
    bf16 actor it started as computes (KL 0 at step 1). With ``tp_group`` (the trained models'
    TP group, size > 1) it is laid out like them — Megatron column / row / vocab-parallel layers,
    each rank reading only its TP piece — and every rank of the group must run its forwards
    together, as the actor's. An LM model read from a reward model's shards takes its trunk (the
    scalar head is not read); a missing tensor or another shape is refused by the reader."""
    tp = dist.get_world_size(tp_group) if tp_group is not None else 1
    with torch.device("meta"):
        model = GPT(config, head=head)
    if tp > 1:
        from orchestrator.model.tensor_parallel import apply_tp

        apply_tp(model, tp_group=tp_group)
    model = materialize(model, device).to(dtype)
    reader = ShardedReader(shards)
    rank = dist.get_rank(tp_group) if tp > 1 else 0
    for param, shard in param_shards(model, tp_rank=rank, tp_size=tp):
        region = Region(shard, shard.full_shape(param.shape), tuple(param.shape), 0, param.numel())
        param.copy_(reader.read(region, MASTER).view(param.shape).to(device, dtype))
    reader.close()
    return model.eval().requires_grad_(False)


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


def save_final_weights(runtime, phase_dir: Path, *, rank: int, world: int) -> Optional[dict[str, str]]:
    """Every rank writes its fp32 master shards into the staging directory and hashes them while
    writing; rank 0 gathers the {file: sha256} dicts (small), commits ``final/shards`` atomically
    and returns the manifest's entries for them (None on the other ranks). Collective."""
    phase_dir = Path(phase_dir)
    if rank == 0:
        final_weights.clear_staging(phase_dir)
    barrier()
    mine = runtime.save_weights_sharded(final_weights.staging_shards(phase_dir))
    every = [None] * world if rank == 0 else None
    if world > 1:
        dist.gather_object(mine, every, dst=0)
    else:
        every = [mine]
    files = final_weights.commit_final(phase_dir, every) if rank == 0 else None
    barrier()
    return files


def complete(manifest: Manifest, phase_dir: Path, *, step: int, metrics: dict,
             weights: dict[str, str]) -> Manifest:
    """The ``complete`` manifest: ``weights`` ({file: sha256} the ranks computed) and the config artifacts."""
    artifacts = [name for name in CONFIG_ARTIFACTS if (Path(phase_dir) / name).is_file()]
    done = complete_manifest(manifest, phase_dir, step=step, checkpoint=FINAL_WEIGHTS, metrics=metrics,
                             artifacts=artifacts, checkpoint_files=weights)
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
