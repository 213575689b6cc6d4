"""Run a recipe's phases in order, each as its own launcher process.

Before anything starts: every phase's layout is resolved against the cluster, the hostfile is
checked, completed phases are verified, each phase about to run has its parents either
complete or scheduled before it, and an interrupted phase's checkpoint can resume under the
phase's layout. The data step (``orchestrate data`` into ``RUN_DIR/data``) runs
once per run directory. Then, per phase: skip it if its manifest is complete and still
verifies; otherwise write its configs, start its launcher, and tee the output to
``PHASE/logs/launch.log``. A failure stops the run with the log's tail and the command that
reruns the phase; an interrupted phase is simply run again (it resumes from its latest
checkpoint). Everything that writes runs under the run directory's lock (``runner.lock``), and a
single-node phase gets a rendezvous port that is free as it starts.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import IO, Optional

from orchestrator.config.loader import to_dict
from orchestrator.config.run import PHASES, RunConfig
from orchestrator.engine.launch import ENTRY_MODULE, LaunchCommand, deepspeed_env_text
from orchestrator.engine.precision import resolve_run_precision
from orchestrator.handoff.checkpoint import read_latest, relayout_refusal
from orchestrator.handoff.manifest import (PARENTS, Manifest, manifest_path, rerun_hint, verified_complete,
                                          verify_parent)
from orchestrator.runner.lock import RunLock, current_holder
from orchestrator.runner.prepare import (DEEPSPEED_ENV, PhaseJob, missing_backend, prepare_jobs, stale_build_locks,
                                          stale_build_message, with_fresh_port, with_run_dir, write_job,
                                          write_run_files)
from orchestrator.runner.process import format_tail, run_logged


@dataclasses.dataclass(frozen=True)
class Step:
    """One phase of this invocation: skipped (with the manifest that lets it be) or to run."""

    job: PhaseJob
    done: Optional[Manifest]


def select_phases(phases: list[str], *, only: Optional[str], start: Optional[str]) -> list[str]:
    """The recipe's phases, or one of them (``--only``), or the tail from one (``--from``)."""
    if only and start:
        raise ValueError("give --only or --from, not both")
    for flag, name in (("--only", only), ("--from", start)):
        if name and name not in phases:
            where = "this recipe's phases" if name in PHASES else "phases"
            raise ValueError(f"{flag} {name}: not one of {where} ({', '.join(phases)})")
    if only:
        return [only]
    return phases[phases.index(start):] if start else list(phases)


def plan_steps(config: RunConfig, *, run_dir: Path, selected: list[str], entry_module: str) -> list[Step]:
    """Check everything, then say for each selected phase whether it is done or will run."""
    jobs = prepare_jobs(config, run_dir=run_dir, entry_module=entry_module)
    steps = [Step(job=jobs[phase], done=verified_complete(run_dir, phase)) for phase in selected]
    scheduled = [s.job.phase for s in steps if s.done is None]
    for phase in scheduled:
        for parent, head in PARENTS[phase]:
            if parent in scheduled[:scheduled.index(phase)]:
                continue
            verify_parent(run_dir, parent_phase=parent, expect_head=head, expect_model=to_dict(config.model),
                          expect_tokenizer_hash=None)
    return steps


def describe_run(config: RunConfig, run_dir: Path, steps: list[Step], out: IO[str]) -> None:
    cluster = config.cluster
    print(f"run {config.name} in {run_dir}: {', '.join(s.job.phase for s in steps)} on {cluster.nodes} node(s) × "
          f"{cluster.gpus_per_node} rank(s) with {config.launch.launcher}", file=out)
    for step in steps:
        for warning in step.job.warnings:
            print(f"[{step.job.phase}] warning: {warning}", file=out)


def skip_message(run_dir: Path, step: Step) -> str:
    return (f"[{step.job.phase}] skip: complete at step {step.done.step} "
            f"(delete {run_dir / step.job.phase} to train it again)")


