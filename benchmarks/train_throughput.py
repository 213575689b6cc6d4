"""Training tokens/s of one process: our runtime vs a plain PyTorch loop vs Hugging Face GPT-2.

Each shape (``--shapes``; by default preset ``gpt-25m`` at sequence 256, batch 8, and the 125M
``gpt3-small`` at a short sequence, 128, batch 4) is run by all contenders with the same data,
AdamW with the same hyperparameters and gradient clipping at 1.0:

- ``ours``:  ``build_runtime`` → DeepSpeed engine (ZeRO 0, fp32) → ``Runtime.train_step``;
- ``plain``: the same ``GPT`` module, ``torch.optim.AdamW`` (torch's defaults), ``clip_grad_norm_``,
  a bare loop; ``plain_fused``: the same with ``AdamW(fused=True)``, the kernel our runtime uses,
  so ours vs plain_fused is the cost of the runtime itself;
- ``hf``:    ``transformers.GPT2LMHeadModel`` of the same shape, the same optimizer and clipping.

Every contender runs on ``--device`` (cpu, or cuda: GPU 0) in ``--precision``: fp32, or bf16 —
ours as the runtime trains in it (DeepSpeed's bf16 module with fp32 master weights), plain and HF
under ``torch.autocast`` (fp32 weights, bf16 matmuls), the usual way to train them in bf16.

Contenders take turns step by step (ours, plain, plain_fused, hf, ours, …) so load from other
processes hits them alike. On a shared machine wall-clock times swing with the load, so the
table also gives process CPU time and compares contenders by paired ratios (each step against
the plain loop's step of the same turn); the fastest step is the least disturbed wall figure.
Achieved FLOP/s uses the model FLOPs of Narayanan et al. 2021 (``GPTConfig.flops_per_token``,
no recompute) and is given as a fraction of this machine's measured matmul peak in the same precision.

    .venv/bin/python -m benchmarks.train_throughput --steps 10 --write BENCHMARKS.md
    .venv/bin/python -m benchmarks.train_throughput --shapes gpt-25m:256:8 --steps 4
    .venv/bin/python -m benchmarks.train_throughput --precision bf16 --device cuda
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common import add_target_arguments, markdown_table, parse_target, today, write_section
from orchestrator.config.model import GPTConfig, get_model
from orchestrator.config.run import OptimConfig
from orchestrator.engine.peak import measure_peak, time_matmuls
from orchestrator.model.gpt import GPT
from orchestrator.model.loss import lm_loss
from orchestrator.model.params import init_parameters, param_shards

OPTIM = OptimConfig(lr=3e-4, warmup_steps=0, grad_clip=1.0)
HEADING = "## Training throughput"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Target:
    """Where and in what precision every contender runs."""

    device: torch.device
    precision: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def autocast(self):
        """bf16 matmuls for the fp32-weight contenders (plain, HF); nothing in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass(frozen=True)
class Shape:
    """A model preset trained at ``seq`` tokens × ``batch`` sequences per step."""

    preset: str
    seq: int
    batch: int

    @staticmethod
    def parse(text: str) -> "Shape":
        try:
            preset, seq, batch = text.split(":")
            shape = Shape(preset, int(seq), int(batch))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shape {text!r}: write PRESET:SEQ:BATCH, e.g. gpt-25m:256:8") from None
        try:
            get_model(shape.preset)
        except (KeyError, ValueError) as error:       # the message names the presets
            raise argparse.ArgumentTypeError(str(error)) from None
        return shape

    @property
    def config(self) -> GPTConfig:
        return get_model(self.preset)

    @property
    def tokens(self) -> int:
        return self.seq * self.batch

    def __str__(self) -> str:
        return f"{self.preset}:{self.seq}:{self.batch}"


SHAPES = (Shape("gpt-25m", 256, 8), Shape("gpt3-small", 128, 4))


def batches(shape: Shape, count: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, shape.config.vocab, (count, shape.batch, shape.seq + 1), generator=g)
    return [{"input_ids": b[:, :-1], "labels": b[:, 1:]} for b in blocks]


def adamw(params, *, fused: bool | None = None) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=OPTIM.lr, betas=(OPTIM.beta1, OPTIM.beta2), eps=OPTIM.eps,
                             weight_decay=OPTIM.weight_decay, fused=fused)


def ours_step(shape: Shape, target: Target) -> Callable[[dict], float]:
    from orchestrator.engine.build import build_runtime
    from orchestrator.plan.layout import Layout

    runtime = build_runtime(shape.config, Layout(micro_batch=shape.batch, grad_accum=1), OPTIM,
                            total_steps=1000, seed=0, precision=target.precision, device_type=target.device.type)
    return lambda batch: runtime.train_step([batch]).loss


