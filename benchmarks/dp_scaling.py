"""Data-parallel training throughput on 1, 2 and 4 gloo ranks of this CPU: our runtime (ZeRO 0
and 2) against plain PyTorch ``DistributedDataParallel``, measured side by side in the same run.

    .venv/bin/python -m benchmarks.dp_scaling --ranks 1 2 4 --steps 4 --write BENCHMARKS.md

Weak scaling: every rank trains the same micro-batch (``gpt-25m`` at sequence 128, batch 4), so the
global batch grows with the ranks. Every contender runs on ``--device`` (cpu: gloo; cuda: one GPU
per rank, NCCL) in ``--precision``: fp32, or bf16 (ours: DeepSpeed's bf16 engine with fp32 master
weights; DDP: fp32 weights under ``torch.autocast`` bf16, as the training-throughput benchmark's
plain contender). One torch thread per rank. In every process, three
contenders train the same model from the same initial weights:

- ``ours ZeRO-0`` / ``ours ZeRO-2``: ``build_runtime(..., Layout(dp=N, zero_stage=Z))`` →
  ``Runtime.train_step``, as a phase runs it;
- ``DDP``: the same ``GPT`` module in ``torch.nn.parallel.DistributedDataParallel``,
  ``torch.optim.AdamW(fused=True)`` over the same decay / no-decay groups, ``clip_grad_norm_`` 1.0,
  ``lm_loss``, the same learning-rate schedule.

Before any timing, one step of each on the same data (and the same dropout masks) must leave all
three with the same weights on every rank: the comparison is of equal work. Then contenders take
turns step by step (the order rotating each turn), each step between two barriers, so a step's wall
time is the slowest rank's. Reported per N: global tokens/s, ours / DDP paired by turn, scaling
efficiency tokens/s(N) / (N · tokens/s(1)), per-rank CPU seconds per step, the time our runtime
spends in DeepSpeed's gradient reduction (blocking on CPU, so timed exactly) and one all-reduce of
the whole gradient measured alone.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from benchmarks.common import (CPU_FP32, MachineInfo, Target, add_target_arguments, machine_info, markdown_table,
                               parse_target, run_ranks, today, write_section)
from orchestrator.config.model import get_model
from orchestrator.config.run import OptimConfig

HEADING = "## Data-parallel scaling on this machine"
MODEL = get_model("gpt-25m")
SEQ, MICRO_BATCH = 128, 4
OPTIM = OptimConfig(lr=3e-4, warmup_steps=0, grad_clip=1.0)
TOTAL_STEPS = 1000
CONTENDERS = ("ours ZeRO-0", "ours ZeRO-2", "DDP")
PEER = "DDP"
CHECK_SEED = 1234
TOLERANCE = {"fp32": dict(rtol=1e-5, atol=1e-6), "bf16": dict(rtol=2**-7, atol=1e-3)}
"""How close one step leaves every contender's weights to the peer's: fp32 to rounding; bf16 to
bf16's resolution (ours keeps bf16 weights beside its fp32 master, DDP keeps fp32 ones)."""
MB = 1e6


# --- arithmetic (pure) ---------------------------------------------------------------------------
def scaling_efficiency(tokens_per_s: float, *, ranks: int, single_rank_tokens_per_s: float) -> float:
    """Weak-scaling efficiency tokens/s(N) / (N · tokens/s(1)): 1 when N ranks do N times the work
    of one in the same time (Gustafson 1988; Hager & Wellein 2010, ch. 5). E.g. 1,000 tokens/s on one
    rank and 1,600 on two: 1600 / (2 · 1000) = 0.80."""
    if ranks < 1 or single_rank_tokens_per_s <= 0:
        raise ValueError(f"efficiency needs ranks >= 1 and a positive 1-rank throughput, got ranks={ranks}, "
                         f"tokens/s(1)={single_rank_tokens_per_s}")
    return tokens_per_s / (ranks * single_rank_tokens_per_s)


def core_bound(ranks: int, *, cores: int) -> float:
    """The best weak-scaling efficiency ``ranks`` single-threaded ranks can reach on ``cores``
    cores: min(N, cores) / N (beyond one rank per core, ranks time-share). 4 ranks on 2 cores: 0.5."""
    if ranks < 1 or cores < 1:
        raise ValueError(f"ranks and cores must be >= 1, got ranks={ranks}, cores={cores}")
    return min(ranks, cores) / ranks


