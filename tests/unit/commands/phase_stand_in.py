"""A stand-in for ``orchestrator.phases.entry`` that exercises the runner and the handoff for real.

It does what a phase does around its training loop — verifies its parents through their
manifests, writes a ``running`` manifest, appends metrics, saves atomic checkpoints and resumes
from the latest one, commits consolidated weights and a ``complete`` manifest — with a counter in
place of the model. ``STAND_IN_FAIL=PHASE:STEP`` makes the first attempt of PHASE exit 3 at STEP
(a marker file lets the rerun pass), to test failure and resume. ``STAND_IN_HOLD=PATH`` makes
rank 0 of the first phase print ``holding`` and wait until PATH exists (two runs at once).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from orchestrator.config.loader import to_dict
from orchestrator.config.run import load_run_config
from orchestrator.handoff.checkpoint import commit, latest_checkpoint, staging_dir, step_tag, verify_checkpoint
from orchestrator.handoff.manifest import (PARENTS, complete_manifest, start_manifest, verify_parent,
                                           write_manifest)
from orchestrator.handoff.metrics import append_metrics

TOKENIZER_HASH = "0" * 64


def resume_step(checkpoints: Path) -> int:
    latest = latest_checkpoint(checkpoints)
    if latest is None:
        return 0
    verify_checkpoint(latest)
    return json.loads((latest / "state.json").read_text())["step"]


def save(checkpoints: Path, step: int, tag: str) -> None:
    staging = staging_dir(checkpoints, tag)
    (staging / "state.json").write_text(json.dumps({"step": step}))
    (staging / "model.pt").write_bytes(step.to_bytes(8, "little") * 64)
    commit(checkpoints, tag, staging)


def hold_until(path, *, phase: str, first: str, limit_s: float = 600.0) -> None:
    if not path or phase != first:
        return
    print(f"{phase}: holding until {path} exists (launcher process group {os.getpgrp()})", flush=True)
    deadline = time.monotonic() + limit_s   # a hang guard for a test that gave up, not a timing
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", required=True)
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    run_dir, phase = Path(args.run_dir), args.phase
    print(f"{phase}: rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')} up, accelerate's DeepSpeed "
          f"config: {os.environ.get('ACCELERATE_DEEPSPEED_CONFIG_FILE')}", flush=True)
    if os.environ.get("RANK", "0") != "0":
        return 0  # like a phase's output, the handoff is written by rank 0 alone
    config = load_run_config(run_dir / phase / "run_config.yaml")
    model = to_dict(config.model)
    for parent, head in PARENTS[phase]:
        verify_parent(run_dir, parent_phase=parent, expect_head=head, expect_model=model,
                      expect_tokenizer_hash=TOKENIZER_HASH)
    hold_until(os.environ.get("STAND_IN_HOLD"), phase=phase, first=config.phases[0])
    directory = run_dir / phase
    layout = json.loads((directory / "plan.json").read_text())["layout"]
    manifest = start_manifest(run_dir, phase=phase, model=model, tokenizer_hash=TOKENIZER_HASH, pad_id=0, eos_id=1,
                              head="scalar" if phase == "reward" else "lm", layout=layout)
    write_manifest(directory, manifest)
    loop = config.phase(phase).loop
    start = resume_step(directory / "checkpoints")
    print(f"{phase}: rank 0 starts at step {start}", flush=True)
    fail_phase, _, fail_step = os.environ.get("STAND_IN_FAIL", "").partition(":")
    for step in range(start + 1, loop.steps + 1):
        metric = {"reward": {"pairwise_accuracy": step / loop.steps}, "ppo": {"reward": step * 0.1, "kl": 0.01 * step}}
        append_metrics(directory / "metrics.jsonl", step=step, kind="train", loss=10.0 / step,
                       **metric.get(phase, {}))
        if step % loop.eval_every == 0:
            append_metrics(directory / "metrics.jsonl", step=step, kind="eval", eval_loss=11.0 / step)
        if step % loop.save_every == 0:
            save(directory / "checkpoints", step, step_tag(step))
        marker = directory / "failed-once"
        if phase == fail_phase and step == int(fail_step) and not marker.exists():
            marker.write_text("")
            print(f"{phase}: injected failure at step {step}", flush=True)
            return 3
    save(directory / "checkpoints", loop.steps, "final")
    final = {"loss": 10.0 / loop.steps}
    append_metrics(directory / "metrics.jsonl", step=loop.steps, kind="final", **final)
    write_manifest(directory, complete_manifest(manifest, directory, step=loop.steps, checkpoint="checkpoints/final",
                                                metrics=final))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
