"""Two "nodes" on this machine through the deepspeed launcher's multi-node path.

The hostfile lists this machine twice under two names (``localhost`` and ``127.0.0.1``); each
node runs its own ``deepspeed --hostfile H --no_ssh --node_rank R --master_addr 127.0.0.1``
launcher, built by ``orchestrator.engine.launch`` exactly as ``orchestrate run`` builds it, and
a real DeepSpeed engine trains across the two.
"""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.engine.launch import Entry, Target, build_launch_plan, check_hosts, launch_env, read_hostfile
from orchestrator.handoff.checkpoint import latest_checkpoint, verify_checkpoint
from orchestrator.orchestrate.process import child_env, resolve_executable

SCRIPT = Path(__file__).with_name("multinode_train.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_node_no_ssh_launch_trains_one_deepspeed_engine_across_both(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    check_hosts(read_hostfile(hostfile), nodes=2, gpus_per_node=1)
    target = Target(nodes=2, gpus_per_node=1, hostfile=str(hostfile), multinode="no_ssh",
                    master_addr="127.0.0.1", master_port=free_port())
    env = launch_env(user_env={"OMP_NUM_THREADS": "1"}, timeout_minutes=2, gpu=False,
                     master_addr=target.master_addr, master_port=target.master_port)
    out = tmp_path / "result.json"
    plan = build_launch_plan(launcher="deepspeed", entry=Entry(script=str(SCRIPT), args=("--out", str(out))),
                             target=target, env=env)
    processes = [subprocess.Popen([resolve_executable(c.argv[0]), *c.argv[1:]], env=child_env(c.env), cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for c in plan.commands]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    result = json.loads(out.read_text())
    assert result["world"] == 2
    assert [(r["rank"], r["node_rank"], r["local_rank"]) for r in result["ranks"]] == [(0, 0, 0), (1, 1, 0)]
    losses = result["losses"]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    files = verify_checkpoint(checkpoint)
    assert {"state/zero_pp_rank_0_mp_rank_00_optim_states.pt", "state/zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(files)
