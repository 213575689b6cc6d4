"""The files a multi-node launch needs besides argv: ``.deepspeed_env`` and the accelerate config,
and the mapping from a scheduler's rank variables to torch.distributed's.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional

from orchestrator.engine.launch.hostfile import LaunchError

ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What may appear unquoted in `KEY=VALUE` for both DeepSpeed's exporter and a POSIX `source`.
ENV_VALUE = re.compile(r"^[^\s'\"`$\\;&|<>()]*$")
ACCELERATE_BACKENDS = {"pdsh": "pdsh", "openmpi": "openmpi", "slurm": "slurm", "no_ssh": "nossh"}


def launch_env(*, user_env: Mapping[str, str], timeout_minutes: int, gpu: bool,
               master_addr: Optional[str] = None, master_port: Optional[int] = None) -> dict[str, str]:
    """Variables every rank on every node needs; ``user_env`` (launch.env) overrides the defaults.

    DEEPSPEED_TIMEOUT sets DeepSpeed's default process-group timeout (deepspeed/constants.py), so a
    dead rank fails the collective instead of hanging it; on GPUs, TORCH_NCCL_ASYNC_ERROR_HANDLING
    makes NCCL tear the job down on such an error. MASTER_ADDR/PORT are included for backends
    that start ranks without the deepspeed per-node launcher (openmpi, slurm).
    """
    env = {"DEEPSPEED_TIMEOUT": str(timeout_minutes), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if gpu:
        env.update(TORCH_NCCL_ASYNC_ERROR_HANDLING="1", NCCL_DEBUG="WARN")
    if master_addr:
        env.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
    env.update(user_env)
    check_env(env)
    return env


def check_env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not ENV_KEY.match(key):
            raise LaunchError(f"launch.env key {key!r} is not a variable name (letters, digits, _)")
        if not isinstance(value, str) or not ENV_VALUE.match(value):
            raise LaunchError(f"launch.env.{key}={value!r}: values must be one word without quotes, $, ; or "
                              f"spaces (DeepSpeed's .deepspeed_env reader splits lines on the first '=')")


def deepspeed_env_text(env: Mapping[str, str]) -> str:
    """``.deepspeed_env``: ``KEY=VALUE`` lines only; DeepSpeed's reader has no comments or blank lines."""
    check_env(env)
    return "".join(f"{key}={value}\n" for key, value in env.items())


def accelerate_config(*, ds_config_file: str, nodes: int, gpus_per_node: int, multinode: str,
                      hostfile: Optional[str], master_addr: str, master_port: int) -> dict:
    """``accelerate launch`` config whose DeepSpeed plugin reads the phase's ``ds_config.json``.

    Keys follow accelerate 1.x's ``ClusterConfig``. Precision, ZeRO and batch sizes live in the
    DeepSpeed file only, so the two cannot disagree.
    """
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_config_file": ds_config_file, "zero3_init_flag": False},
        "num_machines": nodes,
        "num_processes": nodes * gpus_per_node,
        "machine_rank": 0,
        "main_process_port": master_port,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if nodes > 1:
        if not hostfile:
            raise LaunchError(f"cluster.nodes={nodes} needs launch.hostfile for the accelerate DeepSpeed launcher")
        config["deepspeed_config"].update(deepspeed_hostfile=hostfile,
                                          deepspeed_multinode_launcher=ACCELERATE_BACKENDS[multinode])
        config["main_process_ip"] = master_addr
    return config


def rank_env_from_scheduler(environ: Mapping[str, str]) -> dict[str, str]:
    """RANK / WORLD_SIZE / LOCAL_RANK from Open MPI's or Slurm's variables, when a launcher did not set them.

    ``mpirun`` and ``srun`` start every rank directly; without this DeepSpeed would fall back to
    mpi4py to discover the ranks. MASTER_ADDR/PORT must come from the environment
    (``.deepspeed_env`` carries them).
    """
    if "RANK" in environ:
        return {}
    schemes = (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
               ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
    for rank, size, local in schemes:
        if rank in environ:
            missing = [k for k in (size, local, "MASTER_ADDR", "MASTER_PORT") if k not in environ]
            if missing:
                raise LaunchError(f"{rank} is set but {', '.join(missing)} is not: export MASTER_ADDR and "
                                  f"MASTER_PORT to every rank (.deepspeed_env does)")
            return {"RANK": environ[rank], "WORLD_SIZE": environ[size], "LOCAL_RANK": environ[local]}
    return {}
