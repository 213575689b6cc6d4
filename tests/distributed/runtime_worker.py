"""One rank of a runtime test job: trains the tiny GPT under each requested layout in turn and
writes what it saw as JSON (rank 0). Started by torchrun or the deepspeed launcher from
``test_runtime_equivalence.py`` / ``test_runtime_launcher.py``; not collected by pytest.

Every case trains ``STEPS`` optimizer steps on the same data: step s uses the global list of
``dp × grad_accum`` micro-batches drawn from one seed, data-parallel rank d taking the d-th run of
``grad_accum`` of them, so the single-process reference (dp = 1, grad_accum = dp × grad_accum)
sees exactly the same micro-batches.

    python -m torch.distributed.run --nproc_per_node 2 runtime_worker.py --out r.json --cases tp2,pp2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.distributed as dist

from orchestrator.config.model import get_model
from orchestrator.config.run import OptimConfig
from orchestrator.engine.build import build_runtime, init_distributed
from orchestrator.engine.parallel import shutdown_distributed
from orchestrator.plan.layout import Layout

STEPS = 4
SEQ = 32
MICRO_BATCH = 2
SEED = 7
OPTIM = OptimConfig(lr=3e-3, warmup_steps=1, grad_clip=0.5)   # norms are 0.6-1.6 here: clipping is active in every step

# name → (model preset, layout fields, world size it needs); "tiny-v2047" is tiny with a vocabulary of
# 2047, which tensor parallelism pads to 2048 (one padded row, masked out of the softmax)
CASES: dict[str, tuple[str, dict, int]] = {
    "dp2_zero1": ("tiny", dict(zero_stage=1, grad_accum=2), 2),
    "dp2_zero2": ("tiny", dict(zero_stage=2, grad_accum=2), 2),
    "dp2_zero3": ("tiny", dict(zero_stage=3, grad_accum=2), 2),
    "dp2_zero2_offload": ("tiny", dict(zero_stage=2, offload_optimizer=True, grad_accum=2), 2),
    "ep2": ("tiny-moe", dict(ep=2, grad_accum=2), 2),
    "ep2_zero2": ("tiny-moe", dict(ep=2, zero_stage=2, grad_accum=2), 2),
    "tp2": ("tiny", dict(tp=2, grad_accum=2), 2),
    "tp2_padded_vocab": ("tiny-v2047", dict(tp=2, grad_accum=2), 2),
    "pp2": ("tiny", dict(pp=2, grad_accum=4), 2),
    "tp2_pp2_dp2": ("tiny", dict(tp=2, pp=2, zero_stage=1, grad_accum=4), 8),
    "dp2_recompute_full": ("tiny-local", dict(zero_stage=1, grad_accum=2, recompute="full"), 2),
    "pp2_recompute_full": ("tiny-local", dict(pp=2, grad_accum=4, recompute="full"), 2),
    # MoE on every dimension (test_moe_layouts.py): experts in both layers, capacity = all tokens
    "moe_tp2_ep2": ("tiny-moe-nodrop", dict(tp=2, ep=2, grad_accum=2), 4),
    "moe_pp2_ep2": ("tiny-moe-nodrop", dict(pp=2, ep=2, grad_accum=4), 4),
    "moe_tp2_ep2_zero2": ("tiny-moe-nodrop", dict(tp=2, ep=2, zero_stage=2, grad_accum=2), 4),
    "moe_pp2_ep2_dp4": ("tiny-moe-nodrop", dict(pp=2, ep=2, zero_stage=1, grad_accum=4), 8),
    "moe_tp2_pp2_ep2": ("tiny-moe-nodrop", dict(tp=2, pp=2, ep=2, grad_accum=4), 8),
}


def model_config(preset: str):
    if preset == "tiny-v2047":
        return dataclasses.replace(get_model("tiny"), name=preset, vocab=2047)
    if preset == "tiny-moe-nodrop":   # 64 tokens per micro-batch, capacity ceil(64 / 4 × 2 × 2) = 64: none dropped
        return dataclasses.replace(get_model("tiny-moe"), name=preset, moe_every=1, capacity_factor=2.0)
    return get_model(preset)


def case_layout(name: str, *, world: int) -> tuple[str, Layout]:
    preset, fields, _ = CASES[name]
    return preset, Layout(micro_batch=MICRO_BATCH, **fields).resolve(world)


def reference_layout(name: str) -> tuple[str, Layout]:
    """The same global batch on one process: grad_accum = dp × grad_accum, ZeRO 0, no recompute."""
    preset, layout = case_layout(name, world=CASES[name][2])
    return preset, Layout(micro_batch=MICRO_BATCH, grad_accum=layout.dp * layout.grad_accum).resolve(1)


def step_batches(step: int, *, vocab: int, count: int) -> list[dict[str, torch.Tensor]]:
    """Random tokens from the first 64 ids: learnable in a few steps, so every run's loss falls."""
    generator = torch.Generator().manual_seed(SEED * 1000 + step)
    ids = torch.randint(0, min(vocab, 64), (count, MICRO_BATCH, SEQ + 1), generator=generator)
    return [{"input_ids": block[:, :-1], "labels": block[:, 1:]} for block in ids]


