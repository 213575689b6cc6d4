"""``orchestrate config <plan arguments> -o FILE``: write the chosen plan's DeepSpeed JSON to FILE,
and beside it ``FILE_STEM.plan.json`` (the plan: model, cluster, layout, predictions) and
``FILE_STEM.launch.json`` (the ``deepspeed`` launch commands as argv lists).

    orchestrate config --model gpt3-175b --gpus 1024 --gpu a100-80g -o ds_configs/gpt3-175b-1024xa100-80g.json

The launch argv comes from ``orchestrator.engine.launch`` (the same builder ``orchestrate run``
uses); the entry is the phase module with ``--phase`` and ``--run-dir``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.commands.plan import add_job_arguments, describe_plan, plan_search
from orchestrator.config.run import LaunchConfig, OptimConfig
from orchestrator.engine.ds_config import build_ds_config, ds_config_text
from orchestrator.engine.launch import LaunchPlan, Target, build_launch_plan, launch_env, phase_entry
from orchestrator.plan.artifact import Plan, make_plan

PHASES = ("pretrain", "sft", "reward", "ppo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("-o", "--output", required=True, help="the DeepSpeed JSON to write")
    parser.add_argument("--choice", type=int, default=1, help="write the N-th best layout (default 1)")
    parser.add_argument("--phase", choices=PHASES, default="pretrain", help="the phase the launch command runs")
    parser.add_argument("--run-dir", help="run directory in the launch command (default: runs/MODEL)")
    parser.add_argument("--hostfile", default="hostfile", help="hostfile for multi-node launches")
    parser.add_argument("--multinode", choices=["pdsh", "openmpi", "slurm", "no_ssh"], default="pdsh")
    parser.add_argument("--master-addr", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, default=29500)
    parser.add_argument("--tensorboard-dir", help="enable DeepSpeed's TensorBoard monitor")
    parser.add_argument("--wandb-project", help="enable DeepSpeed's wandb monitor")


def companion_paths(output: str | Path) -> tuple[Path, Path, Path]:
    """``x.json`` → (``x.json``, ``x.plan.json``, ``x.launch.json``)."""
    output = Path(output)
    stem = output.with_suffix("") if output.suffix == ".json" else output
    return output, stem.parent / f"{stem.name}.plan.json", stem.parent / f"{stem.name}.launch.json"


def ds_config_for(plan: Plan, *, phase: str = "pretrain", tensorboard_dir: str | None = None,
                  wandb_project: str | None = None) -> dict:
    """The DeepSpeed JSON a phase of this plan runs with: ``build_ds_config``, the function the
    runner writes ``PHASE/ds_config.json`` with (the GPT-3 clipping default, 1.0), plus the
    monitors asked for."""
    return build_ds_config(plan.layout, model=plan.model, precision=plan.precision, gpu=plan.gpu != "cpu",
                           grad_clip=OptimConfig().grad_clip, job_name=f"{plan.model.name}-{phase}",
                           tensorboard_dir=tensorboard_dir, wandb_project=wandb_project)


def launch_for(plan: Plan, args: argparse.Namespace) -> LaunchPlan:
    multi = plan.nodes > 1
    target = Target(nodes=plan.nodes, gpus_per_node=plan.gpus_per_node, hostfile=args.hostfile if multi else None,
                    multinode=args.multinode, master_addr=args.master_addr, master_port=args.master_port)
    run_dir = args.run_dir or f"runs/{plan.model.name}"
    entry = phase_entry(phase=args.phase, run_dir=run_dir, target=target, launcher="deepspeed")
    env = launch_env(user_env={}, timeout_minutes=LaunchConfig().timeout_minutes, gpu=plan.gpu != "cpu",
                     master_addr=args.master_addr if multi else None, master_port=args.master_port)
    return build_launch_plan(launcher="deepspeed", entry=entry, target=target, env=env)


def run(args: argparse.Namespace) -> int:
    job, result, _ = plan_search(args)
    if args.choice < 1 or args.choice > len(result.ranked):
        reasons = "; ".join(issue.message for e in result.rejected[:1] for issue in e.errors)
        detail = f" ({reasons})" if result.single and reasons else ""
        raise ValueError(f"--choice {args.choice}: {len(result.ranked)} layouts fit{detail}; "
                         f"run `orchestrate plan` with the same arguments and --explain")
    plan = make_plan(result.ranked[args.choice - 1], job)
    ds_path, plan_path, launch_path = companion_paths(args.output)
    ds_path.parent.mkdir(parents=True, exist_ok=True)
    config = ds_config_for(plan, phase=args.phase, tensorboard_dir=args.tensorboard_dir,
                           wandb_project=args.wandb_project)
    ds_path.write_text(ds_config_text(config))
    plan.save(plan_path)
    launch = launch_for(plan, args)
    launch_path.write_text(launch.to_json())
    print(describe_plan(plan))
    print(f"wrote {ds_path}, {plan_path}, {launch_path}")
    for command in launch.commands:
        print(f"launch: {command.shell()}")
    return 0
