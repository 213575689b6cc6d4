"""The 1F1B pipeline as it runs, against the planner: idle fraction, micro-batches in flight and
activation memory per stage.

    .venv/bin/python -m benchmarks.pipeline_bubble --pp 2 4 --micro-batches 4 8 16 --write BENCHMARKS.md

For PP = 2 and 4 and m micro-batches of one sequence, ``build_runtime`` lays an 8-layer GPT (d_model
256, vocab 256, so the blocks — not the embedding or the 128 KiB messages — dominate) over PP gloo
ranks, and DeepSpeed's ``PipelineEngine`` runs its 1F1B ``TrainSchedule``. Every ForwardPass and
BackwardPass instruction is timed (wall clock, shared by the processes, and the thread's CPU time)
and its saved-for-backward tensors are metered (``common.SavedTensorMeter``). Per stage:

- idle fraction = 1 − (forward + backward wall time) / window, the window running from the
  step's start (after a barrier) to the last backward of any stage; the planner's figure is
  Narayanan et al. 2021's (p − 1)/(m + p − 1);
- "replayed": the same per-stage order of passes, each lasting its measured CPU time, laid out by
  the schedule's dependencies (forward i on stage s after forward i on s − 1, backward i after
  backward i on s + 1) with free communication — the bubble on dedicated cores;
- in flight = forwards run − backwards run, at its peak (1F1B: p − s on stage s; GPipe: m);
- activation bytes = saved tensors at their peak and after one forward, against the planner's
  Korthikanti et al. 2022 figure (``plan.activations``).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from benchmarks.common import (CPU_FP32, SavedTensorMeter, Target, add_target_arguments, machine_info,
                               markdown_table, parse_target, run_ranks, today, write_section)
from orchestrator.config.model import GPTConfig
from orchestrator.config.run import OptimConfig
from orchestrator.plan.layout import Layout

HEADING = "## Pipeline bubble and activations (1F1B)"
PIPE_MODEL = GPTConfig(name="pipe-bench", n_layers=8, d_model=256, n_heads=4, d_head=64, ctx=128, vocab=256)
SEQ = 128
OPTIM = OptimConfig(lr=1e-4, warmup_steps=0, grad_clip=1.0)
MiB = 2**20


@dataclass(frozen=True)
class Pass:
    """One forward ("F") or backward ("B") pass of one micro-batch on one stage."""

    kind: str
    start: float
    """``time.perf_counter()`` seconds (CLOCK_MONOTONIC: one clock for every process of the machine)."""
    end: float
    cpu: float
    """CPU seconds of the rank's thread during the pass (less than end − start when it was descheduled)."""
    live_bytes: int = 0
    """Saved-for-backward bytes held by the stage right after the pass."""


# --- analysis (pure) -----------------------------------------------------------------------------
def peak_in_flight(kinds: Sequence[str]) -> int:
    """Most micro-batches whose forward has run and backward has not, over a stage's pass order."""
    live = peak = 0
    for kind in kinds:
        live += 1 if kind == "F" else -1
        if live < 0:
            raise ValueError(f"pass order {''.join(kinds)} runs a backward before its forward")
        peak = max(peak, live)
    return peak


def idle_fractions(stages: Sequence[Sequence[Pass]], *, start: float) -> list[float]:
    """Per stage, 1 − busy / window, the window from ``start`` to the last pass of any stage."""
    end = max(p.end for passes in stages for p in passes)
    if end <= start:
        raise ValueError(f"the passes end at {end} before the window starts at {start}")
    return [1.0 - sum(p.end - p.start for p in passes) / (end - start) for passes in stages]


