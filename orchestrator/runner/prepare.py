"""From a run config to one ``PhaseJob`` per phase, every check done before any process starts.

A phase folder receives the exact configs it runs with: ``run_config.yaml``, ``plan.json``
(the resolved layout), ``ds_config.json``, ``launch.json`` (the argv lists) and, for
``accelerate``, ``accelerate_config.yaml``. Multi-node runs also get ``RUN_DIR/.deepspeed_env``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from orchestrator.config.cluster import Cluster, get_device
from orchestrator.config.loader import to_dict
from orchestrator.config.run import RunConfig, run_config_yaml
from orchestrator.engine.ds_config import DS_CONFIG_FILE, Precision, cluster_precision, ds_config_text, phase_ds_config
from orchestrator.engine.launch import (ENTRY_MODULE, LaunchPlan, Target, accelerate_config, build_launch_plan,
                                        check_hosts, check_master_addr, deepspeed_env_text, launch_env, phase_entry,
                                        read_hostfile)
from orchestrator.engine.launch.ports import free_port
from orchestrator.handoff.hashing import atomic_write_text
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.layout import Layout, LayoutError
from orchestrator.plan.evaluate import Evaluation, evaluate

RUN_CONFIG = "run_config.yaml"
DEEPSPEED_ENV = ".deepspeed_env"


@dataclass(frozen=True)
class PhaseJob:
    """Everything needed to start one phase, already checked."""

    phase: str
    directory: Path
    layout: Layout
    """Resolved against the cluster's world."""
    ds_config: dict
    launch: LaunchPlan
    accelerate: Optional[dict] = None
    warnings: tuple[str, ...] = ()
    """The planner's warnings for this layout (it runs, but slower than it could)."""


PHASE_HEADS = {"pretrain": "lm", "sft": "lm", "reward": "scalar", "ppo": "lm"}
"""The head each phase trains (PPO's critic is a scalar head too: the PPO plan counts four models)."""


def planner_job(config: RunConfig, *, phase: str, layout: Layout) -> Job:
    """The planner's view of one phase: its model, cluster, sequence, batch, precision and head."""
    cluster = Cluster(device=get_device(config.cluster.gpu), nodes=config.cluster.nodes,
                      gpus_per_node=config.cluster.gpus_per_node)
    return Job(model=config.model, cluster=cluster, seq=config.phase(phase).loop.seq_len,
               batch=BatchTarget(sequences=layout.global_batch), precision=phase_precision(config),
               head=PHASE_HEADS[phase], ppo=phase == "ppo", offload_frozen=config.ppo.offload_frozen)


def judge_phase(config: RunConfig, phase: str) -> Evaluation:
    """One phase's layout resolved against the cluster's world and judged as ``orchestrate plan``
    judges fixed degrees: the validator (``plan.validate.check_layout``, which runs the rank's own
    ``check_runtime``) and the memory plan of its heaviest stage (all four models for PPO)."""
    layout = config.phase(phase).layout.resolve(config.cluster.world)
    return evaluate(layout, planner_job(config, phase=phase, layout=layout))


def resolve_layouts(config: RunConfig) -> tuple[dict[str, Layout], dict[str, list[str]]]:
    """Every phase's layout, judged before any process starts: errors, this runtime's limits
    ("plan only" for the planner) and memory that does not fit stop the run, all reported at once;
    warnings are returned."""
    world, layouts, problems, warnings = config.cluster.world, {}, [], {}
    for phase in config.phases:
        try:
            evaluation = judge_phase(config, phase)
        except (LayoutError, ValueError) as err:
            problems.append(f"{phase}.layout: {err}")
            continue
        problems += [f"{phase}.layout: {issue.message}" for issue in evaluation.refusals]
        warnings[phase] = [issue.message for issue in evaluation.warnings]
        layouts[phase] = evaluation.layout
    if problems:
        raise LayoutError(f"cluster world {world} (nodes {config.cluster.nodes} × gpus_per_node "
                          f"{config.cluster.gpus_per_node}, gpu {config.cluster.gpu}):\n  " + "\n  ".join(problems))
    return layouts, warnings


def uses_gpu(config: RunConfig) -> bool:
    return config.cluster.device_type == "cuda"


def phase_precision(config: RunConfig) -> Precision:
    """``cluster.precision`` (auto already resolved on CPUs: ``engine.precision``)."""
    return cluster_precision(config.cluster)


