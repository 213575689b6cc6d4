"""A stand-in for ``orchestrator.phases.entry`` whose pretrain phase "reaches" a known scaling law.

It does what the pretrain phase does around its loop — a ``running`` manifest, a committed
checkpoint, a ``complete`` manifest with the final ``eval_loss`` — without a model: the loss is
L(C) = A·C^B + FLOOR at the run's model FLOPs, times a small fixed wobble per shape (the scatter
of real runs). ``LAW_STAND_IN_FAIL=NAME`` makes the first attempt of the run NAME exit 3 after
its first checkpoint; the rerun resumes from it.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

from orchestrator.config.run import load_run_config
from orchestrator.handoff.checkpoint import commit, latest_checkpoint, staging_dir
from orchestrator.handoff.manifest import complete_manifest, start_manifest, write_manifest

A, B, FLOOR = 60.0, -0.12, 1.2
WOBBLE = 0.001


def law(flops: float, *, n_layers: int, d_model: int) -> float:
    return (A * flops ** B + FLOOR) * (1 + WOBBLE * math.sin(7 * n_layers + d_model))


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", required=True)
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    run_dir, directory = Path(args.run_dir), Path(args.run_dir) / args.phase
    config = load_run_config(directory / "run_config.yaml")
    model, loop = config.model, config.pretrain.loop
    layout = json.loads((directory / "plan.json").read_text())["layout"]
    manifest = start_manifest(run_dir, phase="pretrain", model=config.model.to_dict(), tokenizer_hash="0" * 64,
                              pad_id=0, eos_id=1, head="lm", layout=layout)
    write_manifest(directory, manifest)
    checkpoints = directory / "checkpoints"
    resumed = latest_checkpoint(checkpoints) is not None
    print(f"pretrain: {'resuming' if resumed else 'starting'} {model.name}", flush=True)
    if not resumed:
        staging = staging_dir(checkpoints, "half")
        (staging / "state.json").write_text(json.dumps({"step": loop.steps // 2}))
        commit(checkpoints, "half", staging)
        marker = directory / "failed-once"
        if os.environ.get("LAW_STAND_IN_FAIL") == model.name and not marker.exists():
            marker.write_text("")
            return 3
    tokens = loop.steps * layout["micro_batch"] * layout["grad_accum"] * layout["dp"] * loop.seq_len
    loss = law(model.flops_per_token(loop.seq_len) * tokens, n_layers=model.n_layers, d_model=model.d_model)
    staging = staging_dir(checkpoints, "final")
    (staging / "model.pt").write_bytes(b"weights")
    commit(checkpoints, "final", staging)
    write_manifest(directory, complete_manifest(manifest, directory, step=loop.steps, checkpoint="checkpoints/final",
                                                metrics={"eval_loss": loss, "lr": config.pretrain.optim.lr}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
