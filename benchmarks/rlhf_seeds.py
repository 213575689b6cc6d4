"""Does each InstructGPT phase do its job? The tiny pipeline over several seeds, against the goals.

For each seed: ``orchestrate run recipes/tiny.yaml --set seed=S`` (four deepspeed launcher
processes) in a fresh root (``runs/bench-rlhf/<UTC time>`` unless ``--root`` names an empty or new
folder: an old seed directory is never re-read), then PPO-ptx on the same seed's SFT and RM
(``--only ppo`` on a copy of the seed's parents with ``PTX_SETS``), then the manifests' final
metrics: SFT, PPO and PPO-ptx oracle scores on the same held-out prompts (same sampling seed), KL to
the SFT reference, the reward model's held-out pairwise accuracy and each policy's pretrain_loss.
Writes the ``## RLHF phases`` section of BENCHMARKS.md: per seed, mean ± sd, and the goals
(RM ≥ 0.90; PPO − SFT ≥ ½(1 − SFT) at KL ≤ 2; PPO-ptx pretrain_loss ≤ SFT's keeping ≥ 80 % of the gain).

    python benchmarks/rlhf_seeds.py --seeds 1 2 3 4 5 --jobs 2 --write BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orchestrator.config.cluster import DEVICES  # noqa: E402
from common import (CPU_FP32, Target, add_target_arguments, machine_info, markdown_table,  # noqa: E402
                    parse_target, today, write_section)

RECIPE = "recipes/tiny.yaml"
PTX_SETS = ("ppo.ptx_coef=0.1",)
"""PPO-ptx: the recipe's PPO with γ_ptx on (README, "RLHF that visibly works")."""
PARENTS = ("data", "pretrain", "sft", "reward", "run_config.yaml")
GPU_PRESETS = tuple(name for name in DEVICES if name != "cpu")
COLUMNS = ("seed", "SFT oracle", "RM accuracy", "PPO oracle", "PPO − SFT", "½ gap", "PPO KL", "PPO-ptx oracle",
           "ptx gain kept", "PPO-ptx KL", "pretrain_loss SFT / PPO / PPO-ptx", "goals met", "minutes")
METRICS = ("sft_oracle", "rm_accuracy", "ppo_oracle", "gain", "half_gap", "ppo_kl", "ptx_oracle", "ptx_kept",
           "ptx_kl", "sft_pretrain_loss", "ppo_pretrain_loss", "ptx_pretrain_loss", "minutes")


def seed_dir(seed: int, root: Path, target: Target) -> Path:
    """The seed's run directory: ``seedS`` for cpu fp32, ``seedS-DEVICE-PRECISION`` otherwise, so a
    finished run of another target is never read as this one."""
    suffix = "" if (target.device, target.precision) == ("cpu", "fp32") else f"-{target.device}-{target.precision}"
    return root / f"seed{seed}{suffix}"


def seed_command(seed: int, root: Path, target: Target, *, gpu_preset: str = "h100-80g") -> list[str]:
    """``orchestrate run`` of one seed on the target: ``cluster.gpu`` (``cpu``, or ``gpu_preset`` for
    cuda) and ``cluster.precision``. No master port: on one node the runner picks a free one for
    each phase, so seeds may run side by side."""
    gpu = "cpu" if target.device == "cpu" else gpu_preset
    return [sys.executable, "-m", "orchestrator", "run", RECIPE, "--run-dir", str(seed_dir(seed, root, target)),
            "--set", f"seed={seed}", "--set", f"cluster.gpu={gpu}",
            "--set", f"cluster.precision={target.precision}"]


def ptx_command(seed: int, root: Path, target: Target, *, gpu_preset: str = "h100-80g") -> list[str]:
    """PPO-ptx of one seed: ``--only ppo`` with ``PTX_SETS`` in ``seedS-ptx`` (a copy of the seed's parents)."""
    argv = seed_command(seed, root, target, gpu_preset=gpu_preset)
    argv[argv.index("--run-dir") + 1] = str(ptx_dir(seed, root, target))
    return argv + ["--only", "ppo"] + [arg for s in PTX_SETS for arg in ("--set", s)]


def ptx_dir(seed: int, root: Path, target: Target) -> Path:
    run_dir = seed_dir(seed, root, target)
    return run_dir.with_name(run_dir.name + "-ptx")


def manifests(run_dir: Path, phases: tuple[str, ...]) -> dict[str, dict]:
    return {p: json.loads((run_dir / p / "manifest.json").read_text()) for p in phases}


