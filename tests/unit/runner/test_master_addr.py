"""A multi-node run whose rendezvous address is this machine's loopback is refused before launch
(the other nodes could never reach it), unless every "node" is this machine."""
import pytest

from orchestrator.config.run import load_run_config
from orchestrator.engine.launch import LaunchError
from orchestrator.runner.prepare import launch_target


def two_node_run(tmp_path, hosts: str, master_addr: str):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(hosts)
    return load_run_config({"name": "t", "run_dir": str(tmp_path / "run"), "model": "tiny", "phases": ["pretrain"]},
                           ["cluster.nodes=2", "cluster.gpus_per_node=1", f"launch.hostfile={hostfile}",
                            f"launch.master_addr={master_addr}"])


@pytest.mark.parametrize("loopback", ["127.0.0.1", "localhost", "127.0.1.1", "::1"])
def test_a_loopback_master_addr_for_two_real_nodes_is_refused_naming_the_first_host(tmp_path, loopback):
    config = two_node_run(tmp_path, "worker-0 slots=1\nworker-1 slots=1\n", loopback)
    with pytest.raises(LaunchError, match=rf"launch.master_addr={loopback} is a loopback address, but "
                                          rf"cluster.nodes=2.*--set launch.master_addr=worker-0"):
        launch_target(config)


def test_node_zeros_address_or_nodes_all_on_this_machine_are_accepted(tmp_path):
    assert launch_target(two_node_run(tmp_path, "worker-0 slots=1\nworker-1 slots=1\n", "10.0.0.5")).nodes == 2
    assert launch_target(two_node_run(tmp_path, "localhost slots=1\n127.0.0.1 slots=1\n", "127.0.0.1")).nodes == 2


def test_torchrun_across_nodes_without_a_hostfile_still_needs_a_reachable_master(tmp_path):
    config = load_run_config({"name": "t", "run_dir": str(tmp_path / "run"), "model": "tiny", "phases": ["pretrain"]},
                             ["cluster.nodes=2", "launch.launcher=torchrun"])
    with pytest.raises(LaunchError, match="--set launch.master_addr=NODE0"):
        launch_target(config)
