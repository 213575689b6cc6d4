"""Two "nodes" on this machine through the deepspeed launcher's multi-node path, running the real
pretrain phase.

The hostfile lists this machine twice under two names (``localhost`` and ``127.0.0.1``). As on a
cluster without ssh (``launch.multinode: no_ssh``), every node runs ``orchestrate run RECIPE
--node-rank R``: each starts its own ``deepspeed --hostfile H --no_ssh --node_rank R`` launcher,
node 0 first prepares the run's data while node 1's rank waits at the rendezvous, and the two
ranks pretrain the tiny model under ZeRO-1 data parallelism into one atomic checkpoint.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.handoff.checkpoint import read_latest, verify_checkpoint
from orchestrator.handoff.manifest import read_manifest
from orchestrator.handoff.metrics import read_metrics
from orchestrator.engine.launch.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def overrides(tmp_path: Path, hostfile: Path) -> list[str]:
    sets = [f"data.cache_dir={tmp_path / 'cache'}", "data.task.sft_train=50", "data.task.sft_eval=8",
            "data.task.rm_train=20", "data.task.rm_eval=8", "data.task.ppo_train=20", "data.task.ppo_eval=8",
            "cluster.nodes=2", "cluster.gpus_per_node=1", f"launch.hostfile={hostfile}", "launch.multinode=no_ssh",
            "launch.master_addr=127.0.0.1", f"launch.master_port={free_port()}",
            "pretrain.layout.zero_stage=1", "pretrain.layout.micro_batch=4", "pretrain.optim.warmup_steps=2",
            "pretrain.loop.steps=12", "pretrain.loop.seq_len=64", "pretrain.loop.log_every=1",
            "pretrain.loop.save_every=6", "pretrain.loop.eval_every=6", "pretrain.loop.eval_batches=2"]
    return [flag for item in sets for flag in ("--set", item)]


def node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.mark.distributed
def test_two_nodes_without_ssh_each_run_their_launcher_and_train_one_phase_across_both(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "orchestrator", "run", str(REPO / "recipes" / "tiny.yaml"), "--run-dir",
            str(run_dir), "--only", "pretrain", *overrides(tmp_path, hostfile)]
    nodes = [subprocess.Popen([*argv, "--node-rank", str(rank)], cwd=tmp_path, env=node_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
             for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            try:
                os.killpg(node.pid, 9)
            except ProcessLookupError:
                pass
            node.wait()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    for rank, output in enumerate(outputs):  # each node's own launcher, each starting one of the two ranks
        assert f"--no_ssh --node_rank {rank}" in output
        assert f"nnodes=2, num_local_procs=1, node_rank={rank}" in output and "dist_world_size=2" in output
    assert "[data] $" in outputs[0] and "[data]" not in outputs[1]   # node 0 prepares the shared run directory

    manifest = read_manifest(run_dir / "pretrain")
    assert manifest.status == "complete" and manifest.step == 12
    assert (manifest.layout["dp"], manifest.layout["zero_stage"]) == (2, 1)
    losses = [e["loss"] for e in read_metrics(run_dir / "pretrain" / "metrics.jsonl") if e["kind"] == "train"]
    assert len(losses) == 12 and losses[-1] < losses[0]
    files = verify_checkpoint(read_latest(run_dir / "pretrain" / "checkpoints"))
    assert {"model/state/zero_pp_rank_0_mp_rank_00_optim_states.pt",       # one optimizer partition per node
            "model/state/zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "rng/rank00000.pt", "rng/rank00001.pt"} <= set(files)