def paired_ratio(ours: Sequence[float], peer: Sequence[float]) -> float:
    """Median over turns of peer time / our time in the same turn: ours' throughput over the
    peer's (> 1: ours faster). Pairing by turn cancels load that hits both alike."""
    if len(ours) != len(peer) or not ours:
        raise ValueError(f"paired times need equal, non-empty lists, got {len(ours)} and {len(peer)}")
    return statistics.median(p / o for o, p in zip(ours, peer))


def turn_order(names: Sequence[str], turn: int) -> list[str]:
    """The contenders' order in turn ``turn``: rotated by one each turn, so none always goes first."""
    shift = turn % len(names)
    return list(names[shift:]) + list(names[:shift])


def summarise(runs: dict[int, dict], *, cores: int) -> list[dict]:
    """One row per (ranks, contender) from each run's per-turn times; needs the 1-rank run."""
    if 1 not in runs:
        raise ValueError(f"scaling efficiency needs the 1-rank run, got ranks {sorted(runs)}: add 1 to --ranks")
    rows = []
    base = {name: runs[1]["tokens_per_step"] / statistics.median(runs[1]["wall"][name]) for name in CONTENDERS}
    for ranks in sorted(runs):
        run = runs[ranks]
        for name in CONTENDERS:
            wall, cpu = run["wall"][name], run["cpu"][name]
            tokens_per_s = run["tokens_per_step"] / statistics.median(wall)
            rows.append(dict(
                ranks=ranks, contender=name, global_tokens=run["tokens_per_step"], step_s=statistics.median(wall),
                tokens_per_s=tokens_per_s, vs_peer_wall=paired_ratio(wall, run["wall"][PEER]),
                vs_peer_cpu=paired_ratio(cpu_per_rank(cpu), cpu_per_rank(run["cpu"][PEER])),
                efficiency=scaling_efficiency(tokens_per_s, ranks=ranks, single_rank_tokens_per_s=base[name]),
                bound=core_bound(ranks, cores=cores), cpu_s=statistics.median(cpu_per_rank(cpu)),
                reduce_s=statistics.median(run["reduce"][name]) if name in run["reduce"] else None,
                allreduce_alone_s=run["allreduce_alone_s"]))
    return rows


def cpu_per_rank(cpu: Sequence[Sequence[float]]) -> list[float]:
    """Per turn, the mean over ranks of each rank's CPU seconds (``cpu[turn][rank]``)."""
    return [statistics.fmean(ranks) for ranks in cpu]


def scaling_table(rows: Sequence[dict], *, cores: int) -> str:
    return markdown_table(
        ["ranks", "contender", "tokens per step", "median step s", "global tokens/s", "ours / DDP: wall / CPU",
         "scaling efficiency", f"{cores}-core bound min(N,{cores})/N", "CPU s per rank per step"],
        [[r["ranks"], r["contender"], r["global_tokens"], f"{r['step_s']:.2f}", f"{r['tokens_per_s']:,.0f}",
          "—" if r["contender"] == PEER else f"{r['vs_peer_wall']:.3f} / {r['vs_peer_cpu']:.3f}",
          f"{r['efficiency']:.2f}", f"{r['bound']:.2f}", f"{r['cpu_s']:.2f}"] for r in rows])


def communication_table(rows: Sequence[dict], *, gradient_mb: float) -> str:
    table = []
    for ranks, group in itertools.groupby(rows, key=lambda r: r["ranks"]):
        by_name = {r["contender"]: r for r in group}
        cells = [ranks, f"{by_name[PEER]['allreduce_alone_s']:.3f}"]
        for name in CONTENDERS:
            r = by_name[name]
            cells.append("overlapped, not timed" if r["reduce_s"] is None else
                         f"{r['reduce_s']:.3f} ({r['reduce_s'] / r['step_s']:.0%} of the step)")
        table.append(cells)
    return markdown_table(["ranks", f"all-reduce of the {gradient_mb:.0f} MB gradient alone, s",
                           *(f"{name}: reduction in the step, s" for name in CONTENDERS)], table)