def train(preset: str, layout: Layout, *, init_state=None) -> tuple[object, dict]:
    config = model_config(preset)
    runtime = build_runtime(config, layout, OPTIM, total_steps=STEPS, seed=SEED, init_state=init_state)
    return runtime, train_steps(runtime, preset, layout, range(STEPS))


def train_steps(runtime, preset: str, layout: Layout, steps: range) -> dict:
    config = model_config(preset)
    global_count = layout.dp * layout.grad_accum
    first = runtime.state.dp_rank * layout.grad_accum
    history: dict = {"losses": [], "grad_norms": [], "skipped": []}
    for step in steps:
        batches = step_batches(step, vocab=config.vocab, count=global_count)[first:first + layout.grad_accum]
        result = runtime.train_step(batches)
        history["losses"].append(result.loss)
        history["grad_norms"].append(result.grad_norm)
        history["skipped"].append(result.skipped)
    return history


def moe_checkpoint_case(out_dir: Path) -> dict:
    """MoE under PP2 × EP2 (4 ranks): 2 steps, a DeepSpeed checkpoint (per-expert files), a fresh
    engine resumed from it for steps 3-4 — the uninterrupted run's losses; then the step-2 weights
    resharded into TP2 × EP1 (another EP: a resume that changes the layout) give the same logits."""
    preset = "tiny-moe-nodrop"
    layout = Layout(micro_batch=MICRO_BATCH, pp=2, ep=2, grad_accum=4).resolve(dist.get_world_size())
    config = model_config(preset)
    first = build_runtime(config, layout, OPTIM, total_steps=STEPS, seed=SEED)
    before = train_steps(first, preset, layout, range(2))
    first.save(out_dir / "moe_checkpoint", tag="step2", client_state={"step": 2})
    weights = first.consolidated_state_dict()
    logits = first.logits(probe_ids(config.vocab))
    files = sorted(path.name for path in (out_dir / "moe_checkpoint" / "step2").iterdir())
    resumed = build_runtime(config, layout, OPTIM, total_steps=STEPS, seed=SEED + 1)
    client = resumed.load(out_dir / "moe_checkpoint", tag="step2")
    after = train_steps(resumed, preset, layout, range(2, STEPS))
    _forget_deepspeed_mpu()
    other = Layout(micro_batch=MICRO_BATCH, tp=2, ep=1, grad_accum=4).resolve(dist.get_world_size())
    weights = _broadcast_object(weights)
    moved = build_runtime(config, other, OPTIM, total_steps=STEPS, seed=SEED + 2, init_state=weights)
    moved_logits = moved.logits(probe_ids(config.vocab))      # every rank (pp 1)
    diff = (moved_logits - logits).abs().max() if logits is not None else torch.tensor(-1.0)  # last stage only
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return {"losses": before["losses"] + after["losses"], "skipped": before["skipped"] + after["skipped"],
            "grad_norms": before["grad_norms"] + after["grad_norms"], "client_state": client, "files": files,
            "moved_logit_diff": float(diff)}


def _broadcast_object(value):
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def probe_ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(99))


def run_case(name: str, *, reference: bool, out_dir: Path) -> dict:
    preset, layout = reference_layout(name) if reference else case_layout(name, world=dist.get_world_size())
    runtime, history = train(preset, layout)
    history["layout"] = dataclasses.asdict(layout)
    if name in HANDOFF_CASES:
        history.update(handoff(name, runtime, preset=preset, layout=layout, reference=reference, out_dir=out_dir))
    return history


