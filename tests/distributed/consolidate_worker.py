"""One rank of the consolidation memory test: each of two pipeline stages owns 16 tensors of
4 MiB; rank 0 consolidates them with ``gather_plain_state`` while the process's peak resident
memory is measured (Linux VmHWM, reset through /proc/self/clear_refs just before the call)."""
from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import re
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from orchestrator.engine.consolidate import gather_plain_state
from orchestrator.engine.parallel import build_parallel_state, init_distributed, shutdown_distributed
from orchestrator.model.params import Shard
from orchestrator.plan.layout import Layout

TENSORS, ROWS, COLS = 16, 1024, 1024          # 16 × 4 MiB fp32 = 64 MiB per stage


def memory_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def stage_tensor(stage: int, index: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * stage + index)
    return torch.randn(ROWS, COLS, generator=generator)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    faulthandler.dump_traceback_later(240, exit=True)       # a hang prints every thread's stack, then ends
    context = init_distributed(timeout_minutes=3)
    state = build_parallel_state(Layout(pp=context.world).resolve(context.world), context)
    shards = [(nn.Parameter(stage_tensor(state.pp_rank, i)), Shard(name=f"stage{state.pp_rank}.{i}"))
              for i in range(TENSORS)]
    gc.collect()
    dist.barrier()
    Path("/proc/self/clear_refs").write_text("5")                    # VmHWM := VmRSS
    before = memory_kib("VmRSS")
    result = gather_plain_state(shards, state=state, zero3=False)
    peak = (memory_kib("VmHWM") - before) * 1024
    exact = all(torch.equal(tensor, stage_tensor(int(name[5:].split(".")[0]), int(name.split(".")[1])))
                for name, tensor in result.items())
    report = {"rank": state.rank, "peak_bytes": peak, "shard_bytes": TENSORS * ROWS * COLS * 4,
              "tensor_bytes": ROWS * COLS * 4, "result_bytes": sum(t.numel() * 4 for t in result.values()),
              "names": sorted(result), "exact": exact}
    (args.out / f"rank{state.rank}.json").write_text(json.dumps(report))
    shutdown_distributed()


if __name__ == "__main__":
    main()