def plain_step(shape: Shape, target: Target, *, fused: bool | None = None) -> Callable[[dict], float]:
    config = shape.config
    model = GPT(config)
    init_parameters(param_shards(model), config=config, seed=0)
    model.to(target.device)
    optimizer = adamw(model.parameters(), fused=fused)

    return torch_step(model, optimizer, target)


def torch_step(model, optimizer, target: Target) -> Callable[[dict], float]:
    """A plain PyTorch training step (forward, backward, clip, AdamW) shared by the plain and HF contenders."""

    def step(batch: dict) -> float:
        batch = {key: value.to(target.device) for key, value in batch.items()}
        with target.autocast():
            logits = model(input_ids=batch["input_ids"]).logits
        loss = lm_loss(logits, batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def hf_step(shape: Shape, target: Target) -> Callable[[dict], float]:
    from transformers import GPT2Config, GPT2LMHeadModel

    c = shape.config
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab, n_positions=c.ctx, n_embd=c.d_model, n_layer=c.n_layers,
                                       n_head=c.n_heads, resid_pdrop=c.dropout, embd_pdrop=c.dropout,
                                       attn_pdrop=c.dropout, bos_token_id=0, eos_token_id=0)).train()
    model.to(target.device)
    optimizer = adamw(model.parameters())

    return torch_step(model, optimizer, target)


def matmul_flops(n: int, seconds: float, target: Target) -> float:
    """FLOP/s of n × n matmuls in the target's precision for about ``seconds``: the runtime's MFU probe (``engine.peak``)."""
    return time_matmuls(n, dtype=target.dtype, device=target.device, seconds=seconds)


def matmul_peak(target: Target, seconds: float = 3.0) -> float:
    """Best FLOP/s over a few sizes (``engine.peak.measure_peak``, not its cache: this run's own figure)."""
    sizes = (1024, 2048, 3072) if target.device.type == "cpu" else (4096, 8192)
    return measure_peak(dtype=target.dtype, device=target.device, seconds=seconds, sizes=sizes)[0]


def optimizer_step_seconds(shape: Shape, repeats: int = 3) -> dict[str, float]:
    """AdamW.step on the model's parameters: torch's default on CPU (a loop over tensors) vs fused."""
    model = GPT(shape.config)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    seconds = {}
    for name, fused in (("default", None), ("fused", True)):
        optimizer = adamw(model.parameters(), fused=fused)
        optimizer.step()
        start = time.perf_counter()
        for _ in range(repeats):
            optimizer.step()
        seconds[name] = (time.perf_counter() - start) / repeats
    return seconds


def contenders(shape: Shape, target: Target) -> dict[str, Callable[[dict], float]]:
    return {"ours": ours_step(shape, target), "plain": plain_step(shape, target),
            "plain_fused": plain_step(shape, target, fused=True), "hf": hf_step(shape, target)}


def measure(shape: Shape, target: Target, *, steps: int, warmup: int) -> tuple[dict[str, dict], list[float]]:
    """Wall and CPU seconds of every step per contender. Contenders take turns step by step, so
    load from other processes falls on all of them alike and each step can be compared with the
    neighbouring steps of the others (paired ratios)."""
    steppers = contenders(shape, target)
    data = batches(shape, warmup + steps)
    for step in steppers.values():
        for batch in data[:warmup]:
            step(batch)
    times: dict[str, dict] = {name: {"wall": [], "cpu": []} for name in steppers}
    probes = []
    for batch in data[warmup:]:
        probes.append(matmul_flops(2048, 0.5, target))     # a peak probe in every turn, under the turn's load
        for name, step in steppers.items():
            target.synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            step(batch)                                         # returns the loss as a float: synchronised
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times, probes


def paired_speedup(times: dict[str, dict], name: str, *, clock: str) -> float:
    """Median over steps of plain's time / this contender's time in the same turn."""
    return statistics.median(p / t for p, t in zip(times["plain"][clock], times[name][clock]))


def shape_rows(shape: Shape, times: dict[str, dict], *, peak: float) -> list[list[str]]:
    flops_per_step = shape.config.flops_per_token(seq=shape.seq) * shape.tokens
    rows = []
    for name, clocks in times.items():
        median, fastest = statistics.median(clocks["wall"]), min(clocks["wall"])
        rows.append([str(shape), f"{shape.config.params() / 1e6:.1f}M", name, f"{median:.2f}", f"{fastest:.2f}",
                     f"{statistics.median(clocks['cpu']):.2f}", f"{shape.tokens / median:,.0f}",
                     f"{flops_per_step / fastest / 1e9:.1f}", f"{flops_per_step / fastest / peak:.1%}",
                     f"{paired_speedup(times, name, clock='wall'):.3f} / {paired_speedup(times, name, clock='cpu'):.3f}"])
    return rows