def launch_target(config: RunConfig) -> Target:
    """Where ranks go; a multi-node hostfile is read and checked against the cluster here."""
    launch, cluster = config.launch, config.cluster
    hostfile = None
    if cluster.nodes > 1:
        if not launch.hostfile and launch.launcher != "torchrun":
            raise ValueError(f"cluster.nodes={cluster.nodes} needs launch.hostfile: one 'host slots=N' line per node "
                             f"(see launch/hostfile.example)")
        hosts = read_hostfile(Path(launch.hostfile).resolve()) if launch.hostfile else ()
        if launch.hostfile:
            hostfile = str(Path(launch.hostfile).resolve())
            check_hosts(hosts, nodes=cluster.nodes, gpus_per_node=cluster.gpus_per_node,
                        where=f"hostfile {launch.hostfile}")
        check_master_addr(launch.master_addr, nodes=cluster.nodes, hosts=hosts)
    return Target(nodes=cluster.nodes, gpus_per_node=cluster.gpus_per_node, hostfile=hostfile,
                  multinode=launch.multinode, master_addr=launch.master_addr, master_port=master_port(config),
                  launcher_args=launch.launcher_args)


DEFAULT_MASTER_PORT = 29500
"""DeepSpeed's and torchrun's default, for multi-node runs whose recipe sets no port."""


def master_port(config: RunConfig) -> int:
    """``launch.master_port`` if the recipe sets it; else 29500 across nodes (each node computes the
    same) and, on one node, a port free right now (``launch.ports.free_port``)."""
    if config.launch.master_port is not None:
        return config.launch.master_port
    return DEFAULT_MASTER_PORT if config.cluster.nodes > 1 else free_port()


def with_fresh_port(config: RunConfig, job: PhaseJob, *, run_dir: Path, entry_module: str = ENTRY_MODULE) -> PhaseJob:
    """``job`` on a port free now, for a single-node run whose recipe sets none: called just before
    the phase's launcher starts, so the port has had no time to be taken since it was picked."""
    if config.launch.master_port is not None or config.cluster.nodes > 1:
        return job
    target = dataclasses.replace(launch_target(config), master_port=free_port())
    return build_job(config, phase=job.phase, layout=job.layout, run_dir=run_dir, target=target,
                     env=job_env(config, run_dir), entry_module=entry_module, warnings=job.warnings)


# What DeepSpeed's runner looks for on the head node before it starts a multi-node backend
# (``backend_exists`` in deepspeed/launcher/multinode_runner.py).
BACKEND_PROGRAMS = {"pdsh": "pdsh", "openmpi": "ompi_info", "slurm": "sinfo"}


def missing_backend(config: RunConfig) -> Optional[str]:
    """Why the multi-node backend cannot start from this machine, or None."""
    launch = config.launch
    program = BACKEND_PROGRAMS.get(launch.multinode)
    if config.cluster.nodes == 1 or launch.launcher == "torchrun" or program is None or shutil.which(program):
        return None
    return (f"launch.multinode={launch.multinode} needs `{program}` on this machine (DeepSpeed checks for it): "
            f"install it, or set launch.multinode=no_ssh and run `orchestrate run ... --node-rank R` on every node")


STALE_BUILD_SECONDS = 600
"""A JIT build of DeepSpeed's CPU ops takes under a minute here; a lock older than this outlived its build."""


def stale_build_locks(environ: Optional[dict] = None, *, now: Optional[float] = None) -> list[Path]:
    """torch's JIT-extension locks (``TORCH_EXTENSIONS_DIR/NAME/lock``, default ``~/.cache/torch_extensions``)
    older than ``STALE_BUILD_SECONDS``: a build killed midway leaves one, and every later process that
    loads that op (DeepSpeed's shm op, on CPU) then waits for it forever, printing nothing."""
    environ = os.environ if environ is None else environ
    root = environ.get("TORCH_EXTENSIONS_DIR")
    roots = [Path(root)] if root else list((Path.home() / ".cache" / "torch_extensions").glob("*"))
    now = time.time() if now is None else now
    return sorted(lock for base in roots for lock in base.glob("*/lock")
                  if lock.is_file() and now - lock.stat().st_mtime > STALE_BUILD_SECONDS)


def stale_build_message(locks: list[Path]) -> str:
    return (f"{', '.join(map(str, locks))}: a JIT build of a torch/DeepSpeed op was interrupted more than "
            f"{STALE_BUILD_SECONDS // 60} minutes ago and left its lock, so every rank would wait for it forever: "
            f"remove it (`rm {' '.join(map(str, locks))}`) and run again; the op is rebuilt once")


def job_env(config: RunConfig, run_dir: Path) -> dict[str, str]:
    """The variables of every rank; DS_ENV_FILE points DeepSpeed's remote exporter at our file."""
    multi = config.cluster.nodes > 1
    env = launch_env(user_env=config.launch.env, timeout_minutes=config.launch.timeout_minutes, gpu=uses_gpu(config),
                     master_addr=config.launch.master_addr if multi else None,
                     master_port=master_port(config) if multi else None)
    if multi and config.launch.launcher != "torchrun" and config.launch.multinode != "no_ssh":
        env["DS_ENV_FILE"] = os.path.abspath(run_dir / DEEPSPEED_ENV)
    return env