def run_seed(seed: int, root: Path, target: Target, *, gpu_preset: str = "h100-80g") -> dict:
    """One seed's pipeline, then PPO-ptx on its SFT and RM; the metrics the table shows."""
    run_dir, ptx = seed_dir(seed, root, target), ptx_dir(seed, root, target)
    subprocess.run(seed_command(seed, root, target, gpu_preset=gpu_preset), check=True)
    ptx.mkdir(parents=True)
    for name in PARENTS:
        copy = shutil.copytree if (run_dir / name).is_dir() else shutil.copy2
        copy(run_dir / name, ptx / name)
    subprocess.run(ptx_command(seed, root, target, gpu_preset=gpu_preset), check=True)
    return seed_metrics(seed, manifests(run_dir, ("pretrain", "sft", "reward", "ppo")), manifests(ptx, ("ppo",))["ppo"])


def seed_metrics(seed: int, pipeline: dict[str, dict], ptx: dict) -> dict:
    metrics = {p: m["metrics"] for p, m in pipeline.items()}
    sft, ppo, ptx_metrics = metrics["sft"], metrics["ppo"], ptx["metrics"]
    gain = ppo["oracle_score"] - sft["oracle_score"]
    started = datetime.fromisoformat(pipeline["pretrain"]["started"])
    finished = datetime.fromisoformat(pipeline["ppo"]["finished"])
    return {"seed": seed, "sft_oracle": sft["oracle_score"], "rm_accuracy": metrics["reward"]["pairwise_accuracy"],
            "ppo_oracle": ppo["oracle_score"], "gain": gain, "half_gap": 0.5 * (1 - sft["oracle_score"]),
            "ppo_kl": ppo["kl"], "ptx_oracle": ptx_metrics["oracle_score"],
            "ptx_kept": (ptx_metrics["oracle_score"] - sft["oracle_score"]) / gain if gain > 0 else float("nan"),
            "ptx_kl": ptx_metrics["kl"], "sft_pretrain_loss": sft["pretrain_loss"],
            "ppo_pretrain_loss": ppo["pretrain_loss"], "ptx_pretrain_loss": ptx_metrics["pretrain_loss"],
            "minutes": (finished - started).total_seconds() / 60}


def goals_met(r: dict) -> list[str]:
    """Which of the issue's goals a seed meets: RM, PPO (gain and KL), ptx (tax and gain kept)."""
    return [name for name, ok in (("RM", r["rm_accuracy"] >= 0.90),
                                  ("PPO", r["gain"] >= r["half_gap"] and r["ppo_kl"] <= 2.0),
                                  ("ptx", r["ptx_pretrain_loss"] <= r["sft_pretrain_loss"] and r["ptx_kept"] >= 0.8))
            if ok]


def row(r: dict, fmt=None) -> list[str]:
    """A seed's cells; ``fmt(key, spec)`` formats one metric (default: ``format(r[key], spec)``)."""
    fmt = fmt or (lambda key, spec: format(r[key], spec))
    return [str(r["seed"]), fmt("sft_oracle", ".3f"), fmt("rm_accuracy", ".3f"), fmt("ppo_oracle", ".3f"),
            fmt("gain", "+.3f"), fmt("half_gap", ".3f"), fmt("ppo_kl", ".2f"), fmt("ptx_oracle", ".3f"),
            fmt("ptx_kept", ".0%"), fmt("ptx_kl", ".2f"),
            " / ".join(fmt(k, ".3f") for k in ("sft_pretrain_loss", "ppo_pretrain_loss", "ptx_pretrain_loss")),
            "—" if r["seed"] == "mean ± sd" else (", ".join(goals_met(r)) or "none"), fmt("minutes", ".1f")]


def mean_sd_row(results: list[dict]) -> list[str]:
    def fmt(key: str, spec: str) -> str:
        values = [r[key] for r in results]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{format(statistics.mean(values), spec)} ± {format(sd, spec.lstrip('+'))}"

    return row({"seed": "mean ± sd"}, fmt)