def replay(stages: Sequence[Sequence[tuple[str, float]]]) -> list[float]:
    """Idle fractions of the schedule when each pass takes the given seconds and messages are free.

    ``stages[s]`` is stage s's pass order as (kind, seconds); the i-th "F" (or "B") of a stage is
    micro-batch i. Forward i on stage s waits for forward i on s − 1, backward i for backward i on
    s + 1 (the last stage's backward follows its own forward). With equal costs this gives
    Narayanan et al. 2021's (p − 1)/(m + p − 1) for 1F1B.
    """
    count = len(stages)
    ends: dict[tuple[str, int, int], float] = {}   # (kind, stage, micro-batch) -> end time
    cursor, free_at, seen = [0] * count, [0.0] * count, [{"F": 0, "B": 0} for _ in range(count)]
    remaining = sum(len(passes) for passes in stages)
    while remaining:
        progressed = False
        for s, passes in enumerate(stages):
            while cursor[s] < len(passes):
                kind, seconds = passes[cursor[s]]
                index = seen[s][kind]
                upstream = (("F", s - 1, index) if s > 0 else None) if kind == "F" else \
                    (("B", s + 1, index) if s < count - 1 else ("F", s, index))
                if upstream is not None and upstream not in ends:
                    break
                begin = max(free_at[s], ends[upstream] if upstream else 0.0)
                free_at[s] = ends[(kind, s, index)] = begin + seconds
                seen[s][kind] += 1
                cursor[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise ValueError("the pass orders deadlock: a pass waits for one that never runs")
    makespan = max(free_at)
    return [1.0 - sum(seconds for _, seconds in passes) / makespan for passes in stages]


# --- instrumentation -------------------------------------------------------------------------------
class PassRecorder:
    """Times every ForwardPass / BackwardPass a DeepSpeed ``PipelineEngine`` executes and meters the
    tensors its forwards save, by wrapping the engine's instruction table (this engine only)."""

    def __init__(self, engine):
        from deepspeed.runtime.pipe import schedule

        self.passes: list[Pass] = []
        self.meter = SavedTensorMeter(exclude=list(engine.module.parameters()))
        table = dict(engine._INSTRUCTION_MAP)
        table[schedule.ForwardPass] = self._timed("F", table[schedule.ForwardPass])
        table[schedule.BackwardPass] = self._timed("B", table[schedule.BackwardPass])
        engine._INSTRUCTION_MAP = table

    def _timed(self, kind: str, execute):
        def run(engine, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            with self.meter.hooks() if kind == "F" else contextlib.nullcontext():
                execute(engine, **kwargs)
            self.passes.append(Pass(kind, start, time.perf_counter(), time.thread_time() - cpu, self.meter.live_bytes))
        return run

    def take(self) -> tuple[list[Pass], int]:
        """This step's passes and saved-tensor peak; the next step starts afresh."""
        passes, peak, self.passes = self.passes, self.meter.peak_bytes, []
        self.meter.reset_peak()
        return passes, peak


def micro_batches(count: int) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, PIPE_MODEL.vocab, (count, 1, SEQ + 1), generator=g)
    return [{"input_ids": b[:, :-1], "labels": b[:, 1:]} for b in blocks]


def pipe_layout(pp: int, m: int, precision: str) -> Layout:
    """PP = ``pp``, ``m`` micro-batches of one sequence. bf16 takes ZeRO-1, the stage the validator
    asks for so DeepSpeed accumulates the m micro-batches' gradients in fp32 (at dp 1 it partitions
    nothing: the same memory as ZeRO-0)."""
    return Layout(pp=pp, micro_batch=1, grad_accum=m, zero_stage=1 if precision == "bf16" else 0)


def stage_worker(pp: int, counts: list[int], steps: int, warmup: int, device: str, precision: str) -> list[dict]:
    """One rank (= one stage) on ``device`` in ``precision``: for each m, ``warmup + steps`` optimizer
    steps; rank 0 returns all stages' passes."""
    import gc

    import torch.distributed as dist

    from orchestrator.engine.build import build_runtime

    results = []
    for m in counts:
        runtime = build_runtime(PIPE_MODEL, pipe_layout(pp, m, precision), OPTIM, total_steps=1000, seed=0,
                                precision=precision, device_type=device)
        recorder, data, steps_seen = PassRecorder(runtime.engine), micro_batches(m), []
        for step in range(warmup + steps):
            dist.barrier()
            start = time.perf_counter()
            runtime.train_step(data)
            passes, peak = recorder.take()
            if step >= warmup:
                steps_seen.append({"start": start, "peak_bytes": peak, "passes": [vars(p) for p in passes]})
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (runtime.state.pp_rank, steps_seen))
        results.append({"pp": pp, "m": m, "device": device, "precision": precision,
                        "stages": [s for _, s in sorted(gathered, key=lambda item: item[0])]})
        del runtime, recorder
        gc.collect()
    return results