def print_dry_run(config: RunConfig, run_dir: Path, steps: list[Step], out: IO[str]) -> None:
    """Every command, and the files a multi-node launch reads, without writing anything."""
    for step in steps:
        if step.done is not None:
            print(skip_message(run_dir, step), file=out)
            continue
        for command in step.job.launch.commands:
            node = "" if command.node_rank is None else f" node {command.node_rank}"
            print(f"[{step.job.phase}{node}] $ {command.shell()}", file=out)
    if config.cluster.nodes > 1:
        env = {k: v for k, v in steps[0].job.launch.commands[0].env.items() if k != "DS_ENV_FILE"}
        print(f"--- {run_dir / DEEPSPEED_ENV}\n{deepspeed_env_text(env)}", end="", file=out)


def data_command(run_dir: Path) -> LaunchCommand:
    """``orchestrate data`` into ``RUN_DIR/data`` with the run's own config: tokenizer, corpus, task files."""
    absolute = Path(os.path.abspath(run_dir))
    return LaunchCommand(argv=(sys.executable, "-m", "orchestrator", "data", "--out", str(absolute / "data"),
                               "--recipe", str(absolute / "run_config.yaml")))


def data_ready(run_dir: Path) -> bool:
    return (run_dir / "data" / "data.json").is_file() and (run_dir / "data" / "tokenizer").is_dir()


def prepare_data(run_dir: Path, out: IO[str]) -> int:
    """Run the data step once per run directory (delete ``RUN_DIR/data`` to prepare it again)."""
    if data_ready(run_dir):
        print(f"[data] skip: {run_dir / 'data'} is prepared (delete it to prepare it again)", file=out, flush=True)
        return 0
    command = data_command(run_dir)
    print(f"[data] $ {command.shell()}", file=out, flush=True)
    code, tail = run_logged(command, log_path=run_dir / "data" / "prepare.log", out=out)
    if code != 0:
        print(f"[data] failed (exit code {code}); last lines of {run_dir / 'data' / 'prepare.log'}:\n"
              f"{format_tail(tail)}", file=out, flush=True)
    return code


def resume_refusal(job: PhaseJob) -> Optional[str]:
    """Why the phase's latest checkpoint cannot resume under the job's layout, or None."""
    latest = read_latest(job.directory / "checkpoints")
    refusal = relayout_refusal(latest, dataclasses.asdict(job.layout)) if latest else None
    return f"{job.phase}: {refusal}" if refusal else None


