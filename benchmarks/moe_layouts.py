"""The tiny MoE GPT on every parallel dimension vs expert parallelism alone, on this machine.

    .venv/bin/python -m benchmarks.moe_layouts --write BENCHMARKS.md

``recipes/tiny-moe-3d.yaml``'s model (4 experts, top-2, in both layers) and batch (32 sequences of
128 per step) on eight gloo ranks, twice: TP2 × PP2 × EP2 (dp 2, 4 micro-batches of 4 per rank)
and its EP-only layout (dp 8, EP2, one micro-batch of 4 per rank), both ZeRO-1, on ``--device``
(cpu, or cuda: eight GPUs) in ``--precision`` (fp32 by default). Each
trains ``STEPS`` optimizer steps through ``build_runtime``; the step time is the median of the
steps after the first (wall clock on rank 0, after a barrier). On a machine with fewer cores than
ranks the processes time-share: the figures report, they are not tuned.

Memory per rank: at the end, every rank counts the bytes of its model states — the module's
parameters, their ``.grad`` and the fp32 gradient partitions, Adam's moments and ZeRO's fp32
master partitions — and the planner predicts the same rank's states for its own stage
(``plan.memory.rank_model_states`` of ``plan.partition.stage_params``: tp / pp shards, n_experts /
ep experts each split over tp, ZeRO-1 over dp for dense and dp / ep for experts). Reported: the
largest rank of each stage, measured vs predicted.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.common import (CPU_FP32, Target, add_target_arguments, machine_info, markdown_table, parse_target,
                               run_ranks, today, write_section)

HEADING = "## MoE on every dimension (tiny MoE, 8 CPU ranks)"
STEPS = 6
SEQ, MICRO_BATCH, GLOBAL_BATCH = 128, 4, 32
LAYOUTS = {"TP2 × PP2 × EP2": dict(tp=2, pp=2, ep=2, zero_stage=1),
           "EP2 only (dp 8)": dict(ep=2, zero_stage=1)}
MiB = 2**20


def model_config():
    import dataclasses

    from orchestrator.config.model import get_model

    return dataclasses.replace(get_model("tiny-moe"), name="tiny-moe-3d", moe_every=1, capacity_factor=2.0)


def state_bytes(runtime) -> dict[str, int]:
    """This rank's model-state bytes: parameters, gradients (model and fp32 partitions), optimizer."""
    engine = runtime.engine
    optimizer = getattr(engine, "optimizer", None)
    seen: set[int] = set()

    def count(tensors) -> int:
        total = 0
        for tensor in tensors:
            if tensor is None:
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        return total

    params = list(engine.module.parameters())
    parts = {"params": count(p.data for p in params)}
    inner = getattr(optimizer, "optimizer", optimizer)           # ZeRO wraps the torch optimizer
    masters = [p for group in inner.param_groups for p in group["params"]]
    fp32_partitions = getattr(optimizer, "single_partition_of_fp32_groups", [])
    parts["grads"] = count([p.grad for p in params] + [p.grad for p in masters] + [p.grad for p in fp32_partitions])
    moments = [value for state in inner.state.values() for value in state.values() if hasattr(value, "untyped_storage")]
    parts["optimizer"] = count(moments + masters + list(fp32_partitions))
    return parts


RANKS = 8


def predicted_bytes(layout, stage: str, target: Target = CPU_FP32) -> dict[str, float]:
    from orchestrator.config.cluster import make_cluster
    from orchestrator.plan.job import BatchTarget, Job
    from orchestrator.plan.memory import rank_model_states
    from orchestrator.plan.partition import stage_params

    cluster = make_cluster(gpu="cpu" if target.device == "cpu" else "h100-80g", gpus=RANKS, gpus_per_node=RANKS)
    job = Job(model=model_config(), cluster=cluster, seq=SEQ, batch=BatchTarget(GLOBAL_BATCH),
              precision=target.precision)
    rank = stage_params(job.model, tp=layout.tp, pp=layout.pp, ep=layout.ep, stage=stage)
    states = rank_model_states(rank, layout, job)
    return {"params": states.params, "grads": states.grads, "optimizer": states.optimizer}


