"""One rank of the import test: loads imported pretrain phases (``final/shards`` and
``model.yaml``) into a tensor- or pipeline-parallel runtime and writes the logits it computes on
the given ids. Started by torchrun from ``test_import_layouts.py``; not collected by pytest.

    python -m torch.distributed.run --nproc_per_node 2 import_worker.py --job job.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

from orchestrator.config.run import OptimConfig, resolve_model
from orchestrator.engine.build import build_runtime, init_distributed
from orchestrator.engine.parallel import shutdown_distributed
from orchestrator.plan.layout import Layout

LAYOUTS = {"tp2": dict(tp=2, micro_batch=2), "pp2": dict(pp=2, micro_batch=2, grad_accum=2)}


def logits_under(phase_dir: Path, layout_name: str, ids: torch.Tensor):
    """The logits of the imported weights laid out as ``layout_name`` (on the rank that holds them)."""
    config = resolve_model(str(phase_dir / "model.yaml"))
    layout = Layout(**LAYOUTS[layout_name]).resolve(dist.get_world_size())
    runtime = build_runtime(config, layout, OptimConfig(), total_steps=1, seed=11)
    runtime.load_weights_sharded(phase_dir / "final" / "shards", parent_head="lm")   # each rank its own regions
    logits = runtime.logits(ids)
    keep = logits is not None and runtime.state.tp_rank == 0 and runtime.state.dp_rank == 0
    return logits if keep else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True, help="JSON: {cases: [[phase_dir, layout, ids_file, out_file]]}")
    parser.add_argument("--local_rank", type=int)
    args = parser.parse_args()
    init_distributed(timeout_minutes=3)
    for phase_dir, layout_name, ids_file, out_file in json.loads(Path(args.job).read_text())["cases"]:
        logits = logits_under(Path(phase_dir), layout_name, torch.load(ids_file))
        if logits is not None:
            torch.save(logits, out_file)
        dist.barrier()
        from deepspeed.utils import groups

        groups.mpu = None  # several layouts in one process: forget the last engine's mpu (test harness only)
    shutdown_distributed()


if __name__ == "__main__":
    main()
