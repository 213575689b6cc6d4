"""Cluster presets: what one accelerator can hold and do, and how many of them there are.

A ``DeviceSpec`` is one GPU model (or this machine's CPU); a ``Cluster`` is a device × nodes ×
devices per node. Presets are functions. Figures are vendor datasheet numbers for SXM parts
(dense bf16 Tensor Core FLOP/s, no sparsity), memory as ``nvidia-smi`` reports it, bandwidths one
way per GPU. Pure Python: the planner reads these without importing torch.

Worked example: ``make_cluster(gpu="a100-80g", gpus=1024, gpus_per_node=8)`` is 128 DGX A100
nodes; each GPU has 80 GiB, 312 TFLOP/s, 300 GB/s NVLink and 25 GB/s of InfiniBand (8 × 200 Gb/s
HDR per node).
"""
from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass
from typing import Callable, Literal, Optional

GiB = 2**30


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator model and the node it sits in."""

    name: str
    kind: Literal["gpu", "cpu"]
    memory_gib: float
    """Device memory; for ``cpu`` the host RAM, shared by the ranks of a node."""
    peak_flops: float
    """Dense bf16 FLOP/s (fp32 for ``cpu``)."""
    hbm_bandwidth: float
    """Device memory bandwidth, bytes/s."""
    nvlink_bandwidth: float
    """Intra-node bandwidth per GPU, bytes/s one way (NVLink/NVSwitch)."""
    internode_bandwidth: float
    """Inter-node bandwidth per GPU, bytes/s one way (one NIC per GPU on DGX nodes)."""
    pcie_bandwidth: float
    """Host ↔ device bandwidth per GPU, bytes/s (what ZeRO-Offload moves gradients over)."""
    host_memory_gib: float
    """CPU RAM per node (holds offloaded optimizer state)."""
    host_memory_bandwidth: float
    """CPU memory bandwidth per node, bytes/s (bounds the CPU Adam step under offload)."""
    reserved_gib: float = 1.0
    """Per-device memory the framework takes before any tensor: CUDA context, cuBLAS and NCCL workspaces."""


@dataclass(frozen=True)
class Cluster:
    """``nodes`` × ``gpus_per_node`` devices of one kind."""

    device: DeviceSpec
    nodes: int = 1
    gpus_per_node: int = 8
    storage_bandwidth: Optional[float] = None
    """Aggregate write bandwidth of the shared file system checkpoints go to, bytes/s (None: the
    kind's default, ``DEFAULT_STORAGE``)."""
    storage_node_bandwidth: Optional[float] = None
    """Write bandwidth one node reaches on that file system, bytes/s (None: the kind's default)."""

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(f"cluster needs nodes >= 1 and gpus_per_node >= 1, "
                             f"got nodes {self.nodes}, gpus_per_node {self.gpus_per_node}")
        for name in ("storage_bandwidth", "storage_node_bandwidth"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} {value}: must be > 0 bytes/s (or left out for the default)")

    @property
    def storage(self) -> tuple[float, float]:
        """(aggregate, per-node) checkpoint write bandwidth in bytes/s, defaults filled in."""
        aggregate, per_node = DEFAULT_STORAGE[self.device.kind]
        return (self.storage_bandwidth or aggregate, self.storage_node_bandwidth or per_node)

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def device_memory_bytes(self) -> float:
        """Memory one rank may use; CPU ranks of a node share the host's RAM."""
        if self.device.kind == "cpu":
            return self.device.memory_gib * GiB / self.gpus_per_node
        return self.device.memory_gib * GiB

    def bandwidth(self, *, group_span: int) -> float:
        """Per-rank bandwidth of a collective whose group spans ``group_span`` consecutive ranks
        (stride included): NVLink inside one node, the inter-node link otherwise."""
        return self.device.nvlink_bandwidth if group_span <= self.gpus_per_node else self.device.internode_bandwidth

    def describe(self) -> str:
        return f"{self.nodes} × {self.gpus_per_node} {self.device.name} ({self.world} ranks)"


# Checkpoint storage when the user does not say (``--storage-gbps``, ``--storage-node-gbps``):
# an assumption, not a datasheet. GPU clusters: a parallel file system (Lustre, GPFS, WEKA) that
# takes 1 TB/s in all and 10 GB/s from one node (about one 100 Gb/s storage NIC's worth once the
# client stack is paid); this machine: one local disk at 1 GB/s.
DEFAULT_STORAGE: dict[str, tuple[float, float]] = {"gpu": (1e12, 10e9), "cpu": (1e9, 1e9)}


# --- GPU presets ----------------------------------------------------------------------------
def a100_40g() -> DeviceSpec:
    """NVIDIA A100-SXM4-40GB in a DGX A100: 312 TFLOP/s bf16, 1.555 TB/s HBM2, NVLink 3
    (600 GB/s both ways), 8 × 200 Gb/s HDR InfiniBand per node, PCIe 4.0, 1 TB of host RAM,
    two AMD EPYC 7742 with 8 DDR4-3200 channels each (2 × 204.8 GB/s)."""
    return DeviceSpec(name="a100-40g", kind="gpu", memory_gib=39.6, peak_flops=312e12, hbm_bandwidth=1.555e12,
                      nvlink_bandwidth=300e9, internode_bandwidth=25e9, pcie_bandwidth=25e9,
                      host_memory_gib=1024, host_memory_bandwidth=409.6e9)


def a100_80g() -> DeviceSpec:
    """A100-SXM4-80GB: the 40G part with 80 GiB of HBM2e at 2.039 TB/s; DGX A100 (2 TB host RAM)."""
    return dataclasses.replace(a100_40g(), name="a100-80g", memory_gib=80.0, hbm_bandwidth=2.039e12,
                               host_memory_gib=2048)


def h100_80g() -> DeviceSpec:
    """H100-SXM5-80GB in a DGX H100: 989 TFLOP/s dense bf16, 3.35 TB/s HBM3, NVLink 4 (900 GB/s
    both ways), 8 × 400 Gb/s NDR InfiniBand per node, PCIe 5.0, 2 TB host RAM, two Xeon 8480C
    with 8 DDR5-4800 channels each (2 × 307 GB/s)."""
    return DeviceSpec(name="h100-80g", kind="gpu", memory_gib=79.6, peak_flops=989e12, hbm_bandwidth=3.35e12,
                      nvlink_bandwidth=450e9, internode_bandwidth=50e9, pcie_bandwidth=50e9,
                      host_memory_gib=2048, host_memory_bandwidth=614e9)


def h200() -> DeviceSpec:
    """H200-SXM-141GB: H100's compute and links with 141 GB (140.4 GiB) of HBM3e at 4.8 TB/s."""
    return dataclasses.replace(h100_80g(), name="h200", memory_gib=140.4, hbm_bandwidth=4.8e12)


def cpu() -> DeviceSpec:
    """This machine, with ranks as processes talking over gloo.

    Cores and RAM are read from the OS. The FLOP/s figure is nominal (cores × 2.5 GHz × 32 fp32
    FLOP/cycle, i.e. two 8-wide FMA units) and serves the planner only; the runtime's MFU and the
    benchmarks use the measured matmul peak (``orchestrator.engine.peak``). Bandwidths
    are typical DDR and loopback figures; nothing here is calibrated, the ``cpu`` preset exists so
    the tiny CI run goes through the same planner as a cluster run.
    """
    cores = os.cpu_count() or 1
    ram_gib = _host_ram_gib()
    return DeviceSpec(name="cpu", kind="cpu", memory_gib=ram_gib, peak_flops=cores * 2.5e9 * 32,
                      hbm_bandwidth=20e9, nvlink_bandwidth=5e9, internode_bandwidth=1.25e9, pcie_bandwidth=20e9,
                      host_memory_gib=ram_gib, host_memory_bandwidth=20e9, reserved_gib=0.5)


def cpu_model() -> str:
    """This machine's CPU model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _host_ram_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small laptop
        return 8.0


DEVICES: dict[str, Callable[[], DeviceSpec]] = {
    "a100-40g": a100_40g, "a100-80g": a100_80g, "h100-80g": h100_80g, "h200": h200, "cpu": cpu,
}


def get_device(name: str) -> DeviceSpec:
    """The preset called ``name``; an unknown name lists the presets."""
    try:
        return DEVICES[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown gpu {name!r}: choose one of {', '.join(DEVICES)}") from None


def make_cluster(*, gpu: str, gpus: int, gpus_per_node: int = 8, storage_bandwidth: Optional[float] = None,
                 storage_node_bandwidth: Optional[float] = None) -> Cluster:
    """``gpus`` devices of preset ``gpu``, ``gpus_per_node`` to a node (fewer than a node: one node).

    >>> make_cluster(gpu="h100-80g", gpus=4096).nodes
    512
    """
    if gpus < 1:
        raise ValueError(f"--gpus {gpus}: need at least one device")
    if gpus_per_node < 1:
        raise ValueError(f"--gpus-per-node {gpus_per_node}: need at least one device per node")
    storage = dict(storage_bandwidth=storage_bandwidth, storage_node_bandwidth=storage_node_bandwidth)
    if gpus <= gpus_per_node:
        return Cluster(device=get_device(gpu), nodes=1, gpus_per_node=gpus, **storage)
    if gpus % gpus_per_node:
        lower, upper = gpus // gpus_per_node * gpus_per_node, -(-gpus // gpus_per_node) * gpus_per_node
        raise ValueError(f"--gpus {gpus} is not a whole number of nodes of {gpus_per_node}: "
                         f"use {lower} or {upper}, or change --gpus-per-node")
    return Cluster(device=get_device(gpu), nodes=gpus // gpus_per_node, gpus_per_node=gpus_per_node, **storage)
