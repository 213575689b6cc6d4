"""One rank of a sharded-checkpoint job (``test_sharded_resume.py``); not collected by pytest.

``--role save``: train the tiny GPT under the case's source layout for ``SAVE_AT`` steps, write
the sharded checkpoint (``Runtime.save_sharded``), record the Adam moments of every tensor as
DeepSpeed keeps them (``_full_state``, reassembled over TP and PP by the consolidation code) and the fp32 weights, then go on for ``AFTER`` steps: the uninterrupted
run's losses. ``--role load``: build the target layout, load the checkpoint
(``Runtime.load_sharded``), report how far its moments are from the saved ones and the losses of
the same ``AFTER`` steps; and, as a control, the same steps from the same weights with restarted
moments (what a layout-change resume did before).

Data as in ``runtime_worker.py``: step s uses one global list of ``dp × grad_accum``
micro-batches, so every layout sees the same samples.

    python -m torch.distributed.run --nproc_per_node 2 sharded_worker.py --case zero3_to_tp2 --role both --dir d
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

from orchestrator.config.run import OptimConfig
from orchestrator.engine.build import build_runtime, init_distributed
from orchestrator.engine.consolidate import gather_plain_state
from orchestrator.engine.parallel import shutdown_distributed
from orchestrator.engine.shards import local_fragments, torch_optimizer
from orchestrator.handoff.sharded import MOMENTS
from orchestrator.model.params import Shard
from orchestrator.plan.layout import Layout

from runtime_worker import MICRO_BATCH, SEED, _forget_deepspeed_mpu, model_config, step_batches

SAVE_AT, AFTER = 3, 5
STEPS = SAVE_AT + AFTER
OPTIM = OptimConfig(lr=3e-3, warmup_steps=1, grad_clip=0.5)
PRESET = "tiny"

# name → (source layout, target layout, source world, target world)
CASES = {
    "zero3_to_tp2": (dict(zero_stage=3, grad_accum=2), dict(tp=2, grad_accum=4), 2, 2),
    "tp2_pp2_dp2_to_dp4_zero2": (dict(tp=2, pp=2, zero_stage=1, grad_accum=4), dict(zero_stage=2, grad_accum=2), 8, 4),
}


def layout(fields: dict) -> Layout:
    return Layout(micro_batch=MICRO_BATCH, **fields).resolve(dist.get_world_size())


def train(runtime, steps: range) -> list[float]:
    lay = runtime.layout
    first = runtime.state.dp_rank * lay.grad_accum
    losses = []
    for step in steps:
        batches = step_batches(step, vocab=model_config(PRESET).vocab, count=lay.dp * lay.grad_accum)
        losses.append(runtime.train_step(batches[first:first + lay.grad_accum]).loss)
    return losses


def _full_state(runtime, param, key: str) -> torch.Tensor:
    """``param``'s moment ``key`` over data parallelism (its TP piece), as DeepSpeed keeps it. Collective.

    ZeRO 3: ``safe_get_full_optimizer_state``. ZeRO 1/2: this rank's fragment at the addresses of
    ``param._hp_mapping``, all-reduced over its data-parallel group (what DeepSpeed's
    ``get_full_hp_param`` does; its own call needs the fragments linked, which DeepSpeed's
    pipeline engine leaves undone under ZeRO-1)."""
    if hasattr(param, "ds_id"):
        from deepspeed.utils import safe_get_full_optimizer_state

        return safe_get_full_optimizer_state(param, key).view(param.ds_shape)
    if hasattr(param, "_hp_mapping"):
        buffer = torch.zeros(param.numel(), dtype=torch.float32)
        for fragment in local_fragments(runtime.engine, [(param, Shard("any"))]):
            buffer.narrow(0, fragment.region.start, fragment.region.numel).copy_(
                fragment.moment(torch_optimizer(runtime.engine), key))
        dist.all_reduce(buffer, group=param._dp_group)
        return buffer.view(param.shape)
    return torch_optimizer(runtime.engine).state[param][key]


def moments(runtime) -> dict[str, dict[str, torch.Tensor]]:
    """{moment: plain state dict} on rank 0 ({} elsewhere), gathered by the consolidation path."""
    return {key: gather_plain_state(runtime._shards(), state=runtime.state, zero3=False,
                                    master=lambda param, key=key: _full_state(runtime, param, key)) for key in MOMENTS}


def save(case: str, directory: Path) -> dict:
    source = layout(CASES[case][0])
    runtime = build_runtime(model_config(PRESET), source, OPTIM, total_steps=STEPS, seed=SEED)
    before = train(runtime, range(SAVE_AT))
    runtime.save_sharded(directory / "shards")
    saved_moments, weights = moments(runtime), runtime.consolidated_state_dict()
    if dist.get_rank() == 0:
        torch.save({"moments": saved_moments, "weights": weights}, directory / "saved.pt")
    after = train(runtime, range(SAVE_AT, STEPS))
    files = sorted(p.name for p in (directory / "shards").iterdir())
    return {"losses_before": before, "losses_after": after, "files": files}


def load(case: str, directory: Path) -> dict:
    _forget_deepspeed_mpu()
    target = layout(CASES[case][1])
    runtime = build_runtime(model_config(PRESET), target, OPTIM, total_steps=STEPS, seed=SEED + 1)
    runtime.load_sharded(directory / "shards")
    runtime.steps_done = SAVE_AT
    loaded = moments(runtime)
    result: dict = {"layout": {k: getattr(target, k) for k in ("tp", "pp", "dp", "zero_stage", "grad_accum")}}
    saved = torch.load(directory / "saved.pt", weights_only=True)
    if dist.get_rank() == 0:
        result["moment_diff"] = {key: {name: float((loaded[key][name] - tensor).abs().max())
                                       for name, tensor in saved["moments"][key].items()} for key in MOMENTS}
        result["moment_size"] = {name: float(t.abs().max()) for name, t in saved["moments"]["exp_avg_sq"].items()}
    result["losses_after"] = train(runtime, range(SAVE_AT, STEPS))
    _forget_deepspeed_mpu()
    restarted = build_runtime(model_config(PRESET), target, OPTIM, total_steps=STEPS, seed=SEED + 2,
                              init_state=saved["weights"])
    restarted.steps_done = SAVE_AT
    result["restarted_losses_after"] = train(restarted, range(SAVE_AT, STEPS))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    parser.add_argument("--role", required=True, choices=("save", "load", "both"))
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    init_distributed(timeout_minutes=3)
    directory = Path(args.dir)
    results = {}
    if args.role in ("save", "both"):
        results["save"] = save(args.case, directory)
    dist.barrier()
    if args.role in ("load", "both"):
        results["load"] = load(args.case, directory)
    if dist.get_rank() == 0:
        (directory / f"{args.role}.json").write_text(json.dumps(results))
    shutdown_distributed()


if __name__ == "__main__":
    main()