# --- planner and report ------------------------------------------------------------------------
def planned_activation_bytes(pp: int, m: int, stage: int, *, device: str = "cpu", precision: str = "fp32") -> float:
    """The planner's activations for the first and last stage; a middle stage s holds p − s
    micro-batches (Narayanan et al. 2021, §2.2.1) of Korthikanti's per-layer bytes, at the
    precision's width (4 bytes fp32, 2 bf16) with the device's dropout masks (``dropout_mask_bytes``:
    the activations' width on a CPU, 1 byte on CUDA)."""
    from orchestrator.plan.activations import (dropout_mask_bytes, layer_bytes, layer_mask_elements,
                                               stage_activation_bytes)
    from orchestrator.plan.partition import layers_per_stage

    width = 2 if precision == "bf16" else 4
    layout = Layout(pp=pp, dp=1, micro_batch=1, grad_accum=m)
    counts = layers_per_stage(PIPE_MODEL.n_layers, pp)
    first = sum(counts[:stage])
    layers = range(first, first + counts[stage])
    mask_bytes = dropout_mask_bytes(device, width)
    if stage in (0, pp - 1):
        name = "first" if stage == 0 else "last"
        return stage_activation_bytes(PIPE_MODEL, layout, seq=SEQ, stage=name, layers=layers, activation_bytes=width,
                                      mask_bytes=mask_bytes)
    shape = dict(seq=SEQ, micro_batch=1, tp=1, sequence_parallel=False, recompute="none")
    per_layer = (layer_bytes(PIPE_MODEL, **shape) * width / 2
                 + layer_mask_elements(PIPE_MODEL, **shape) * (mask_bytes - width / 2))
    return per_layer * len(layers) * min(pp - stage, m)


def summarise(run: dict) -> dict:
    """Medians over the measured steps, per stage."""
    pp, m, stages = run["pp"], run["m"], run["stages"]
    steps = len(stages[0])
    wall, replayed, share, span = [], [], [], []
    for step in range(steps):
        passes = [[Pass(**p) for p in stage[step]["passes"]] for stage in stages]
        start = min(stage[step]["start"] for stage in stages)
        wall.append(idle_fractions(passes, start=start))
        replayed.append(replay([[(p.kind, p.cpu) for p in stage] for stage in passes]))
        share.append([sum(p.cpu for p in stage) / sum(p.end - p.start for p in stage) for stage in passes])
        span.append(max(p.end for stage in passes for p in stage) - start)
    median = lambda rows: [statistics.median(row[s] for row in rows) for s in range(pp)]  # noqa: E731
    last = [[Pass(**p) for p in stage[-1]["passes"]] for stage in stages]
    return dict(pp=pp, m=m, planner=(pp - 1) / (m + pp - 1), wall=median(wall), replayed=median(replayed),
                cpu_share=median(share), step_s=statistics.median(span),
                in_flight=[peak_in_flight([p.kind for p in stage]) for stage in last],
                first_forward_bytes=[stage[0].live_bytes for stage in last],
                peak_bytes=[max(stage[step]["peak_bytes"] for step in range(steps)) for stage in stages],
                planned_bytes=[planned_activation_bytes(pp, m, s, device=run.get("device", "cpu"),
                                                        precision=run.get("precision", "fp32")) for s in range(pp)])


def fmt(values: Sequence[float], pattern: str = "{:.2f}") -> str:
    return " / ".join(pattern.format(v) for v in values)


def bubble_table(rows: list[dict]) -> str:
    return markdown_table(
        ["PP", "m", "planner (p−1)/(m+p−1)", "measured idle, stage 0 / 1 / …", "replayed on dedicated cores",
         "CPU share in F/B", "pipeline s"],
        [[r["pp"], r["m"], f"{r['planner']:.3f}", fmt(r["wall"]), fmt(r["replayed"]), fmt(r["cpu_share"]),
          f"{r['step_s']:.2f}"] for r in rows])


def memory_table(rows: list[dict]) -> str:
    table = []
    for r in rows:
        for s in range(r["pp"]):
            table.append([r["pp"], r["m"], s, r["in_flight"][s], min(r["pp"] - s, r["m"]), r["m"],
                          f"{r['first_forward_bytes'][s] / MiB:.2f}", f"{r['peak_bytes'][s] / MiB:.2f}",
                          f"{r['planned_bytes'][s] / MiB:.2f}", f"{r['peak_bytes'][s] / r['planned_bytes'][s]:.3f}"])
    return markdown_table(["PP", "m", "stage", "in flight (1F1B, measured)", "p − s", "GPipe would hold",
                           "MiB after one forward", "peak MiB", "planned MiB", "measured / planned"], table)