def manifest_stamps(run_dir: Path, phases: list[str]) -> list[Optional[tuple[int, int]]]:
    """(mtime, size) of each phase's manifest: whether another run changed a phase since we looked."""
    stamps = []
    for phase in phases:
        try:
            stat = manifest_path(run_dir, phase).stat()
            stamps.append((stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            stamps.append(None)
    return stamps


def run_step(step: Step, *, run_dir: Path, node_rank: int, out: IO[str]) -> int:
    """Start the phase's launcher for this node; 0 once the phase is complete."""
    job, started = step.job, time.monotonic()
    command = job.launch.for_node(node_rank)
    print(f"[{job.phase}] $ {command.shell()}", file=out, flush=True)
    code, tail = run_logged(command, log_path=job.directory / "logs" / "launch.log", out=out)
    hint = rerun_hint(run_dir, job.phase)
    if code != 0:
        print(f"[{job.phase}] failed (exit code {code}); last lines of {job.directory / 'logs' / 'launch.log'}:\n"
              f"{format_tail(tail)}\n[{job.phase}] fix the cause, then rerun it (it resumes from its latest "
              f"checkpoint): {hint}", file=out, flush=True)
        return code
    if node_rank == 0 and verified_complete(run_dir, job.phase) is None:
        print(f"[{job.phase}] the launcher exited 0 but {job.directory / 'manifest.json'} is not complete: "
              f"see {job.directory / 'logs' / 'launch.log'}; rerun: {hint}", file=out, flush=True)
        return 1
    print(f"[{job.phase}] complete in {time.monotonic() - started:.0f} s", file=out, flush=True)
    return 0


def run_pipeline(config: RunConfig, *, run_dir: Optional[str] = None, only: Optional[str] = None,
                 start: Optional[str] = None, dry_run: bool = False, node_rank: int = 0,
                 entry_module: str = ENTRY_MODULE, with_data: bool = True, out: Optional[IO[str]] = None) -> int:
    """Run (or, with ``dry_run``, print) the selected phases; the exit code of the first failure, or 0.

    ``with_data``: prepare ``RUN_DIR/data`` (tokenizer, corpus, task files) before the first phase
    that runs, on node 0; False for entry modules that read no data.
    """
    out = out or sys.stdout
    config = resolve_run_precision(with_run_dir(config, run_dir))   # auto → what runs, as run_config.yaml says
    directory = Path(config.run_dir)
    selected = select_phases(config.phases, only=only, start=start)
    stamps = manifest_stamps(directory, selected)
    steps = plan_steps(config, run_dir=directory, selected=selected, entry_module=entry_module)
    describe_run(config, directory, steps, out)
    needs_data = with_data and node_rank == 0 and any(s.done is None for s in steps)
    backend = missing_backend(config)
    if dry_run:
        if backend:
            print(f"warning: {backend}", file=out)
        if (holder := current_holder(directory, node_rank=node_rank)) is not None:
            print(f"warning: {directory} is in use by `orchestrate run`, {holder.describe()}: a real run is refused "
                  f"until it ends", file=out)
        if needs_data and not data_ready(directory):
            print(f"[data] $ {data_command(directory).shell()}", file=out)
        print_dry_run(config, directory, steps, out)
        return 0
    if backend and any(s.done is None for s in steps):
        raise ValueError(backend)
    if any(s.done is None for s in steps) and (locks := stale_build_locks()):
        raise ValueError(stale_build_message(locks))
    refusals = [refusal for step in steps if step.done is None and (refusal := resume_refusal(step.job))]
    if refusals:
        raise ValueError("; ".join(refusals))
    with RunLock(directory, node_rank=node_rank, out=out):   # one writer per run directory (and node rank)
        if manifest_stamps(directory, selected) != stamps:    # another run moved on since the checks: check again
            steps = plan_steps(config, run_dir=directory, selected=selected, entry_module=entry_module)
        return run_locked(config, directory, steps, needs_data=needs_data, node_rank=node_rank,
                          entry_module=entry_module, out=out)


def run_locked(config: RunConfig, directory: Path, steps: list[Step], *, needs_data: bool, node_rank: int,
               entry_module: str, out: IO[str]) -> int:
    """The writing part of a run, under the run-directory lock: run files, data, then each phase."""
    write_run_files(config, directory, dict(steps[0].job.launch.commands[0].env))
    if needs_data and (code := prepare_data(directory, out)) != 0:
        return code
    for step in steps:
        if step.done is not None:
            print(skip_message(directory, step), file=out, flush=True)
            continue
        # a single-node rendezvous port picked now, just before the launcher binds it
        step = dataclasses.replace(step, job=with_fresh_port(config, step.job, run_dir=directory,
                                                             entry_module=entry_module))
        write_job(config, step.job)
        code = run_step(step, run_dir=directory, node_rank=node_rank, out=out)
        if code != 0:
            return code
    return 0


def write_sbatch(config: RunConfig, *, run_dir: Optional[str] = None, path: str) -> Path:
    """Write ``RUN_DIR/run_config.yaml`` and an sbatch script that runs every phase in one allocation."""
    from orchestrator.engine.launch import sbatch_script
    from orchestrator.runner.prepare import resolve_layouts, uses_gpu, write_yaml_config

    config = with_run_dir(config, run_dir)
    config = dataclasses.replace(config, launch=dataclasses.replace(config.launch, multinode="no_ssh"))
    config = resolve_run_precision(config)   # a CPU cluster's auto is measured here: set it if the nodes differ
    resolve_layouts(config)  # every layout checked; the hostfile is written by the job itself, from its allocation
    directory = Path(config.run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    write_yaml_config(config, directory / "run_config.yaml")
    text = sbatch_script(job_name=config.name, run_config=str((directory / "run_config.yaml").resolve()),
                         run_dir=str(directory.resolve()), nodes=config.cluster.nodes,
                         gpus_per_node=config.cluster.gpus_per_node, gpu=uses_gpu(config),
                         partition=config.launch.slurm_partition, account=config.launch.slurm_account,
                         time_limit=config.launch.slurm_time)
    Path(path).write_text(text)
    return Path(path)
