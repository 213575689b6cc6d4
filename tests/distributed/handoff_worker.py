"""One rank of a phase-to-phase handoff job (``test_handoff_layouts.py``); not collected by pytest.

The parent trains the tiny GPT for ``STEPS`` steps under its layout and hands it on as a phase
does (``phases.outputs``): a ``running`` manifest, every rank its own fp32 master shards
(``save_final_weights``: nothing gathered), rank 0's ``complete`` manifest with the hashes the
ranks computed. The child, on the same ranks, reads it as SFT does — ``outputs.parent_shards``
(verified manifest and hashes) then ``Runtime.load_weights_sharded`` under TP2 — and as the reward
phase does (a scalar head from the LM parent). Both record logits on fixed ids and, as an
independent reference only the test uses, the plain weights gathered by the consolidation path.

    python -m torch.distributed.run --nproc_per_node 2 handoff_worker.py --case pp2_zero1 --dir d
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

from orchestrator.config.run import OptimConfig
from orchestrator.engine.build import build_runtime, init_distributed
from orchestrator.engine.parallel import shutdown_distributed
from orchestrator.engine.shards import torch_optimizer
from orchestrator.phases import outputs
from orchestrator.plan.layout import Layout

from runtime_worker import MICRO_BATCH, SEED, _forget_deepspeed_mpu, model_config, probe_ids, step_batches

STEPS = 3
OPTIM = OptimConfig(lr=3e-3, warmup_steps=1, grad_clip=0.5)
PRESET = "tiny"
TOKENIZER = {"tokenizer_hash": "t" * 64, "pad_id": 1, "eos_id": 0, "tokenizer_dir": "data/tokenizer"}
PARENTS = {"pp2_zero1": dict(pp=2, zero_stage=1, grad_accum=2), "dp2_zero3": dict(zero_stage=3, grad_accum=2)}
CHILD = dict(tp=2, grad_accum=2)


def layout(fields: dict) -> Layout:
    return Layout(micro_batch=MICRO_BATCH, **fields).resolve(dist.get_world_size())


def value_loss(forward, batch):
    """A scalar head's stand-in loss (the values pulled towards 0), only to take an optimizer step."""
    return forward(batch["input_ids"]).logits.float().pow(2).mean(), {}


def train(runtime, steps: int) -> list[float]:
    lay, losses = runtime.layout, []
    first = runtime.state.dp_rank * lay.grad_accum
    loss_fn = value_loss if runtime.head == "scalar" else None
    for step in range(steps):
        batches = step_batches(step, vocab=model_config(PRESET).vocab, count=lay.dp * lay.grad_accum)
        losses.append(runtime.train_step(batches[first:first + lay.grad_accum], loss_fn=loss_fn).loss)
    return losses


def save_logits(runtime, path: Path) -> None:
    logits = runtime.logits(probe_ids(model_config(PRESET).vocab))
    if logits is not None and runtime.state.tp_rank == 0 and runtime.state.dp_rank == 0:
        torch.save(logits, path)


def parent(case: str, run_dir: Path) -> dict:
    """Train, then hand on exactly as ``phases.loop.run`` ends a phase."""
    config, lay = model_config(PRESET), layout(PARENTS[case])
    runtime = build_runtime(config, lay, OPTIM, total_steps=STEPS, seed=SEED)
    losses = train(runtime, STEPS)
    rank, world = dist.get_rank(), dist.get_world_size()
    manifest = outputs.begin(run_dir, phase="pretrain", model=config.to_dict(), head="lm", layout=lay,
                             tokenizer=TOKENIZER) if rank == 0 else None
    weights = outputs.save_final_weights(runtime, run_dir / "pretrain", rank=rank, world=world)
    if rank == 0:
        outputs.complete(manifest, run_dir / "pretrain", step=STEPS, metrics={}, weights=weights)
    save_logits(runtime, run_dir / "parent_logits.pt")
    reference = runtime.consolidated_state_dict()          # the test's independent view, not the handoff
    if rank == 0:
        torch.save(reference, run_dir / "parent_weights.pt")
    dist.barrier()
    return {"losses": losses}


def frozen_reference(shards: Path, runtime, path: Path) -> dict:
    """PPO's frozen reference from the same shards, laid out over the child's TP group."""
    model = outputs.frozen_model(model_config(PRESET), head="lm", shards=shards, device=runtime.device,
                                 dtype=runtime.dtype, tp_group=runtime.state.tp_group)
    with torch.no_grad():
        logits = model(probe_ids(model_config(PRESET).vocab).to(runtime.device)).logits.float().cpu()
    if dist.get_rank() == 0:
        torch.save(logits, path)
    return {"c_attn_shape": list(model.h[0].attn.c_attn.weight.shape)}


def child(run_dir: Path, *, head: str) -> dict:
    """Start from the parent as the SFT (``lm``) or reward (``scalar``) phase does, under TP2."""
    _forget_deepspeed_mpu()
    config, lay = model_config(PRESET), layout(CHILD)
    shards = outputs.parent_shards(run_dir, parent="pretrain", head="lm", model=config.to_dict(),
                                   tokenizer_hash=TOKENIZER["tokenizer_hash"])
    runtime = build_runtime(config, lay, OPTIM, total_steps=STEPS, head=head, seed=SEED + 1)
    runtime.load_weights_sharded(shards, parent_head="lm")
    result = {"optimizer_state_entries": len(torch_optimizer(runtime.engine).state)}
    if head == "lm":
        save_logits(runtime, run_dir / "child_logits.pt")
        result["frozen"] = frozen_reference(shards, runtime, run_dir / "frozen_logits.pt")
    weights = runtime.consolidated_state_dict()
    if dist.get_rank() == 0:
        torch.save(weights, run_dir / f"child_{head}_weights.pt")
    result["losses"] = train(runtime, 1)                    # the fresh optimizer steps from the loaded weights
    dist.barrier()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", required=True, choices=sorted(PARENTS))
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    init_distributed(timeout_minutes=3)
    run_dir = Path(args.dir)
    results = {"parent": parent(args.case, run_dir), "sft": child(run_dir, head="lm"),
               "reward": child(run_dir, head="scalar")}
    if dist.get_rank() == 0:
        (run_dir / "result.json").write_text(json.dumps(results))
    shutdown_distributed()


if __name__ == "__main__":
    main()
