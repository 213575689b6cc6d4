"""A stand-in for ``orchestrator.phases.entry`` whose pretrain phase "reaches" a known scaling law.

It does what the pretrain phase does around its loop — a ``running`` manifest, a committed
checkpoint, a ``complete`` manifest with the final ``eval_loss`` — without a model: the loss is
L(C) = A·C^B + FLOOR at the run's model FLOPs, times a small fixed wobble per shape (the scatter
of real runs), times 1 + LR_SHARPNESS · ln(lr / best lr)² off the best LR rule 6e-3 · (64 / d)^½
(the scaling section's default, so runs on that rule land on the law). ``finish`` writes a
complete run in-process (no launcher) for the tests that only refit. ``LAW_STAND_IN_FAIL=NAME`` makes the first attempt of the run NAME exit 3 after
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
BEST_LR, BEST_EXPONENT, LR_SHARPNESS = 6e-3, 0.5, 0.05
SEED_SCATTER = 0.004
"""A run at seed s lands SEED_SCATTER · ((s mod 3) − 1) off: 0 at seeds 3k + 1, ± at the others."""


def law(flops: float, *, n_layers: int, d_model: int, lr: float, seed: int = 1) -> float:
    off = math.log(lr / (BEST_LR * (64 / d_model) ** BEST_EXPONENT))
    return ((A * flops ** B + FLOOR) * (1 + WOBBLE * math.sin(7 * n_layers + d_model)) * (1 + LR_SHARPNESS * off ** 2)
            * (1 + SEED_SCATTER * (seed % 3 - 1)))


def finish(run_dir: Path, config, layout: dict, manifest=None) -> float:
    """A complete pretrain phase in ``run_dir`` whose eval_loss is the law's at its compute and LR."""
    directory, model, loop = run_dir / "pretrain", config.model, config.pretrain.loop
    if manifest is None:
        manifest = start_manifest(run_dir, phase="pretrain", model=model.to_dict(), tokenizer_hash="0" * 64,
                                  pad_id=0, eos_id=1, head="lm", layout=layout)
    tokens = loop.steps * layout["micro_batch"] * layout["grad_accum"] * layout["dp"] * loop.seq_len
    loss = law(model.flops_per_token(loop.seq_len) * tokens, n_layers=model.n_layers, d_model=model.d_model,
               lr=config.pretrain.optim.lr, seed=config.seed)
    checkpoints = directory / "checkpoints"
    staging = staging_dir(checkpoints, "final")
    (staging / "model.pt").write_bytes(b"weights")
    commit(checkpoints, "final", staging)
    write_manifest(directory, complete_manifest(manifest, directory, step=loop.steps, checkpoint="checkpoints/final",
                                                metrics={"eval_loss": loss, "lr": config.pretrain.optim.lr}))
    return loss


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
    finish(run_dir, config, layout, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
