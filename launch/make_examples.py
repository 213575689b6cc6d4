#!/usr/bin/env python
"""Regenerate the example files in this folder from the code that writes them for real runs.

    python launch/make_examples.py          # rewrite the examples
    python launch/make_examples.py --check  # exit 1 if any example is out of date (a unit test runs this)

The job: 2 nodes × 8 A100-80G, the paths a shared cluster filesystem would have.
"""
import argparse
import sys
from pathlib import Path

import yaml

from orchestrator.config.run import LaunchConfig
from orchestrator.engine.launch import accelerate_config, deepspeed_env_text, launch_env, sbatch_script

HERE = Path(__file__).parent
CHECKOUT = "/shared/gpt-orchestrator"
RUN_DIR = "/shared/runs/gpt3-small"


def examples() -> dict[str, str]:
    env = launch_env(user_env={"NCCL_SOCKET_IFNAME": "^docker0,lo"}, timeout_minutes=LaunchConfig().timeout_minutes, gpu=True,
                     master_addr="worker-0", master_port=29500)
    accelerate = accelerate_config(ds_config_file=f"{RUN_DIR}/pretrain/ds_config.json", nodes=2, gpus_per_node=8,
                                   multinode="pdsh", hostfile=f"{CHECKOUT}/launch/hostfile.example",
                                   master_addr="worker-0", master_port=29500)
    sbatch = sbatch_script(job_name="gpt3-small", run_config=f"{RUN_DIR}/run_config.yaml", run_dir=RUN_DIR, nodes=2,
                           gpus_per_node=8, gpu=True, partition="gpu", time_limit="48:00:00", workdir=CHECKOUT,
                           python=f"{CHECKOUT}/.venv/bin/python")
    return {"deepspeed_env.example": deepspeed_env_text(env),
            "accelerate_config.example.yaml": yaml.safe_dump(accelerate, sort_keys=False),
            "job.sbatch.example": sbatch}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for name, text in examples().items():
        path = HERE / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python launch/make_examples.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