def layout_worker(fields: dict, target: Target = CPU_FP32) -> dict:
    """One layout on this rank, on the target: step times (rank 0), and every rank's stage and state bytes."""
    import torch
    import torch.distributed as dist

    from orchestrator.config.run import OptimConfig
    from orchestrator.engine.build import build_runtime, init_distributed
    from orchestrator.plan.layout import Layout

    init_distributed(device_type=target.device, timeout_minutes=10)
    config = model_config()
    probe = Layout(micro_batch=MICRO_BATCH, **fields).resolve(dist.get_world_size())
    layout = Layout(micro_batch=MICRO_BATCH, grad_accum=GLOBAL_BATCH // (MICRO_BATCH * probe.dp),
                    **fields).resolve(dist.get_world_size())
    runtime = build_runtime(config, layout, OptimConfig(lr=1e-3, warmup_steps=1), total_steps=STEPS, seed=0,
                            precision=target.precision, device_type=target.device)
    generator = torch.Generator().manual_seed(runtime.state.dp_rank)
    times = []
    for _ in range(STEPS):
        ids = torch.randint(0, config.vocab, (layout.grad_accum, MICRO_BATCH, SEQ + 1), generator=generator)
        batches = [{"input_ids": block[:, :-1], "labels": block[:, 1:]} for block in ids]
        dist.barrier()
        start = time.perf_counter()
        runtime.train_step(batches)
        dist.barrier()
        times.append(time.perf_counter() - start)
    stage = "only" if layout.pp == 1 else ("first" if runtime.state.is_first_stage else "last")
    mine = {"stage": stage, "measured": state_bytes(runtime), "predicted": predicted_bytes(layout, stage, target)}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    from deepspeed.utils import groups

    groups.mpu = None
    for table in (groups._EXPERT_PARALLEL_GROUP, groups._EXPERT_PARALLEL_GROUP_RANKS,
                  groups._EXPERT_DATA_PARALLEL_GROUP, groups._EXPERT_DATA_PARALLEL_GROUP_RANKS):
        table.clear()
    return {"layout": f"tp{layout.tp} pp{layout.pp} dp{layout.dp} ep{layout.ep} zero{layout.zero_stage} "
                      f"mb{layout.micro_batch}×{layout.grad_accum}",
            "step_s": statistics.median(times[1:]), "ranks": gathered}


def all_layouts_worker(device: str = "cpu", precision: str = "fp32") -> dict:
    target = Target(device=device, precision=precision)
    return {name: layout_worker(fields, target) for name, fields in LAYOUTS.items()}


def report(results: dict, *, command: str, target: Target = CPU_FP32) -> str:
    info = machine_info()
    step_rows = [[name, r["layout"], f"{r['step_s']:.3f}", f"{GLOBAL_BATCH * SEQ / r['step_s']:,.0f}"]
                 for name, r in results.items()]
    memory_rows = []
    for name, r in results.items():
        by_stage: dict[str, dict] = {}
        for rank in r["ranks"]:
            if rank["stage"] not in by_stage or rank["measured"]["params"] > by_stage[rank["stage"]]["measured"]["params"]:
                by_stage[rank["stage"]] = rank
        for stage, rank in sorted(by_stage.items()):
            measured, predicted = rank["measured"], rank["predicted"]
            held_m, held_p = measured["params"] + measured["optimizer"], predicted["params"] + predicted["optimizer"]
            memory_rows.append([name, stage, f"{measured['params'] / MiB:.3f} / {predicted['params'] / MiB:.3f}",
                                f"{measured['optimizer'] / MiB:.3f} / {predicted['optimizer'] / MiB:.3f}",
                                f"{held_m / held_p:.3f}", f"{predicted['grads'] / MiB:.3f}"])
    one, five, fifteen = info.load_average
    return "\n".join([
        target.heading(HEADING), "",
        f"`{command}` on {info.cpu_model} ({info.cores} cores, load average {one:.0f} / {five:.0f} / {fifteen:.0f}), "
        f"{today()}: the tiny MoE of `recipes/tiny-moe-3d.yaml`, {GLOBAL_BATCH} sequences of {SEQ} per step, "
        f"{target.precision}, ZeRO-1, "
        + (f"{RANKS} gloo ranks time-sharing the cores (report, not tuned)" if target.device == "cpu"
           else f"{RANKS} NCCL ranks, one GPU each") + f"; median of steps 2-{STEPS}.", "",
        markdown_table(["layout", "degrees", "step s", "tokens/s"], step_rows), "",
        "Model states per rank after a step, measured / planner-predicted MiB (the rank with the most parameters "
        "of each stage; the planner's `rank_model_states` of `stage_params` for that stage). The gradients are held "
        "only from the backward pass to the step (ZeRO-1 frees them after it), so the planner's peak figure is "
        "shown beside, not measured here:", "",
        markdown_table(["layout", "stage", "params", "optimizer (fp32 master + Adam)",
                        "measured / predicted", "grads at peak, predicted"], memory_rows), ""])


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, Target]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_arguments(parser)
    parser.add_argument("--write", type=Path, help="replace this section of the Markdown file")
    args = parser.parse_args(argv)
    return args, parse_target(parser, args, ranks=RANKS)


def worker_args(target: Target) -> tuple:
    """What ``all_layouts_worker`` is launched with on each of the ``RANKS`` ranks."""
    return (target.device, target.precision)


def main() -> None:
    args, target = parse_args()
    results = run_ranks(all_layouts_worker, world=RANKS, args=worker_args(target))
    command = f"python -m benchmarks.moe_layouts {target.flags}" + (f" --write {args.write}" if args.write else "")
    section = report(results, command=command, target=target)
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
