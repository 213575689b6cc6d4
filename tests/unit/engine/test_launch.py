import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.engine.launch import (Entry, LaunchError, LaunchPlan, Target, accelerate_config, build_launch_plan,
                                        check_hosts, deepspeed_env_text, launch_env, parse_hostfile, phase_entry,
                                        rank_env_from_scheduler, read_hostfile, train_script)

ENTRY = Entry(module="orchestrator.phases.entry", args=("--phase", "sft", "--run-dir", "/runs/x"))


def plan(launcher="deepspeed", **target):
    target = Target(**{"nodes": 1, "gpus_per_node": 2, **target})
    entry = phase_entry(phase="sft", run_dir="/runs/x", target=target, launcher=launcher)
    return build_launch_plan(launcher=launcher, entry=entry, target=target, env={"A": "1"},
                             accelerate_config="/runs/x/sft/accelerate_config.yaml")


def deepspeed_args(argv):
    """What DeepSpeed 0.19's own `deepspeed` front end makes of our argv."""
    from deepspeed.launcher.runner import parse_args
    return parse_args(list(argv[1:]))


def test_local_deepspeed_launch_uses_num_gpus_and_the_phase_module():
    (command,) = plan().commands
    args = deepspeed_args(command.argv)
    assert command.argv[:3] == ("deepspeed", "--num_gpus", "2") and command.node_rank is None
    assert args.num_gpus == 2 and args.module and args.no_local_rank
    assert args.user_script == "orchestrator.phases.entry" and args.user_args == ["--phase", "sft", "--run-dir", "/runs/x"]


@pytest.mark.parametrize("backend", ["pdsh", "openmpi", "slurm"])
def test_multinode_backends_start_every_node_from_the_head_node(backend):
    (command,) = plan(nodes=2, hostfile="/etc/hosts.ds", multinode=backend, master_addr="n0", launcher_args="-p gpu").commands
    args = deepspeed_args(command.argv)
    assert command.node_rank is None
    assert (args.hostfile, args.launcher, args.master_addr, args.launcher_args) == ("/etc/hosts.ds", backend, "n0", "-p gpu")
    if backend == "pdsh":
        assert args.module and args.user_script == "orchestrator.phases.entry"
    else:  # mpirun / srun start `python SCRIPT` themselves and drop --module
        assert not args.module and args.user_script.endswith("launch/train.py")
        assert args.user_args[:2] == ["--module", "orchestrator.phases.entry"]


def test_no_ssh_gives_one_command_per_node_with_its_node_rank():
    commands = plan(nodes=3, hostfile="/h", multinode="no_ssh").commands
    assert [c.node_rank for c in commands] == [0, 1, 2]
    parsed = [deepspeed_args(c.argv) for c in commands]
    assert [(a.no_ssh, a.node_rank, a.master_addr) for a in parsed] == [(True, r, "127.0.0.1") for r in range(3)]
    assert plan(nodes=3, hostfile="/h", multinode="no_ssh").for_node(2) == commands[2]


def test_torchrun_argv_is_accepted_by_torchrun():
    from torch.distributed.run import get_args_parser
    commands = plan("torchrun", nodes=2, master_addr="n0", master_port=4000).commands
    args = get_args_parser().parse_args(list(commands[1].argv[1:]))
    assert (args.nnodes, args.nproc_per_node, args.node_rank, args.master_addr, args.master_port) == \
        ("2", "2", 1, "n0", 4000)
    assert args.module and args.training_script == "orchestrator.phases.entry"


def test_accelerate_argv_and_config_point_at_the_phase_deepspeed_json():
    from accelerate.commands.launch import launch_command_parser
    commands = plan("accelerate", nodes=2, hostfile="/h", multinode="no_ssh").commands
    args = launch_command_parser().parse_args(list(commands[1].argv[2:]))
    assert args.config_file == "/runs/x/sft/accelerate_config.yaml" and args.machine_rank == 1 and args.module
    config = accelerate_config(ds_config_file="/runs/x/sft/ds_config.json", nodes=2, gpus_per_node=4,
                               multinode="no_ssh", hostfile="/h", master_addr="n0", master_port=4000)
    assert config["deepspeed_config"] == {"deepspeed_config_file": "/runs/x/sft/ds_config.json", "zero3_init_flag": False,
                                          "deepspeed_hostfile": "/h", "deepspeed_multinode_launcher": "nossh"}
    assert (config["num_machines"], config["num_processes"], config["main_process_ip"]) == (2, 8, "n0")