READING = """How to read it:

- *Measured idle* is wall-clock time; *replayed* lays the same per-stage pass order out again with each pass
  lasting its measured CPU time and free messages: the bubble this schedule would have on dedicated cores.
- This machine has 2 cores, shared with other jobs (load average above). PP = 2 gives each rank a core;
  PP = 4 puts two ranks on each. A stage waiting in a gloo receive sleeps, so the stages that compute share
  the cores; *CPU share* is the fraction of a pass's wall time its thread was on a core (1 = never
  descheduled). Time-sharing stretches passes unevenly and adds idle time that is not the schedule's: that
  is the gap between measured and replayed, largest for PP = 4. The replay removes it and lands near the
  formula; what remains is the stages' unequal work (embedding on the first stage, final LayerNorm, LM head
  and loss on the last).
- Micro-batches in flight and activation bytes do not depend on timing: they are exact on any machine.
  DeepSpeed's `TrainSchedule` holds p − s micro-batches on stage s (p on the first), as the planner assumes;
  GPipe's all-forward-then-all-backward schedule would hold all m on every stage.
- *Planned MiB* is the planner's `stage_activation_bytes` for the first and the last stage (the two it
  checks); for a middle stage s, Korthikanti's bytes per layer × its layers × (p − s). The planner counts
  dropout masks at the device's width (`dropout_mask_bytes`): CPU dropout keeps float32 masks, 4 bytes per
  element where the formula's CUDA bool masks are 1, for the attention probabilities, both residual branches
  and the embedding (per layer 96·s·b·h bytes in fp32 at a·s/h = 2, against the formula's 88).
- What remains, about 8%, is measured tensor by tensor: the value tensor is a view into the fused QKV
  output, so the whole QKV buffer stays alive, not V alone (per layer 104·s·b·h bytes measured). That is
  this model's attention code, not the device, and the planner does not count it.
"""


def report(rows: list[dict], *, command: str, steps: int, target: Target = CPU_FP32) -> str:
    machine = machine_info()
    return "\n".join([
        target.heading(HEADING), "",
        f"DeepSpeed's 1F1B `TrainSchedule` through `build_runtime` (`Layout(pp=P, micro_batch=1, grad_accum=m"
        + (", zero_stage=1" if target.precision == "bf16" else "") + ")`), "
        f"{target.precision}, " + ("gloo ranks on this CPU, one thread each" if target.device == "cpu" else
                                   "NCCL ranks, one GPU each") + f". Model: {PIPE_MODEL.n_layers} layers, d_model "
        f"{PIPE_MODEL.d_model}, {PIPE_MODEL.n_heads} heads, vocab {PIPE_MODEL.vocab}, sequence {SEQ}, "
        f"dropout {PIPE_MODEL.dropout}. Medians of {steps} measured steps after a warm-up step.", "",
        "```bash", command, "```", "",
        f"Machine: {machine.describe()}. Date: {today()}.", "",
        "### Idle fraction per stage", "",
        bubble_table(rows), "",
        "### Micro-batches in flight and activation memory per stage", "",
        memory_table(rows), "", READING])


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, Target]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pp", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    add_target_arguments(parser)
    parser.add_argument("--write", help="replace this benchmark's section of that Markdown file")
    args = parser.parse_args(argv)
    return args, parse_target(parser, args, ranks=max(args.pp))


def stage_args(pp: int, args: argparse.Namespace, target: Target) -> tuple:
    """What ``stage_worker`` is launched with on each of the ``pp`` ranks."""
    return (pp, args.micro_batches, args.steps, args.warmup, target.device, target.precision)


def main() -> None:
    args, target = parse_args()
    rows = []
    for pp in args.pp:
        runs = run_ranks(stage_worker, world=pp, args=stage_args(pp, args, target))
        rows += [summarise(run) for run in runs]
    command = (f".venv/bin/python -m benchmarks.pipeline_bubble --pp {' '.join(map(str, args.pp))} --micro-batches "
               f"{' '.join(map(str, args.micro_batches))} --steps {args.steps} --warmup {args.warmup} {target.flags}"
               + (f" --write {args.write}" if args.write else ""))
    section = report(rows, command=command, steps=args.steps, target=target)
    print(section)
    if args.write:
        from pathlib import Path

        write_section(Path(args.write), section)


if __name__ == "__main__":
    main()
