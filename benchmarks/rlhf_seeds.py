"""Does each InstructGPT phase do its job? The tiny pipeline over several seeds.

For each seed: ``orchestrate run recipes/tiny.yaml --set seed=S`` (four deepspeed launcher
processes; a seed already complete is only read, so seeds can be run in parallel first), then the manifests' final metrics: SFT and PPO oracle scores on the same held-out
prompts (same sampling seed), the PPO policy's KL to the SFT reference and its RM reward, and the
reward model's held-out pairwise accuracy. Writes the ``## RLHF phases`` section of BENCHMARKS.md.

    python benchmarks/rlhf_seeds.py --seeds 1 2 3 --write BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orchestrator.config.cluster import DEVICES  # noqa: E402
from common import (CPU_FP32, Target, add_target_arguments, machine_info, markdown_table,  # noqa: E402
                    parse_target, today, write_section)

RECIPE = "recipes/tiny.yaml"
GPU_PRESETS = tuple(name for name in DEVICES if name != "cpu")
COLUMNS = ("seed", "pretrain eval loss", "SFT oracle", "RM accuracy", "PPO oracle", "PPO − SFT", "PPO KL",
           "PPO RM reward", "minutes")


def seed_dir(seed: int, root: Path, target: Target) -> Path:
    """The seed's run directory: ``seedS`` for cpu fp32, ``seedS-DEVICE-PRECISION`` otherwise, so a
    finished run of another target is never read as this one."""
    suffix = "" if (target.device, target.precision) == ("cpu", "fp32") else f"-{target.device}-{target.precision}"
    return root / f"seed{seed}{suffix}"


def seed_command(seed: int, root: Path, target: Target, *, gpu_preset: str = "h100-80g") -> list[str]:
    """``orchestrate run`` of one seed on the target: ``cluster.gpu`` (``cpu``, or ``gpu_preset`` for
    cuda) and ``cluster.precision``; its own master port so seeds may run at once."""
    gpu = "cpu" if target.device == "cpu" else gpu_preset
    return [sys.executable, "-m", "orchestrator", "run", RECIPE, "--run-dir", str(seed_dir(seed, root, target)),
            "--set", f"seed={seed}", "--set", f"launch.master_port={29600 + seed}", "--set", f"cluster.gpu={gpu}",
            "--set", f"cluster.precision={target.precision}"]


def run_seed(seed: int, root: Path, target: Target, *, gpu_preset: str = "h100-80g") -> dict:
    """Run (or, when complete, just read) one seed's pipeline."""
    run_dir = seed_dir(seed, root, target)
    subprocess.run(seed_command(seed, root, target, gpu_preset=gpu_preset), check=True)
    manifests = {p: json.loads((run_dir / p / "manifest.json").read_text()) for p in ("pretrain", "sft", "reward", "ppo")}
    metrics = {p: m["metrics"] for p, m in manifests.items()}
    started = datetime.fromisoformat(manifests["pretrain"]["started"])
    finished = datetime.fromisoformat(manifests["ppo"]["finished"])
    return {"seed": seed, "pretrain_eval_loss": metrics["pretrain"]["eval_loss"],
            "sft_oracle": metrics["sft"]["oracle_score"], "rm_accuracy": metrics["reward"]["pairwise_accuracy"],
            "ppo_oracle": metrics["ppo"]["oracle_score"], "ppo_kl": metrics["ppo"]["kl"],
            "ppo_reward": metrics["ppo"]["reward"], "minutes": (finished - started).total_seconds() / 60}


def row(r: dict) -> list[str]:
    return [str(r["seed"]), f"{r['pretrain_eval_loss']:.3f}", f"{r['sft_oracle']:.3f}", f"{r['rm_accuracy']:.3f}",
            f"{r['ppo_oracle']:.3f}", f"{r['ppo_oracle'] - r['sft_oracle']:+.3f}", f"{r['ppo_kl']:.2f}",
            f"{r['ppo_reward']:.2f}", f"{r['minutes']:.1f}"]


def section(results: list[dict], command: str, target: Target = CPU_FP32) -> str:
    mean = {k: statistics.mean(r[k] for r in results) for k in results[0] if k != "seed"}
    table = markdown_table(COLUMNS, [row(r) for r in results] + [["mean"] + row({"seed": 0, **mean})[1:]])
    return (f"{target.heading('## RLHF phases')}\n\nCommand: `{command}` ({today()}; {machine_info().describe()}).\n\n"
            f"Each seed runs `orchestrate run {RECIPE} --set seed=S --set cluster.precision={target.precision}` "
            f"on {target.device}: pretrain → SFT → reward model → PPO, "
            "each its own deepspeed launcher process. Oracle scores are the task labeller's mean score of "
            "responses sampled at temperature 1 for the same held-out prompts with the same sampling seed "
            "(SFT and PPO policies alike); KL is Σ_t log π/π_SFT per response on those prompts; RM accuracy "
            "is held-out pairwise accuracy on the SFT policy's own samples, tied pairs dropped. Minutes are wall "
            "clock from pretrain's start to PPO's end as the manifests record them (seeds may have run side by "
            "side, sharing the cores).\n\n"
            f"{table}\n")


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, Target]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--root", default="runs/bench-rlhf")
    add_target_arguments(parser)
    parser.add_argument("--gpu-preset", default="h100-80g",
                        help="cluster.gpu for --device cuda (the planner's device preset; default: %(default)s)")
    parser.add_argument("--write", default=None, help="BENCHMARKS.md to update")
    args = parser.parse_args(argv)
    if args.gpu_preset not in GPU_PRESETS:
        parser.error(f"--gpu-preset {args.gpu_preset!r}: choose one of {', '.join(GPU_PRESETS)}")
    return args, parse_target(parser, args)


def main() -> None:
    args, target = parse_args()
    results = [run_seed(seed, Path(args.root), target, gpu_preset=args.gpu_preset) for seed in args.seeds]
    text = section(results, "python benchmarks/rlhf_seeds.py --seeds " + " ".join(map(str, args.seeds))
                   + f" {target.flags}" + (f" --write {args.write}" if args.write else ""), target)
    print(text)
    if args.write:
        write_section(Path(args.write), text)


if __name__ == "__main__":
    main()
