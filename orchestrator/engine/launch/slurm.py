"""An ``sbatch`` script that runs a whole pipeline in one Slurm allocation.

Which way, and why: one ``srun`` task per node, each running ``orchestrate run`` for its node
rank, which starts the deepspeed launcher with ``--no_ssh --node_rank $SLURM_NODEID`` for every
phase. The alternative, deepspeed's ``--launcher slurm``, runs ``srun python SCRIPT`` from the
head node: it drops ``--module``, sets no RANK/LOCAL_RANK (DeepSpeed then needs mpi4py to find
them), needs ``sinfo`` on the head node, and skips the per-node launcher that kills a node's
ranks when one dies. The per-node form runs the same launcher, environment and entry as every
other path, and the runner's skip/resume logic works unchanged inside the allocation.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional


def sbatch_header(*, job_name: str, nodes: int, gpus_per_node: int, gpu: bool, log_dir: str,
                  partition: Optional[str], account: Optional[str], time_limit: str) -> list[str]:
    lines = [f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --time={time_limit}", f"#SBATCH --output={log_dir}/slurm-%j.out"]
    if gpu:
        lines.append(f"#SBATCH --gpus-per-node={gpus_per_node}")
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    return lines


def sbatch_script(*, job_name: str, run_config: str, run_dir: str, nodes: int, gpus_per_node: int, gpu: bool,
                  partition: Optional[str] = None, account: Optional[str] = None, time_limit: str = "24:00:00",
                  workdir: Optional[str] = None, python: Optional[str] = None) -> str:
    """The script text; submit it with ``sbatch``. Paths should be absolute (the job starts elsewhere)."""
    python = python or sys.executable
    workdir = workdir or str(Path.cwd())
    header = sbatch_header(job_name=job_name, nodes=nodes, gpus_per_node=gpus_per_node, gpu=gpu,
                           log_dir=f"{run_dir}/logs", partition=partition, account=account, time_limit=time_limit)
    # Each node's task: its own runner, told its node rank, the job's hostfile and node 0's name.
    per_node = (f'exec {shlex.quote(python)} -m orchestrator run "$0" --node-rank "$SLURM_NODEID" '
                '--set launch.multinode=no_ssh --set launch.hostfile="$1" --set launch.master_addr="$2"')
    body = [
        "set -euo pipefail",
        f"cd {shlex.quote(workdir)}",
        f"mkdir -p {shlex.quote(run_dir)}/logs",
        f'HOSTFILE={shlex.quote(run_dir)}/hostfile.$SLURM_JOB_ID',
        "# one 'host slots=N' line per node of this allocation",
        f'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/$/ slots={gpus_per_node}/" > "$HOSTFILE"',
        'MASTER_ADDR=$(head -n 1 "$HOSTFILE" | cut -d " " -f 1)',
        "# one task per node; --kill-on-bad-exit ends every node when one fails",
        f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {shlex.quote(per_node)} \\",
        f'    {shlex.quote(run_config)} "$HOSTFILE" "$MASTER_ADDR"',
    ]
    intro = ["#!/bin/bash", *header, "#",
             f"# Written by `orchestrate run --sbatch`: the phases of {run_config}, one deepspeed",
             "# launcher per node (--no_ssh --node_rank $SLURM_NODEID). Submit: sbatch THIS_FILE", ""]
    return "\n".join(intro + body) + "\n"
