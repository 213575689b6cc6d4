"""Launch commands as data: argv lists (never shell strings) that round-trip through JSON.

One phase is started by one launcher invocation on the head node, or by one per node when the
launcher cannot reach the other nodes itself (``torchrun``, and the deepspeed launcher's
``--no_ssh`` mode). Flags are those of DeepSpeed 0.19's ``deepspeed/launcher/runner.py``,
torchrun 2.x and ``accelerate launch`` 1.x.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from orchestrator.config.loader import from_dict, to_dict
from orchestrator.engine.launch.hostfile import LaunchError

ENTRY_MODULE = "orchestrator.phases.entry"
Launcher = Literal["deepspeed", "torchrun", "accelerate"]
Multinode = Literal["pdsh", "openmpi", "slurm", "no_ssh"]
# Backends that start ``python -u SCRIPT`` on every rank themselves: DeepSpeed's SlurmRunner drops
# ``--module``, and neither sets RANK/LOCAL_RANK (they come from the scheduler's variables), so
# they run ``launch/train.py``, which maps those variables before calling the phase entry.
SCRIPT_BACKENDS = ("openmpi", "slurm")


@dataclass(frozen=True)
class Entry:
    """What every rank runs: ``python -m MODULE ARGS`` or ``python SCRIPT ARGS``."""

    module: Optional[str] = None
    script: Optional[str] = None
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.module is None) == (self.script is None):
            raise LaunchError(f"an entry needs exactly one of module or script, got module={self.module!r}, "
                              f"script={self.script!r}")

    def argv(self, module_flag: str) -> list[str]:
        head = [module_flag, self.module] if self.module else [str(self.script)]
        return head + list(self.args)


@dataclass(frozen=True)
class Target:
    """Where the ranks of one job go."""

    nodes: int
    gpus_per_node: int
    """Ranks per node."""
    hostfile: Optional[str] = None
    multinode: Multinode = "pdsh"
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher_args: str = ""


@dataclass(frozen=True)
class LaunchCommand:
    """One process to start: its argv, the variables to add to its environment, and its node."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    node_rank: Optional[int] = None
    """The node that runs it; None: the head node, which reaches every node itself."""

    def shell(self) -> str:
        """For printing only: ``VAR=value ... argv`` quoted for a POSIX shell."""
        return shlex.join([f"{k}={v}" for k, v in self.env.items()] + list(self.argv))


@dataclass(frozen=True)
class LaunchPlan:
    """Every command that starts one phase (``PHASE/launch.json``)."""

    launcher: Launcher
    commands: tuple[LaunchCommand, ...]

    def for_node(self, node_rank: int) -> LaunchCommand:
        """The command this node runs (the head node's when there is only one)."""
        if len(self.commands) == 1 and self.commands[0].node_rank is None:
            if node_rank != 0:
                raise LaunchError(f"--node-rank {node_rank}: this launch starts every node from node 0; "
                                  f"run it on node 0 only (or use launch.multinode=no_ssh)")
            return self.commands[0]
        for command in self.commands:
            if command.node_rank == node_rank:
                return command
        raise LaunchError(f"--node-rank {node_rank} is not a node of this job (nodes 0..{len(self.commands) - 1})")

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "LaunchPlan":
        return from_dict(cls, json.loads(text), "launch.json")


def train_script() -> Path:
    """``launch/train.py`` of this source checkout (what script-only backends run)."""
    path = Path(__file__).resolve().parents[3] / "launch" / "train.py"
    if not path.is_file():
        raise LaunchError(f"{path} not found: the openmpi and slurm backends need the launch/train.py script of "
                          f"a source checkout on a shared filesystem; or set launch.multinode=no_ssh")
    return path


def phase_entry(*, phase: str, run_dir: str, target: Target, launcher: Launcher,
                module: str = ENTRY_MODULE) -> Entry:
    """``--phase P --run-dir D`` for the phase module, or for ``launch/train.py`` where a script is needed."""
    args = ("--phase", phase, "--run-dir", run_dir)
    if launcher != "torchrun" and target.nodes > 1 and target.multinode in SCRIPT_BACKENDS:
        return Entry(script=str(train_script()), args=("--module", module, *args))
    return Entry(module=module, args=args)


def deepspeed_argv(*, entry: Entry, target: Target, node_rank: Optional[int]) -> list[str]:
    """``deepspeed [--num_gpus N | --hostfile H (--launcher B | --no_ssh --node_rank R) --master_addr A] ...``."""
    argv = ["deepspeed"]
    if target.nodes == 1:
        argv += ["--num_gpus", str(target.gpus_per_node)]
    else:
        if not target.hostfile:
            raise LaunchError(f"cluster.nodes={target.nodes} needs launch.hostfile ('host slots=N' per node)")
        argv += ["--hostfile", target.hostfile]
        if target.multinode == "no_ssh":
            argv += ["--no_ssh", "--node_rank", str(node_rank)]
        else:
            argv += ["--launcher", target.multinode]
            if target.launcher_args:
                argv += ["--launcher_args", target.launcher_args]
        argv += ["--master_addr", target.master_addr]
    # LOCAL_RANK reaches the ranks through the environment, as under torchrun and accelerate.
    argv += ["--master_port", str(target.master_port), "--no_local_rank"]
    return argv + entry.argv("--module")


def torchrun_argv(*, entry: Entry, target: Target, node_rank: Optional[int]) -> list[str]:
    """``torchrun --nnodes N --nproc-per-node G [--node-rank R --master-addr A] --master-port P ...``."""
    argv = ["torchrun", "--nnodes", str(target.nodes), "--nproc-per-node", str(target.gpus_per_node)]
    if target.nodes > 1:
        argv += ["--node-rank", str(node_rank), "--master-addr", target.master_addr]
    argv += ["--master-port", str(target.master_port)]
    return argv + entry.argv("-m")


def accelerate_argv(*, entry: Entry, target: Target, node_rank: Optional[int], config_file: str) -> list[str]:
    """``accelerate launch --config_file F [--machine_rank R] ...``: the rest is in the config file."""
    argv = ["accelerate", "launch", "--config_file", config_file]
    if node_rank is not None:
        argv += ["--machine_rank", str(node_rank)]
    return argv + entry.argv("-m")


def build_launch_plan(*, launcher: Launcher, entry: Entry, target: Target, env: dict[str, str],
                      accelerate_config: Optional[str] = None) -> LaunchPlan:
    """The commands that start one phase: one on the head node, or one per node."""
    per_node = target.nodes > 1 and (launcher == "torchrun" or target.multinode == "no_ssh")
    node_ranks: list[Optional[int]] = list(range(target.nodes)) if per_node else [None]
    commands = []
    for node_rank in node_ranks:
        if launcher == "deepspeed":
            argv = deepspeed_argv(entry=entry, target=target, node_rank=node_rank)
        elif launcher == "torchrun":
            argv = torchrun_argv(entry=entry, target=target, node_rank=node_rank)
        else:
            if not accelerate_config:
                raise LaunchError("launch.launcher=accelerate needs an accelerate config file path")
            argv = accelerate_argv(entry=entry, target=target, node_rank=node_rank, config_file=accelerate_config)
        commands.append(LaunchCommand(argv=tuple(argv), env=dict(env), node_rank=node_rank))
    return LaunchPlan(launcher=launcher, commands=tuple(commands))