def section(results: list[dict], command: str, target: Target = CPU_FP32) -> str:
    table = markdown_table(COLUMNS, [row(r) for r in results] + [mean_sd_row(results)])
    met = {goal: sum(goal in goals_met(r) for r in results) for goal in ("RM", "PPO", "ptx")}
    return (f"{target.heading('## RLHF phases')}\n\nCommand: `{command}` ({today()}; {machine_info().describe()}).\n\n"
            f"Each seed runs `orchestrate run {RECIPE} --set seed=S --set cluster.precision={target.precision}` "
            f"on {target.device}: pretrain → SFT → reward model → PPO, "
            "each its own deepspeed launcher process. Oracle scores are the task labeller's mean score of "
            "responses sampled at temperature 1 for the same held-out prompts with the same sampling seed "
            "(SFT and PPO policies alike); KL is Σ_t log π/π_SFT per response on those prompts; RM accuracy "
            "is held-out pairwise accuracy on the SFT policy's own samples, tied pairs dropped. Minutes are wall "
            "clock from pretrain's start to PPO's end as the manifests record them (seeds may have run side by "
            "side, sharing the cores). PPO-ptx is `--only ppo` on a copy of the seed's SFT and RM with "
            f"`{' '.join('--set ' + s for s in PTX_SETS)}`; \"ptx gain kept\" is (PPO-ptx − SFT) / (PPO − SFT). "
            "Goals: RM accuracy ≥ 0.90; PPO − SFT ≥ ½ gap = ½(1 − SFT oracle) at KL ≤ 2; PPO-ptx pretrain_loss "
            "≤ SFT's while keeping ≥ 80 % of the gain.\n\n"
            f"{table}\n\nSeeds meeting each goal: RM {met['RM']}/{len(results)}, PPO {met['PPO']}/{len(results)}, "
            f"PPO-ptx {met['ptx']}/{len(results)}.\n")


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, Target]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--root", default=None,
                        help="a new or empty folder for the seed runs (default: runs/bench-rlhf/<UTC time>)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run side by side (default: %(default)s)")
    parser.add_argument("--collect", metavar="ROOT", default=None,
                        help="run nothing: tabulate the seeds of ROOT (an earlier run of this benchmark) "
                             "whose pipeline and PPO-ptx both finished")
    add_target_arguments(parser)
    parser.add_argument("--gpu-preset", default="h100-80g",
                        help="cluster.gpu for --device cuda (the planner's device preset; default: %(default)s)")
    parser.add_argument("--write", default=None, help="BENCHMARKS.md to update")
    args = parser.parse_args(argv)
    if args.gpu_preset not in GPU_PRESETS:
        parser.error(f"--gpu-preset {args.gpu_preset!r}: choose one of {', '.join(GPU_PRESETS)}")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be >= 1")
    if args.root is None:
        args.root = f"runs/bench-rlhf/{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    elif args.collect is None and Path(args.root).is_dir() and any(Path(args.root).iterdir()):
        parser.error(f"--root {args.root} is not empty: every benchmark runs its seeds afresh; "
                     f"give a new folder or leave --root out (runs/bench-rlhf/<UTC time>)")
    return args, parse_target(parser, args)


def finished_seeds(root: Path, seeds: list[int], target: Target) -> list[dict]:
    """The metrics of the seeds under ``root`` whose four phases and PPO-ptx are complete."""
    results = []
    for seed in seeds:
        run_dir, ptx = seed_dir(seed, root, target), ptx_dir(seed, root, target)
        try:
            pipeline, ptx_ppo = manifests(run_dir, ("pretrain", "sft", "reward", "ppo")), manifests(ptx, ("ppo",))["ppo"]
        except FileNotFoundError:
            continue
        if all(m.get("status") == "complete" for m in (*pipeline.values(), ptx_ppo)):
            results.append(seed_metrics(seed, pipeline, ptx_ppo))
    return results


def main() -> None:
    args, target = parse_args()
    if args.collect is not None:
        results = finished_seeds(Path(args.collect), args.seeds, target)
        if not results:
            raise SystemExit(f"no seed of {args.seeds} finished under {args.collect}")
        print(section(results, f"python benchmarks/rlhf_seeds.py --seeds {' '.join(map(str, args.seeds))} "
                               f"--jobs {args.jobs} {target.flags} (tabulated with --collect {args.collect})", target))
        return
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda seed: run_seed(seed, Path(args.root), target, gpu_preset=args.gpu_preset),
                                args.seeds))
    text = section(results, "python benchmarks/rlhf_seeds.py --seeds " + " ".join(map(str, args.seeds))
                   + f" --jobs {args.jobs}" + f" {target.flags}" + (f" --write {args.write}" if args.write else ""),
                   target)
    print(text)
    if args.write:
        write_section(Path(args.write), text)


if __name__ == "__main__":
    main()