def test_accelerate_reads_the_config_we_write(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    path = tmp_path / "accelerate_config.yaml"
    path.write_text(yaml.safe_dump(accelerate_config(ds_config_file="/d.json", nodes=1, gpus_per_node=2,
                                                     multinode="pdsh", hostfile=None, master_addr="a", master_port=1)))
    loaded = load_config_from_file(str(path))
    assert loaded.num_processes == 2 and loaded.deepspeed_config["deepspeed_config_file"] == "/d.json"


def test_launch_plan_round_trips_through_json():
    original = plan(nodes=2, hostfile="/h", multinode="no_ssh")
    again = LaunchPlan.from_json(original.to_json())
    assert again == original and isinstance(again.commands[0].argv, tuple)


def test_multinode_deepspeed_without_a_hostfile_is_refused():
    with pytest.raises(LaunchError, match="cluster.nodes=2 needs launch.hostfile"):
        plan(nodes=2)


def test_a_single_launch_command_only_runs_on_node_zero():
    with pytest.raises(LaunchError, match="--node-rank 1: this launch starts every node from node 0"):
        plan(nodes=2, hostfile="/h").for_node(1)


def test_hostfile_is_parsed_like_deepspeed_does(tmp_path):
    from deepspeed.launcher.runner import _parse_hostfile
    text = "# two nodes\nworker-0 slots=8\n\nworker-1 slots=8  # second\n"
    ours = parse_hostfile(text)
    assert [(h.name, h.slots) for h in ours] == [("worker-0", 8), ("worker-1", 8)]
    assert dict(_parse_hostfile("worker-0 slots=8\nworker-1 slots=8\n".splitlines())) == {h.name: h.slots for h in ours}


@pytest.mark.parametrize("text,message", [
    ("worker-0 8\n", "line 1 'worker-0 8' is not 'host slots=N'"),
    ("a slots=2\na slots=2\n", "line 2: host a is listed twice"),
    ("a slots=0\n", "a has slots=0; give it at least 1"),
    ("# nothing\n", "lists no hosts"),
])
def test_bad_hostfiles_are_refused_with_the_line(text, message):
    with pytest.raises(LaunchError, match=message):
        parse_hostfile(text)


def test_missing_hostfile_and_wrong_totals_are_refused(tmp_path):
    with pytest.raises(LaunchError, match="hostfile .*nope not found: write one 'host slots=N' line per node"):
        read_hostfile(tmp_path / "nope")
    hosts = parse_hostfile("a slots=4\nb slots=2\n")
    with pytest.raises(LaunchError, match=r"b slots=2 but cluster.gpus_per_node=4 \(the hostfile totals 6 ranks, "
                                          r"the layouts expect 2 × 4 = 8\)"):
        check_hosts(hosts, nodes=2, gpus_per_node=4)
    with pytest.raises(LaunchError, match="lists 2 host"):
        check_hosts(hosts, nodes=3, gpus_per_node=4)


def test_deepspeed_env_file_is_what_deepspeeds_reader_expects():
    env = launch_env(user_env={"NCCL_SOCKET_IFNAME": "^docker0,lo", "DEEPSPEED_TIMEOUT": "30"}, timeout_minutes=10,
                     gpu=True, master_addr="n0", master_port=4000)
    text = deepspeed_env_text(env)
    # deepspeed/launcher/runner.py: `key, val = var.split('=', maxsplit=1)` for every line
    parsed = dict(line.split("=", maxsplit=1) for line in text.splitlines(keepends=True))
    assert {k: v.strip() for k, v in parsed.items()} == env
    assert env["DEEPSPEED_TIMEOUT"] == "30" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in launch_env(user_env={}, timeout_minutes=1, gpu=False)


@pytest.mark.parametrize("env,message", [({"A B": "1"}, "is not a variable name"),
                                         ({"A": "two words"}, "values must be one word")])
def test_unusable_env_entries_are_refused(env, message):
    with pytest.raises(LaunchError, match=message):
        launch_env(user_env=env, timeout_minutes=1, gpu=False)


def test_scheduler_rank_variables_become_torch_distributed_ones():
    base = {"MASTER_ADDR": "n0", "MASTER_PORT": "1"}
    ompi = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1", **base}
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", **base}
    assert rank_env_from_scheduler(ompi) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert rank_env_from_scheduler(slurm) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}
    assert rank_env_from_scheduler({"RANK": "0", **slurm}) == {}
    with pytest.raises(LaunchError, match="MASTER_ADDR, MASTER_PORT"):
        rank_env_from_scheduler({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"})


ROOT = Path(__file__).resolve().parents[3]


def test_the_example_files_in_launch_are_what_the_code_writes():
    result = subprocess.run([sys.executable, str(ROOT / "launch" / "make_examples.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_launch_train_script_maps_slurm_ranks_and_runs_the_entry_module(tmp_path):
    (tmp_path / "probe_entry.py").write_text(
        "import os\ndef main(argv):\n    print(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK'], argv)\n"
        "    return 7\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
           "MASTER_ADDR": "n0", "MASTER_PORT": "1"}
    env.pop("RANK", None)
    result = subprocess.run([sys.executable, str(train_script()), "--module", "probe_entry", "--phase", "sft"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 7, result.stderr
    assert result.stdout.strip() == "5 8 1 ['--phase', 'sft']"