# --- the contenders on one rank ----------------------------------------------------------------
class Stopwatch:
    """Wall seconds spent inside the wrapped callables; nested calls are counted once."""

    def __init__(self):
        self.seconds, self._depth = 0.0, 0

    def wrap(self, owner, name: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            self._depth += 1
            start = time.perf_counter() if self._depth == 1 else None
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1
                if start is not None:
                    self.seconds += time.perf_counter() - start

        setattr(owner, name, timed)

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def ours(zero_stage: int, ranks: int, target: Target):
    """Our runtime's step, its GPT module and a stopwatch on DeepSpeed's gradient reduction: the
    engine's ``allreduce_gradients`` (ZeRO-0: flatten, all-reduce, copy back); under ZeRO-2 also the
    bucket reductions run from backward hooks and the all-gather of updated partitions in ``step``.
    With overlap_comm off (CPU) these calls block, so their wall time is the communication's."""
    from orchestrator.engine.build import build_runtime
    from orchestrator.plan.layout import Layout

    layout = Layout(dp=ranks, micro_batch=MICRO_BATCH, grad_accum=1, zero_stage=zero_stage)
    runtime = build_runtime(MODEL, layout, OPTIM, total_steps=TOTAL_STEPS, seed=0, precision=target.precision,
                            device_type=target.device)
    stopwatch = Stopwatch()
    stopwatch.wrap(runtime.engine, "allreduce_gradients")
    if zero_stage >= 1:
        import deepspeed.runtime.zero.stage_1_and_2 as zero

        stopwatch.wrap(runtime.engine.optimizer, "reduce_ipg_grads")
        stopwatch.wrap(zero, "all_gather_dp_groups")      # this process's only ZeRO optimizer calls it
    return (lambda batch: runtime.train_step([batch]).loss), runtime.engine.module, stopwatch


def rank_device(target: Target):
    """This rank's device: the CPU, or GPU ``LOCAL_RANK`` (as ``build_runtime`` picks it)."""
    import os

    import torch

    return torch.device("cpu") if target.device == "cpu" else torch.device("cuda", int(os.environ["LOCAL_RANK"]))


def ddp(target: Target):
    """Plain PyTorch DDP on the target's device: forward (under bf16 autocast for bf16), lm_loss,
    backward (DDP all-reduces bucket by bucket), clip, fused AdamW."""
    import contextlib

    import torch
    from torch.nn.parallel import DistributedDataParallel

    from orchestrator.engine.optim import learning_rate, parameter_groups
    from orchestrator.model.gpt import GPT
    from orchestrator.model.loss import lm_loss
    from orchestrator.model.params import init_parameters, param_shards

    device = rank_device(target)
    model = GPT(MODEL)
    init_parameters(param_shards(model), config=MODEL, seed=0)
    model.to(device)
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if target.precision == "bf16"
                else contextlib.nullcontext)
    groups = parameter_groups(model, weight_decay=OPTIM.weight_decay)   # torch param groups: decay matrices only
    optimizer = torch.optim.AdamW(groups, lr=OPTIM.lr, betas=(OPTIM.beta1, OPTIM.beta2), eps=OPTIM.eps,
                                  weight_decay=OPTIM.weight_decay, fused=True)
    steps_done = 0

    def step(batch: dict) -> float:
        nonlocal steps_done
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(steps_done, optim=OPTIM, total_steps=TOTAL_STEPS)
        batch = {key: value.to(device) for key, value in batch.items()}
        with autocast():
            logits = wrapped(batch["input_ids"]).logits
        loss = lm_loss(logits.float(), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps_done += 1
        return loss.item()

    return step, model


def rank_batches(rank: int, count: int) -> list[dict]:
    """This rank's ``count`` micro-batches (each rank its own data, as in data parallelism)."""
    import torch

    g = torch.Generator().manual_seed(1000 + rank)
    blocks = torch.randint(0, MODEL.vocab, (count, MICRO_BATCH, SEQ + 1), generator=g)
    return [{"input_ids": b[:, :-1], "labels": b[:, 1:]} for b in blocks]


def check_equal_work(steps: dict[str, Callable], modules: dict, batch: dict, *, rank: int,
                     precision: str = "fp32") -> float:
    """One step of every contender on the same batch with the same dropout masks; every module must
    then hold the peer's weights on every rank. Returns the largest difference (all ranks)."""
    import torch
    import torch.distributed as dist

    for step in steps.values():
        torch.manual_seed(CHECK_SEED + rank)
        step(batch)
    peer = dict(modules[PEER].named_parameters())
    worst, failures = 0.0, []
    for name in CONTENDERS:
        for param_name, param in modules[name].named_parameters():
            mine, theirs = param.detach().float(), peer[param_name].detach().float()
            diff = (mine - theirs).abs().max().item()
            worst = max(worst, diff)
            if not torch.allclose(mine, theirs, **TOLERANCE[precision]):
                failures.append(f"{name} {param_name} (max |diff| {diff:.2e})")
    flags = torch.tensor([float(len(failures)), worst], device=next(modules[PEER].parameters()).device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    if flags[0] > 0:
        raise RuntimeError(f"after one step on the same data the contenders' weights differ (rank {rank}: "
                           f"{', '.join(failures[:5]) or 'another rank'}): they do not do the same work, so "
                           f"timing them would compare different things")
    return float(flags[1])


def allreduce_alone_seconds(numel: int, repeats: int = 3, device: str = "cpu") -> float:
    """Median wall time of one all-reduce (gloo, or NCCL on GPUs) of ``numel`` fp32 elements over the
    world, between barriers."""
    import torch
    import torch.distributed as dist

    buffer, times = torch.ones(numel, device=device), []
    for _ in range(repeats + 1):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buffer)
        if buffer.is_cuda:
            torch.cuda.synchronize(buffer.device)
        dist.barrier()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def rank_worker(ranks: int, steps: int, warmup: int, device: str = "cpu", precision: str = "fp32") -> dict:
    """One rank: build the three contenders on ``device`` in ``precision``, check equal work, then
    ``warmup + steps`` turns."""
    import gc

    import torch.distributed as dist

    target = Target(device=device, precision=precision)
    built = {"ours ZeRO-0": ours(0, ranks, target), "ours ZeRO-2": ours(2, ranks, target)}
    step_fns = {name: fn for name, (fn, _, _) in built.items()}
    modules = {name: module for name, (_, module, _) in built.items()}
    stopwatches = {name: watch for name, (_, _, watch) in built.items()}
    step_fns[PEER], modules[PEER] = ddp(target)
    rank = dist.get_rank()
    data = rank_batches(rank, 4)
    max_diff = check_equal_work(step_fns, modules, data[0], rank=rank, precision=precision)
    wall = {name: [] for name in CONTENDERS}
    cpu = {name: [] for name in CONTENDERS}
    reduce = {name: [] for name in stopwatches}
    for turn in range(warmup + steps):
        for name in turn_order(CONTENDERS, turn):
            gc.collect()
            for watch in stopwatches.values():
                watch.take()
            dist.barrier()
            start, cpu_start = time.perf_counter(), time.process_time()
            step_fns[name](data[(turn + 1) % len(data)])
            dist.barrier()
            if turn >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
                if name in stopwatches:
                    reduce[name].append(stopwatches[name].take())
    numel = sum(p.numel() for p in modules[PEER].parameters())
    gathered: list = [None] * ranks
    dist.all_gather_object(gathered, cpu)
    per_turn_cpu = {name: [[c[name][t] for c in gathered] for t in range(steps)] for name in CONTENDERS}
    return dict(ranks=ranks, tokens_per_step=ranks * MICRO_BATCH * SEQ, wall=wall, cpu=per_turn_cpu,
                reduce=reduce, allreduce_alone_s=allreduce_alone_seconds(numel, device=str(rank_device(target))),
                gradient_elements=numel,
                max_weight_diff=max_diff)


# --- report ----------------------------------------------------------------------------------------
def reading(rows: Sequence[dict], *, cores: int) -> str:
    """The paragraph under the tables: the machine's bound, then this run's numbers against it."""
    get = {(r["ranks"], r["contender"]): r for r in rows}
    counts = sorted({r["ranks"] for r in rows})
    parts = [f"How to read it: with {cores} cores and one thread per rank, N = {cores} can at best multiply the "
             f"single-rank throughput by {cores}, and more ranks time-share the cores, so efficiency cannot exceed "
             f"min(N, {cores})/N: above {cores} ranks it measures the machine, not the runtime."]
    for ranks in counts[1:]:
        effs = ", ".join(f"{name} {get[(ranks, name)]['efficiency']:.2f}" for name in CONTENDERS)
        parts.append(f"N = {ranks}: efficiency {effs} (bound {core_bound(ranks, cores=cores):.2f}).")
    ratios = ", ".join(f"N = {n}: {get[(n, 'ours ZeRO-0')]['vs_peer_wall']:.2f}" for n in counts)
    parts.append(f"Ours (ZeRO-0) / DDP by wall clock: {ratios}.")
    if len(counts) > 1:
        ranks = counts[1]
        ours0, peer = get[(ranks, "ours ZeRO-0")], get[(ranks, PEER)]
        gap, blocked = ours0["step_s"] - peer["step_s"], ours0["reduce_s"]
        share = "all" if blocked >= gap else f"{blocked / gap:.0%}"
        parts.append(f"At N = {ranks}, one rank per core, our ZeRO-0 step takes {gap:+.2f} s against DDP's and "
                     f"spends {blocked:.2f} s blocked in DeepSpeed's reduction after backward "
                     f"({blocked / ours0['allreduce_alone_s']:.1f}× the bare all-reduce of the gradient, "
                     f"{ours0['allreduce_alone_s']:.2f} s), where DDP overlaps its all-reduce with backward"
                     + (f": that accounts for {share} of the gap." if gap > 0 else "."))
        top = counts[-1]
        growth = ", ".join(f"{name} {get[(top, name)]['cpu_s'] / get[(1, name)]['cpu_s']:.2f}×" for name in CONTENDERS)
        parts.append(f"CPU seconds per rank per step from 1 to {top} ranks, for the same work per rank plus gloo's "
                     f"share of the reduction: {growth}.")
    return " ".join(parts)


def report(runs: dict[int, dict], *, machine: MachineInfo, command: str, steps: int, warmup: int,
           target: Target = CPU_FP32) -> str:
    """The section; ``machine`` is read before the runs (the ranks themselves add to the load)."""
    rows = summarise(runs, cores=machine.cores)
    any_run = next(iter(runs.values()))
    gradient_mb = any_run["gradient_elements"] * 4 / MB
    worst = max(run["max_weight_diff"] for run in runs.values())
    return "\n".join([
        target.heading(HEADING), "",
        f"Weak scaling on {'gloo ranks of this CPU' if target.device == 'cpu' else 'NCCL ranks, one GPU each'}, "
        f"one torch thread per rank: preset `{MODEL.name}` ({MODEL.params() / 1e6:.1f}M parameters), sequence "
        f"{SEQ}, micro-batch {MICRO_BATCH} per rank, {target.precision} (every contender), "
        f"AdamW (fused), clipping {OPTIM.grad_clip}. Ours: `build_runtime` with `Layout(dp=N, zero_stage=0 | 2)` "
        f"and `Runtime.train_step`; DDP: the same `GPT` in `DistributedDataParallel`, `AdamW(fused=True)` over the "
        f"same parameter groups, `clip_grad_norm_`. After one step on the same data and dropout masks all three "
        f"held the same weights on every rank (largest difference {worst:.1e}). Then {steps} measured turns after "
        f"{warmup} warm-up, contenders alternating step by step in the same processes; each step runs between "
        f"two barriers (the slowest rank's time).", "",
        "```bash", command, "```", "",
        f"Machine (load before the run): {machine.describe()}. Date: {today()}.", "",
        scaling_table(rows, cores=machine.cores), "",
        "Scaling efficiency: tokens/s(N) / (N × tokens/s(1)) of the same contender (weak scaling, Gustafson "
        "1988), from medians of separate runs per N. Ours / DDP: median over turns of DDP's step time over ours "
        "(> 1: ours faster), by wall clock and by CPU seconds per rank. CPU s: the rank process's CPU time per "
        "step (gloo's threads included), mean over ranks.", "",
        "### Gradient communication", "",
        communication_table(rows, gradient_mb=gradient_mb), "",
        "Ours: wall time inside DeepSpeed's gradient reduction calls (ZeRO-0: `allreduce_gradients`, flatten + "
        "all-reduce + copy back; ZeRO-2: the bucket reductions from backward hooks and the all-gather of updated "
        "partitions), which block on CPU (overlap_comm off), so the time includes waiting there for the slowest "
        "rank to finish its backward. DDP all-reduces its buckets on gloo's thread while backward continues, so "
        "its communication is not separable from the step without changing DDP; the all-reduce of the whole "
        "gradient measured alone is the cost it overlaps.", "",
        reading(rows, cores=machine.cores), ""])


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, Target]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=4, help="measured turns (each contender one step per turn)")
    parser.add_argument("--warmup", type=int, default=1)
    add_target_arguments(parser)
    parser.add_argument("--write", type=Path, help="replace this benchmark's section of that Markdown file")
    args = parser.parse_args(argv)
    return args, parse_target(parser, args, ranks=max(args.ranks))


def worker_args(ranks: int, args: argparse.Namespace, target: Target) -> tuple:
    """What ``rank_worker`` is launched with on each of ``ranks`` ranks."""
    return (ranks, args.steps, args.warmup, target.device, target.precision)


def main() -> None:
    args, target = parse_args()
    machine = machine_info()
    runs = {ranks: run_ranks(rank_worker, world=ranks, args=worker_args(ranks, args, target)) for ranks in args.ranks}
    command = (f".venv/bin/python -m benchmarks.dp_scaling --ranks {' '.join(map(str, args.ranks))} "
               f"--steps {args.steps} --warmup {args.warmup} {target.flags}"
               + (f" --write {args.write}" if args.write else ""))
    section = report(runs, machine=machine, command=command, steps=args.steps, warmup=args.warmup, target=target)
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
