"""How long the planner's full search takes (SPEC §4: gpt3-175b on 4096 GPUs well under a second).

    python benchmarks/planner_search.py [--repeats 20]

Each case runs the whole search (enumerate, validate, memory, time model, rank) ``--repeats``
times in this process and reports the median and the fastest wall time, with the number of layouts
considered and kept. Prints a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

from orchestrator.config.cluster import make_cluster
from orchestrator.config.model import get_model
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.search import search

CASES = (  # model, gpu, gpus, batch tokens, seq
    ("gpt3-175b", "h100-80g", 4096, 3.2e6, 2048),
    ("gpt3-175b", "a100-80g", 1024, 3.2e6, 2048),
    ("gpt4-moe", "h100-80g", 4096, 60e6, 8192),
)


def time_case(model: str, gpu: str, gpus: int, tokens: float, seq: int, repeats: int) -> dict:
    job = Job(model=get_model(model), cluster=make_cluster(gpu=gpu, gpus=gpus), seq=seq,
              batch=BatchTarget.from_tokens(tokens, seq=seq))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = search(job)
        seconds.append(time.perf_counter() - start)
    return dict(case=f"{model} on {gpus} × {gpu}", considered=result.considered, fit=len(result.ranked),
                median_ms=statistics.median(seconds) * 1e3, best_ms=min(seconds) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| case | layouts considered | fit | median ms | fastest ms |\n|---|---|---|---|---|")
    for case in CASES:
        row = time_case(*case, repeats=args.repeats)
        print(f"| {row['case']} | {row['considered']} | {row['fit']} | {row['median_ms']:.0f} | {row['best_ms']:.0f} |")


if __name__ == "__main__":
    main()