def build_job(config: RunConfig, *, phase: str, layout: Layout, run_dir: Path, target: Target,
              env: dict[str, str], entry_module: str = ENTRY_MODULE, warnings: tuple[str, ...] = ()) -> PhaseJob:
    directory, absolute = run_dir / phase, Path(os.path.abspath(run_dir / phase))
    ds_config = phase_ds_config(config, phase=phase, layout=layout)   # what every rank passes to deepspeed.initialize
    accelerate = None
    if config.launch.launcher == "accelerate":
        accelerate = accelerate_config(ds_config_file=str(absolute / DS_CONFIG_FILE), nodes=target.nodes,
                                       gpus_per_node=target.gpus_per_node, multinode=target.multinode,
                                       hostfile=target.hostfile, master_addr=target.master_addr,
                                       master_port=target.master_port)
    entry = phase_entry(phase=phase, run_dir=str(absolute.parent), target=target, launcher=config.launch.launcher,
                        module=entry_module)
    plan = build_launch_plan(launcher=config.launch.launcher, entry=entry, target=target, env=env,
                             accelerate_config=str(absolute / "accelerate_config.yaml") if accelerate else None)
    return PhaseJob(phase=phase, directory=directory, layout=layout, ds_config=ds_config, launch=plan,
                    accelerate=accelerate, warnings=warnings)


def check_data(config: RunConfig) -> None:
    """Your data and labeller, before any process starts: every ``data.sft`` / ``reward`` / ``ppo``
    file exists and has the named fields (``data.phase_data.check_phase_data``), and a
    ``module:function`` labeller imports and is callable."""
    from orchestrator.data import labeller as labellers

    from orchestrator.data.phase_data import check_phase_data

    data = config.data
    check_phase_data(data)
    if data.labeller_spec not in (labellers.WORDLIST, labellers.NONE):
        labellers.resolve(data.labeller_spec)


def prepare_jobs(config: RunConfig, *, run_dir: Path, entry_module: str = ENTRY_MODULE) -> dict[str, PhaseJob]:
    """A checked job for every phase of the recipe (not only those about to run)."""
    check_data(config)
    layouts, warnings = resolve_layouts(config)
    target = launch_target(config)
    env = job_env(config, run_dir)
    return {phase: build_job(config, phase=phase, layout=layouts[phase], run_dir=run_dir, target=target, env=env,
                             entry_module=entry_module, warnings=tuple(warnings[phase])) for phase in config.phases}


def write_yaml_config(config: RunConfig, path: Path) -> None:
    """The run config as YAML, replaced atomically."""
    atomic_write_text(path, run_config_yaml(config))


def write_run_files(config: RunConfig, run_dir: Path, env: dict[str, str]) -> None:
    """``RUN_DIR/run_config.yaml`` and, for multi-node runs, ``RUN_DIR/.deepspeed_env``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml_config(config, run_dir / RUN_CONFIG)
    if config.cluster.nodes > 1:
        atomic_write_text(run_dir / DEEPSPEED_ENV, deepspeed_env_text({k: v for k, v in env.items()
                                                                       if k != "DS_ENV_FILE"}))


def plan_record(config: RunConfig, job: PhaseJob) -> dict:
    return {"phase": job.phase, "model": config.model.name, "world": job.layout.world,
            "cluster": to_dict(config.cluster), "layout": to_dict(job.layout), "warnings": list(job.warnings)}


def write_job(config: RunConfig, job: PhaseJob) -> None:
    """The phase folder and the exact configs it will run with."""
    for sub in ("logs", "checkpoints"):
        (job.directory / sub).mkdir(parents=True, exist_ok=True)
    write_yaml_config(config, job.directory / RUN_CONFIG)
    atomic_write_text(job.directory / "plan.json", json.dumps(plan_record(config, job), indent=2) + "\n")
    atomic_write_text(job.directory / DS_CONFIG_FILE, ds_config_text(job.ds_config))
    atomic_write_text(job.directory / "launch.json", job.launch.to_json())
    if job.accelerate is not None:
        atomic_write_text(job.directory / "accelerate_config.yaml", yaml.safe_dump(job.accelerate, sort_keys=False))


def with_run_dir(config: RunConfig, run_dir: Optional[str]) -> RunConfig:
    """The config with ``run_dir`` replaced by the one this invocation uses."""
    return dataclasses.replace(config, run_dir=run_dir) if run_dir else config
