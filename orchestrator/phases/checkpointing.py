"""A phase's checkpoints: save, find the latest, resume (same layout, or resharded into another).

Every rank writes its DeepSpeed files — and, for a resume under another layout, its own sharded
fp32 state (``handoff.sharded``) — into a staging directory and rank 0 commits it atomically
(``handoff.checkpoint``); beside them go the loop's client state (step, skipped steps, the phase's
own state, each runtime's layout and step count) and each rank's RNG states, so a resumed run
continues as the uninterrupted one would.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from orchestrator.phases import outputs
from orchestrator.phases.context import PhaseContext

if TYPE_CHECKING:
    from orchestrator.phases.loop import Phase


def save_checkpoint(phase: Phase, *, step: int, skipped_total: int) -> Path:
    """Every rank writes into a staging directory; rank 0 commits it atomically (handoff.checkpoint).
    With ``loop.reshardable_checkpoints`` each rank also writes its sharded fp32 state and hashes
    it itself (``handoff.sharded``): nothing is gathered. DeepSpeed's files are hashed by all
    ranks, each its share; rank 0's commit reads only the small files left."""
    from orchestrator.handoff import checkpoint as ckpt
    from orchestrator.handoff import sharded

    ctx = phase.ctx
    tag = ckpt.step_tag(step)
    staging = ckpt.staging_dir(ctx.checkpoint_root, tag)
    client = {"step": step, "skipped_steps": skipped_total, "phase_state": phase.state(),
              "layouts": {name: dataclasses.asdict(rt.layout) for name, rt in phase.trained.items()},
              "steps_done": {name: rt.steps_done for name, rt in phase.trained.items()}}
    for name, runtime in phase.trained.items():
        runtime.save(staging / name, tag="state", client_state={})
        if phase.config.loop.reshardable_checkpoints:   # this rank's fp32 state, for a resume under another layout
            shards = staging / name / sharded.SHARDS_DIR
            ckpt.write_rank_sums(shards, sharded.rank_stem(ctx.rank), runtime.save_sharded(shards))
    _save_rng(staging, ctx.rank)
    if ctx.is_main:
        (staging / ckpt.LOOP_STATE_FILE).write_text(json.dumps(client))
    outputs.barrier()
    for name in phase.trained:          # DeepSpeed's files: every rank hashes its share, not rank 0 alone
        ckpt.write_rank_sums(staging / name, f"{sharded.rank_stem(ctx.rank)}.deepspeed",
                             ckpt.hash_share(staging / name, "state", rank=ctx.rank, world=ctx.world))
    outputs.barrier()
    final = ctx.checkpoint_root / tag
    if ctx.is_main:
        ckpt.commit(ctx.checkpoint_root, tag, staging)
        ckpt.prune_checkpoints(ctx.checkpoint_root, keep=phase.config.loop.keep_checkpoints)
    outputs.barrier()
    return final


def latest_checkpoint(ctx: PhaseContext) -> Optional[Path]:
    from orchestrator.handoff import checkpoint as ckpt

    if ctx.is_main:  # rank 0 cleans up after a crashed save before anyone looks
        ckpt.latest_checkpoint(ctx.checkpoint_root)
    outputs.barrier()
    latest = ckpt.latest_checkpoint(ctx.checkpoint_root)
    if latest is not None:   # every rank hashes its share of the files; all stop if any is corrupt
        outputs.agree(lambda: ckpt.verify_checkpoint(latest, share=(ctx.rank, ctx.world)))
    return latest


def resume(phase: Phase, path: Path) -> tuple[int, int, dict[str, float]]:
    """Restore engines, phase state and RNG; returns (step, skipped steps so far, the check
    metrics of resharded weights — ``{}`` when nothing was resharded).

    Under the layout that wrote the checkpoint, DeepSpeed's own files restore everything (bit for
    bit, an MoE model's per-expert files included). Under another layout (say the job moved from
    TP2×PP2 to ZeRO-2 data parallel, or an MoE job from EP2 to EP1) each rank reads the regions
    it now holds out of the sharded files (``handoff.sharded``): fp32 masters, Adam moments and
    step reshard together, experts dealt out to their new EP ranks. A checkpoint from before the
    sharded files, with only ``consolidated.pt``, still reshards its weights; its moments restart.
    The phase then evaluates the resharded weights once, before the first resumed step, so the
    log shows they are the model the checkpoint saved (``kind: reshard`` in ``metrics.jsonl``).
    """
    from orchestrator.handoff import checkpoint as ckpt
    from orchestrator.handoff import sharded

    client = json.loads((path / ckpt.LOOP_STATE_FILE).read_text())
    resharded = []
    for name, runtime in phase.trained.items():
        layout = dataclasses.asdict(runtime.layout)
        if client["layouts"][name] == layout:
            runtime.load(path / name, tag="state")
            continue
        refusal = ckpt.relayout_refusal(path, layout)
        if refusal:
            raise ValueError(f"{phase.name}: {refusal}")
        shards = path / name / sharded.SHARDS_DIR
        what = "weights and Adam moments" if shards.is_dir() else f"weights; the {name}'s optimizer moments restart"
        if phase.ctx.is_main:
            print(f"{phase.name}: checkpoint {path} was written under layout "
                  f"{ckpt.layout_brief(client['layouts'][name])}, this run has {ckpt.layout_brief(layout)}: "
                  f"resharding its {what}", flush=True)
        if shards.is_dir():
            runtime.load_sharded(shards)
        else:
            runtime.load_consolidated(torch.load(path / name / ckpt.CONSOLIDATED_FILE, map_location="cpu",
                                                 weights_only=True))
        runtime.steps_done = int(client["steps_done"][name])
        resharded.append(name)
    phase.restore(client["phase_state"])
    check = phase.evaluate() if resharded else {}   # before the RNG states: a sampling eval draws nothing saved
    _load_rng(path, phase.ctx.rank)
    return int(client["step"]), int(client["skipped_steps"]), check


def _save_rng(staging: Path, rank: int) -> None:
    """Each rank's Python, NumPy and torch RNG states, so a resumed run draws the same numbers."""
    rng_dir = staging / "rng"
    rng_dir.mkdir(parents=True, exist_ok=True)
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    torch.save(state, rng_dir / f"rank{rank:05d}.pt")


def _load_rng(path: Path, rank: int) -> None:
    """This rank's RNG states, when the checkpoint has them (a resume on more ranks starts the new ones fresh)."""
    rng_file = path / "rng" / f"rank{rank:05d}.pt"
    if not rng_file.is_file():
        return
    state = torch.load(rng_file, weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