def report(results: dict[Shape, dict[str, dict]], *, peak: float, optimizer: dict[Shape, dict[str, float]],
           steps: int, command: str, target: Target) -> str:
    p = target.precision
    header = ["shape (preset:seq:batch)", "params", "contender", "median step s", "fastest step s",
              "median CPU s per step", "tokens/s (median)", "model GFLOP/s (fastest)",
              f"of {p} matmul peak (fastest)", "speed vs plain: wall / CPU"]
    rows = [row for shape, times in results.items() for row in shape_rows(shape, times, peak=peak)]
    flops = "; ".join(f"`{shape.preset}` {shape.config.flops_per_token(seq=shape.seq) * shape.tokens / 1e9:.1f} GFLOP "
                      f"({shape.config.flops_per_token(seq=shape.seq) / 1e6:.1f} MFLOP per token)" for shape in results)
    adam = "; ".join(f"`{shape.preset}` {secs['default']:.2f} s against {secs['fused']:.2f} s"
                     for shape, secs in optimizer.items())
    machine = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads"
    if target.device.type == "cuda":
        machine += f", GPU {torch.cuda.get_device_name(target.device)}"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join([
        heading(target), "",
        f"One process on {target.device.type}, {p}, AdamW, clipping 1.0; {steps} measured steps per contender and "
        f"shape, taken in turns.",
        "", "```bash", command, "```", "",
        f"Machine: {machine}; load average {load} (1 / 5 / 15 min) at the end; {p} matmul peak: "
        f"{peak / 1e9:.1f} GFLOP/s, the best of probes taken before the run and in every turn (so it and the "
        f"fastest steps are the least disturbed figures). Date: {today()}.", "",
        markdown_table(header, rows), "",
        f"Model FLOPs per step (Narayanan et al. 2021, no recompute): {flops}. Speed vs plain: median over steps "
        f"of plain's step time divided by the contender's in the same turn (> 1: faster than plain), by wall "
        f"clock and by process CPU time.", "",
        "What was removed to get here: torch's default AdamW on CPU loops over tensors in Python where "
        f"`AdamW(fused=True)` runs one kernel (optimizer step, same run: {adam}), so the runtime uses the fused "
        "kernel (`plain` keeps torch's default; `plain_fused` uses the runtime's kernel, so ours vs plain_fused is "
        "the runtime's own cost); DeepSpeed flattened, all-reduced and copied back every gradient even with one "
        "data-parallel rank, which the runtime now turns off when there is nothing to reduce; clipping uses "
        "torch's foreach norm and scale. Wall times swing with whatever else the machine runs: the paired "
        "CPU-time ratios are the steadiest comparison.", ""])


def heading(target: Target) -> str:
    """The BENCHMARKS.md section a run writes: the fp32 CPU one keeps its historical name."""
    if target.device.type == "cpu" and target.precision == "fp32":
        return HEADING
    return f"{HEADING} ({target.device.type}, {target.precision})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", type=Shape.parse, default=list(SHAPES),
                        help="PRESET:SEQ:BATCH each (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per contender")
    parser.add_argument("--warmup", type=int, default=2)
    add_target_arguments(parser)
    parser.add_argument("--write", type=Path, help="update this file's '## Training throughput' section "
                                                   "(for another device or precision, its own section)")
    args = parser.parse_args()
    chosen = parse_target(parser, args)
    target = Target(device=torch.device("cuda", 0) if chosen.device == "cuda" else torch.device("cpu"),
                    precision=chosen.precision)
    peak = matmul_peak(target)
    results, optimizer = {}, {}
    for shape in args.shapes:
        results[shape], probes = measure(shape, target, steps=args.steps, warmup=args.warmup)
        optimizer[shape] = optimizer_step_seconds(shape)
        peak = max(peak, *probes)
    command = (f".venv/bin/python -m benchmarks.train_throughput --shapes {' '.join(map(str, args.shapes))} "
               f"--steps {args.steps} --warmup {args.warmup} --device {args.device} --precision {args.precision}"
               + (f" --write {args.write}" if args.write else ""))
    section = report(results, peak=peak, optimizer=optimizer, steps=args.steps, command=command, target=target)
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
