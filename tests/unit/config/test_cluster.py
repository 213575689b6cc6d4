"""Cluster presets and how a cluster is made from --gpus and --gpus-per-node."""
import pytest

from orchestrator.config.cluster import DEVICES, GiB, get_device, make_cluster


@pytest.mark.parametrize("name", ["a100-40g", "a100-80g", "h100-80g", "h200", "cpu"])
def test_every_preset_has_positive_figures(name):
    device = get_device(name)
    assert device.name == name
    for value in (device.memory_gib, device.peak_flops, device.hbm_bandwidth, device.nvlink_bandwidth,
                  device.internode_bandwidth, device.pcie_bandwidth, device.host_memory_gib):
        assert value > 0


def test_gpu_generations_are_ordered():
    a100, h100, h200 = get_device("a100-80g"), get_device("h100-80g"), get_device("h200")
    assert a100.peak_flops < h100.peak_flops == h200.peak_flops
    assert h100.memory_gib < h200.memory_gib and h100.hbm_bandwidth < h200.hbm_bandwidth
    assert get_device("a100-40g").memory_gib < a100.memory_gib


def test_cluster_is_nodes_times_gpus_per_node():
    cluster = make_cluster(gpu="h100-80g", gpus=4096)
    assert (cluster.nodes, cluster.gpus_per_node, cluster.world) == (512, 8, 4096)
    assert make_cluster(gpu="a100-80g", gpus=4).nodes == 1


def test_collectives_inside_a_node_use_nvlink_and_across_nodes_the_network():
    cluster = make_cluster(gpu="a100-80g", gpus=64)
    assert cluster.bandwidth(group_span=8) == cluster.device.nvlink_bandwidth
    assert cluster.bandwidth(group_span=16) == cluster.device.internode_bandwidth


def test_cpu_ranks_share_the_host_memory():
    cluster = make_cluster(gpu="cpu", gpus=2, gpus_per_node=2)
    assert cluster.device_memory_bytes == pytest.approx(cluster.device.memory_gib * GiB / 2)


def test_bad_cluster_input_names_the_fix():
    with pytest.raises(ValueError, match="use 8 or 16"):
        make_cluster(gpu="a100-80g", gpus=12)
    with pytest.raises(ValueError, match="choose one of " + ", ".join(DEVICES)):
        get_device("v100")
