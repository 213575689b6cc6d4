"""Builds run directories in the states a real run leaves them in, through the handoff's own writers."""
from pathlib import Path

from orchestrator.config.loader import to_dict
from orchestrator.config.model import get_model
from orchestrator.config.run import RunConfig, save_run_config
from orchestrator.handoff.checkpoint import commit, staging_dir, step_tag
from orchestrator.handoff.manifest import complete_manifest, failed_manifest, start_manifest, write_manifest
from orchestrator.handoff.metrics import append_metrics


def begin(run_dir: Path, phase: str, head: str = "lm"):
    manifest = start_manifest(run_dir, phase=phase, model=to_dict(get_model("tiny")), tokenizer_hash="t", pad_id=0,
                              eos_id=1, head=head, layout={"tp": 1, "pp": 1, "dp": 1})
    write_manifest(run_dir / phase, manifest)
    return manifest


def save(run_dir: Path, phase: str, tag: str) -> None:
    root = run_dir / phase / "checkpoints"
    staging = staging_dir(root, tag)
    (staging / "model.pt").write_bytes(tag.encode())
    commit(root, tag, staging)


def train(run_dir: Path, phase: str, steps: range, **metric_per_step) -> None:
    for step in steps:
        values = {key: fn(step) for key, fn in metric_per_step.items()}
        append_metrics(run_dir / phase / "metrics.jsonl", step=step, kind="train", **values)
        if step % 10 == 0 and "loss" in values:
            append_metrics(run_dir / phase / "metrics.jsonl", step=step, kind="eval", eval_loss=values["loss"] + 0.1)


def finish(run_dir: Path, phase: str, manifest, step: int, **final) -> None:
    save(run_dir, phase, "final")
    write_manifest(run_dir / phase, complete_manifest(manifest, run_dir / phase, step=step,
                                                      checkpoint="checkpoints/final", metrics=final))


def mixed_run(run_dir: Path) -> Path:
    """pretrain complete, sft complete, reward failed at step 12, ppo not started."""
    run_dir.mkdir(parents=True)
    save_run_config(RunConfig(name="mixed", run_dir=str(run_dir)), run_dir / "run_config.yaml")
    pretrain = begin(run_dir, "pretrain")
    train(run_dir, "pretrain", range(1, 41), loss=lambda s: 8.0 / s ** 0.5)
    finish(run_dir, "pretrain", pretrain, 40, eval_loss=1.4, perplexity=4.06)
    sft = begin(run_dir, "sft")
    train(run_dir, "sft", range(1, 21), loss=lambda s: 3.0 - 0.05 * s)
    finish(run_dir, "sft", sft, 20, eval_loss=2.1)
    reward = begin(run_dir, "reward", head="scalar")
    train(run_dir, "reward", range(1, 13), loss=lambda s: 0.7 - 0.01 * s, pairwise_accuracy=lambda s: 0.5 + 0.03 * s)
    save(run_dir, "reward", step_tag(10))
    write_manifest(run_dir / "reward", failed_manifest(reward, step=12, error="loss was NaN 3 times in a row"))
    return run_dir
