"""The steps of ``make test-gpu`` on one GPU (scripts/test_gpu.sh checks for the GPU and installs
first), each timed and logged, and one report: ``runs/test-gpu/REPORT.md``.

1. the CUDA-only tests (``pytest -m gpu``);
2. the tiny pipeline (pretrain → SFT → RM → PPO) in bf16 on this GPU;
3. the benchmarks against Hugging Face on the same GPU and precision — training throughput,
   rollout generation, the attention masks — each writing its section into the report.

Exits 1 when a step failed or ran past its time; the report says which and keeps the log tails.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

BUDGET_S = 8 * 60
"""SPEC §12: the whole target in under 8 minutes on one H100/H200."""


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]
    timeout_s: int


@dataclass(frozen=True)
class Outcome:
    step: Step
    status: str
    """passed | failed (exit N) | timed out"""
    seconds: float
    log: Path


def gpu_preset(name: str) -> str:
    """The ``cluster.gpu`` preset of the visible GPU (its memory picks the A100 variant)."""
    upper = name.upper()
    if "H200" in upper:
        return "h200"
    if "A100" in upper:
        return "a100-80g" if torch.cuda.get_device_properties(0).total_memory > 60 * 2**30 else "a100-40g"
    return "h100-80g"


def steps(*, out: Path, preset: str, precision: str) -> list[Step]:
    python, report = sys.executable, str(out / "REPORT.md")
    bench = ["--device", "cuda", "--precision", precision, "--write", report]
    return [
        Step("CUDA-only tests (pytest -m gpu)", [python, "-m", "pytest", "-q", "-m", "gpu", "-rs", "tests/gpu"], 180),
        Step(f"tiny pipeline in {precision} (orchestrate run recipes/tiny.yaml)",
             [python, "-m", "orchestrator", "run", "recipes/tiny.yaml", "--run-dir", str(out / "tiny"),
              "--set", f"cluster.gpu={preset}", "--set", "cluster.gpus_per_node=1",
              "--set", f"cluster.precision={precision}"], 330),
        Step("pipeline report (orchestrate report)", [python, "-m", "orchestrator", "report", str(out / "tiny")], 60),
        Step("training throughput vs HF", [python, "-m", "benchmarks.train_throughput", "--steps", "10", *bench], 150),
        Step("rollout generation vs HF generate", [python, "-m", "benchmarks.rollout_speed", "--rounds", "3", *bench],
             150),
        Step("attention masks", [python, "-m", "benchmarks.attention_masks", "--rounds", "5", *bench], 90),
    ]


def run(step: Step, log: Path) -> Outcome:
    start = time.perf_counter()
    with log.open("w") as sink:
        sink.write("$ " + " ".join(step.argv) + "\n")
        sink.flush()
        try:
            code = subprocess.run(step.argv, stdout=sink, stderr=subprocess.STDOUT, timeout=step.timeout_s).returncode
            status = "passed" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {step.timeout_s} s"
    return Outcome(step, status, time.perf_counter() - start, log)


def tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def summary(outcomes: list[Outcome], *, device: str, precision: str, total_s: float) -> str:
    rows = [f"| {o.step.name} | {o.status} | {o.seconds:.0f} |" for o in outcomes]
    verdict = "passed" if all(o.status == "passed" for o in outcomes) else "FAILED"
    lines = ["## make test-gpu", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {device}; torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}; precision {precision}. Verdict: **{verdict}** in {total_s:.0f} s "
             f"(budget {BUDGET_S} s{'' if total_s <= BUDGET_S else ', exceeded'}).", "",
             "| step | status | seconds |", "|---|---|---|", *rows, ""]
    pipeline = next((o for o in outcomes if o.step.name.startswith("pipeline report")), None)
    if pipeline is not None and pipeline.status == "passed":
        lines += ["### The tiny pipeline's report", "", "```", tail(pipeline.log, 60), "```", ""]
    for outcome in outcomes:
        if outcome.status != "passed":
            lines += [f"### {outcome.step.name}: {outcome.status}", "", f"log: `{outcome.log}`", "", "```",
                      tail(outcome.log), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/test-gpu"))
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("test_gpu.py: SKIPPED, no CUDA GPU visible: run it through `make test-gpu` on a GPU machine")
        return 77
    device = torch.cuda.get_device_name(0)
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    report = args.out / "REPORT.md"
    report.write_text("# make test-gpu\n")
    outcomes, start = [], time.perf_counter()
    for index, step in enumerate(steps(out=args.out, preset=gpu_preset(device), precision=args.precision)):
        print(f"[test-gpu] {step.name} …", flush=True)
        outcomes.append(run(step, logs / f"{index + 1}.log"))
        print(f"[test-gpu] {step.name}: {outcomes[-1].status} ({outcomes[-1].seconds:.0f} s)", flush=True)
    text = summary(outcomes, device=device, precision=args.precision, total_s=time.perf_counter() - start)
    sections = report.read_text().split("\n", 1)[1]            # the benchmarks' sections, after the title
    report.write_text("# make test-gpu\n\n" + text + "\n" + sections.lstrip("\n"))
    print(f"[test-gpu] report: {report}")
    return 0 if all(o.status == "passed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