HANDOFF_CASES = ("tp2", "tp2_padded_vocab", "pp2", "tp2_pp2_dp2", "moe_tp2_ep2", "moe_pp2_ep2", "moe_pp2_ep2_dp4",
                 "moe_tp2_pp2_ep2", "moe_tp2_ep2_zero2")


def handoff(name: str, runtime, *, preset: str, layout: Layout, reference: bool, out_dir: Path) -> dict:
    """Write this run's plain state dict and probe logits; a parallel run also loads the single-
    process run's state dict into its own layout and reports the logits it then computes."""
    vocab = model_config(preset).vocab
    state = runtime.consolidated_state_dict()
    logits = runtime.logits(probe_ids(vocab))
    tag = f"{name}_{'reference' if reference else 'parallel'}"
    if dist.get_rank() == 0:
        torch.save(state, out_dir / f"{tag}_state.pt")
    if logits is not None and runtime.state.tp_rank == 0 and runtime.state.dp_rank == 0:
        torch.save(logits, out_dir / f"{tag}_logits.pt")
    result = {}
    if not reference:
        reference_state = torch.load(out_dir / f"{name}_reference_state.pt")
        loaded = build_runtime(model_config(preset), layout, OPTIM, total_steps=STEPS, seed=SEED + 1,
                               init_state=reference_state)
        loaded_logits = loaded.logits(probe_ids(vocab))
        if loaded_logits is not None and loaded.state.tp_rank == 0 and loaded.state.dp_rank == 0:
            torch.save(loaded_logits, out_dir / f"{name}_loaded_reference_logits.pt")
    dist.barrier()
    return result


def nan_skip_case() -> dict:
    """Rank 1 alone sees a NaN loss at step 1: every rank must skip it and keep its weights."""
    config = get_model("tiny")
    layout = Layout(micro_batch=MICRO_BATCH, grad_accum=2, zero_stage=2).resolve(dist.get_world_size())
    runtime = build_runtime(config, layout, OPTIM, total_steps=STEPS, seed=SEED)

    def loss_fn(forward, batch):
        loss, metrics = runtime.lm_loss(forward, batch)
        poison = step == 1 and dist.get_rank() == 1
        return (loss * math.nan if poison else loss), metrics

    report: dict = {"skipped": [], "unchanged": [], "steps_done": []}
    for step in range(3):
        before = runtime.consolidated_state_dict()
        batches = step_batches(step, vocab=config.vocab, count=layout.dp * layout.grad_accum)
        mine = batches[runtime.state.dp_rank * layout.grad_accum:][:layout.grad_accum]
        result = runtime.train_step(mine, loss_fn=loss_fn)
        after = runtime.consolidated_state_dict()
        report["skipped"].append(result.skipped)
        report["steps_done"].append(runtime.steps_done)
        if dist.get_rank() == 0:
            report["unchanged"].append(all(torch.equal(before[k], after[k]) for k in before))
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", required=True, help="comma-separated case names, or nan_skip")
    parser.add_argument("--reference", action="store_true", help="run each case's single-process reference")
    parser.add_argument("--local_rank", type=int, help="passed by the deepspeed launcher (LOCAL_RANK is read instead)")
    args = parser.parse_args()
    init_distributed(timeout_minutes=3)
    out = Path(args.out)
    results = {}
    for name in args.cases.split(","):
        if name == "nan_skip":
            results[name] = nan_skip_case()
        elif name == "moe_checkpoint":
            results[name] = moe_checkpoint_case(out.parent)
        else:
            results[name] = run_case(name, reference=args.reference, out_dir=out.parent)
        _forget_deepspeed_mpu()
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"world": dist.get_world_size(), "results": results}))
    shutdown_distributed()


def _forget_deepspeed_mpu() -> None:
    """Test harness only: several layouts run one after another in one process, and DeepSpeed keeps
    the last engine's mpu, and the expert groups by name (``ep_size_2``), in module globals (a real
    job builds one layout per process)."""
    from deepspeed.utils import groups

    groups.mpu = None
    for table in (groups._EXPERT_PARALLEL_GROUP, groups._EXPERT_PARALLEL_GROUP_RANKS,
                  groups._EXPERT_DATA_PARALLEL_GROUP, groups._EXPERT_DATA_PARALLEL_GROUP_RANKS):
        table.clear()


if __name__ == "__main__":
    main()
