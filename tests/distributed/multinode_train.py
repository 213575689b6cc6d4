"""Trains a small model with a real DeepSpeed engine on whatever ranks the launcher started.

Run by ``test_multinode_launcher.py`` through the deepspeed launcher's multi-node path. Every
rank fits the same linear regression task on its own shard of the data (ZeRO stage 1, so each
rank owns half of the optimizer state), saves an atomic checkpoint through the handoff's
staging/commit protocol, and rank 0 writes what it saw to ``--out``.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from orchestrator.handoff.checkpoint import commit, staging_dir, step_tag

STEPS = 30


def make_data(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x·w* + noise; each rank takes every world-th row (data parallelism)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=generator)
    y = x @ torch.randn(16, 1, generator=generator) + 0.01 * torch.randn(256, 1, generator=generator)
    return x[rank::world], y[rank::world]


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    config = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
              "train_batch_size": 8 * world, "zero_optimization": {"stage": 1},
              "optimizer": {"type": "Adam", "params": {"lr": 3e-2, "torch_adam": True}}, "steps_per_print": 10**9}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    x, y = make_data(rank, world)
    losses = []
    for step in range(STEPS):
        rows = slice((step * 8) % len(x), (step * 8) % len(x) + 8)
        loss = torch.nn.functional.mse_loss(engine(x[rows]), y[rows])
        engine.backward(loss)
        engine.step()
        averaged = loss.detach().clone()
        dist.all_reduce(averaged)
        losses.append(averaged.item() / world)
    root = Path(args.out).parent / "checkpoints"
    staging = staging_dir(root, step_tag(STEPS))
    engine.save_checkpoint(str(staging), tag="state", save_latest=False)  # every rank writes its shard
    dist.barrier()
    if rank == 0:
        commit(root, step_tag(STEPS), staging)
    dist.barrier()
    seen = [None] * world
    dist.all_gather_object(seen, {"rank": rank, "local_rank": int(os.environ["LOCAL_RANK"]),
                                  "node_rank": int(os.environ.get("CROSS_RANK", -1)), "backend": dist.get_backend()})
    if rank == 0:
        Path(args.out).write_text(json.dumps({"world": world, "ranks": seen, "losses": losses}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
