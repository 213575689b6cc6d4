"""This device's measured matmul peak at the precision in use: what MFU is a fraction of.

Model-FLOPs utilisation (Chowdhery et al. 2022, App. B) is model FLOPs per second over the
hardware's peak FLOP/s. A datasheet (or, for a CPU, cores × clock × FLOP per cycle) says what the
silicon might do; what it does at one precision under this torch build is measured here: square
matmuls of the runtime's dtype on its device, timed for about a second over a few sizes, the best
rate kept. The planner keeps its presets (it is pure and plans for clusters it is not on); only the
runtime's MFU and the benchmarks use this probe.

The result is cached per machine in ``$XDG_CACHE_HOME/gpt-orchestrator/matmul_peak.json`` (default
``~/.cache/…``), keyed by host, device name (GPU model or CPU model), torch version, dtype and
thread count, so a phase measures once per machine and precision; delete the file to measure again.

Worked example: one n × n by n × n matmul is n² dot products of n multiply-adds, 2·n³ FLOPs; a
1024-matmul (2.15 GFLOP) repeated 160 times in one second is 344 GFLOP/s.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from orchestrator.config.cluster import cpu_model

CACHE_FILE_NAME = "matmul_peak.json"
PROBE_SECONDS = 1.0
"""Time the default probe spends timing matmuls (all sizes together)."""
CPU_SIZES = (512, 1024, 2048)
GPU_SIZES = (2048, 4096, 8192)
REPROBE_SCALE = 2
"""A re-probe (model FLOP/s above the cached peak) times matmuls this many times larger, for longer."""
BUSY_LOAD = 0.5
"""Load average per core above which a CPU figure counts as taken on a busy machine."""


def matmul_flops(n: int) -> int:
    """FLOPs of one n × n by n × n matmul: n² outputs, each n multiply-adds of 2 FLOPs."""
    return 2 * n**3


@dataclass(frozen=True)
class PeakKey:
    """What a measured peak depends on; a change in any field measures again."""

    host: str
    device: str
    """``cuda:<GPU name>`` or ``cpu:<CPU model>``."""
    torch: str
    dtype: str
    """``float32``, ``bfloat16``, ``float16``."""
    threads: int
    """torch intra-op threads of the probe (CPU); 0 on a GPU."""

    def as_string(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def peak_key(*, dtype: torch.dtype, device: torch.device) -> PeakKey:
    """This process's key for ``dtype`` on ``device`` (a CPU probe uses every core this process may run on)."""
    if device.type == "cuda":
        name, threads = f"cuda:{torch.cuda.get_device_name(device)}", 0
    else:
        name, threads = f"cpu:{cpu_model()}", usable_cores()
    return PeakKey(host=socket.gethostname(), device=name, torch=torch.__version__,
                   dtype=str(dtype).removeprefix("torch."), threads=threads)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def flop_rate(flops: float) -> str:
    """``340 GFLOP/s``, ``756 TFLOP/s``."""
    return f"{flops / 1e12:.3g} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.3g} GFLOP/s"


def default_cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpt-orchestrator" / CACHE_FILE_NAME


# --- measuring -------------------------------------------------------------------------------
def time_matmuls(n: int, *, dtype: torch.dtype, device: torch.device, seconds: float) -> float:
    """FLOP/s of ``n`` × ``n`` matmuls of ``dtype`` on ``device``, repeated for about ``seconds``
    (at least once, after one untimed warm-up)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    launches = 8 if device.type == "cuda" else 1  # queue several kernels between synchronisations
    torch.matmul(a, b, out=out)
    _synchronize(device)
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(launches):
            torch.matmul(a, b, out=out)
        _synchronize(device)
        count += launches
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return matmul_flops(n) * count / elapsed


def measure_peak(*, dtype: torch.dtype, device: torch.device, seconds: float = PROBE_SECONDS,
                 sizes: Optional[tuple[int, ...]] = None) -> tuple[float, int]:
    """(best FLOP/s, the size that gave it) over ``sizes`` (CPU: every usable core)."""
    sizes = sizes or (GPU_SIZES if device.type == "cuda" else CPU_SIZES)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(usable_cores())
    try:
        rates = {n: time_matmuls(n, dtype=dtype, device=device, seconds=seconds / len(sizes)) for n in sizes}
    finally:
        torch.set_num_threads(threads)
    best = max(rates, key=rates.get)
    return rates[best], best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the cache -------------------------------------------------------------------------------
Measure = Callable[..., tuple[float, int]]


def read_cache(path: Path) -> dict:
    """The cache's entries by key string; a missing or unreadable file is an empty cache."""
    try:
        entries = json.loads(path.read_text()).get("peaks", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def write_cache(path: Path, entries: dict) -> bool:
    """Write the cache atomically; False when it cannot be written (then every run measures)."""
    from orchestrator.handoff.hashing import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"peaks": entries}, indent=1, sort_keys=True) + "\n")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Peak:
    """One device's measured peak at one precision."""

    flops: float
    size: int
    """The matmul size that gave it."""
    key: PeakKey
    measured: bool
    """True when this call ran the probe, False when it came from the cache."""


def cached_peak(*, dtype: torch.dtype, device: torch.device, cache_file: Optional[Path] = None,
                measure: Measure = measure_peak, at_least_size: int = 0) -> Peak:
    """The cached peak for this machine, ``dtype`` and ``device``, measured (and cached) if absent.

    Measured again, keeping the larger figure, when ``at_least_size`` asks for larger matmuls
    than the cached figure came from, or when a CPU figure was taken on a busy machine (load above
    ``BUSY_LOAD`` per core) and the machine is now at most half as busy.
    """
    path = cache_file or default_cache_file()
    key = peak_key(dtype=dtype, device=device)
    entries = read_cache(path)
    old = entries.get(key.as_string())
    old = old if isinstance(old, dict) and old.get("flops", 0) > 0 else None
    load = load_per_core() if device.type == "cpu" else 0.0
    if old is not None and old.get("size", 0) >= at_least_size and not _quieter_now(old, load):
        return Peak(flops=float(old["flops"]), size=int(old["size"]), key=key, measured=False)
    flops, size = measure(dtype=dtype, device=device, sizes=(at_least_size,) if at_least_size else None,
                          seconds=PROBE_SECONDS * (REPROBE_SCALE if at_least_size else 1))
    entry = {"flops": flops, "size": size, "load_per_core": load, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if old is not None and old["flops"] > flops:  # the earlier figure was the better measurement
        entry.update(flops=float(old["flops"]), size=max(size, int(old.get("size", 0))),
                     load_per_core=min(load, float(old.get("load_per_core", load))))
    entries[key.as_string()] = entry
    write_cache(path, entries)
    return Peak(flops=entry["flops"], size=entry["size"], key=key, measured=True)


def load_per_core() -> float:
    """The 1-minute load average per usable core (0 where the OS does not say)."""
    try:
        return os.getloadavg()[0] / usable_cores()
    except (AttributeError, OSError):
        return 0.0


def _quieter_now(entry: dict, load: float) -> bool:
    measured_under = float(entry.get("load_per_core", 0.0))
    return measured_under > BUSY_LOAD and load <= measured_under / 2


# --- MFU -------------------------------------------------------------------------------------
class MFUMeter:
    """MFU (Chowdhery et al. 2022, App. B) of a job of ``devices`` alike devices against their
    measured peak, never above 1.

    Model FLOP/s above the peak mean the probe under-measured (it ran under load, or its matmuls
    were too small to reach the device's best): the meter probes once more with larger matmuls for
    longer, and if the model is still faster it reports 1.0 and says so once through ``report``.
    """

    def __init__(self, *, dtype: torch.dtype, device: torch.device, devices: int,
                 cache_file: Optional[Path] = None, measure: Measure = measure_peak,
                 report: Callable[[str], None] = print) -> None:
        self.dtype, self.device, self.devices = dtype, device, devices
        self.cache_file, self.measure, self.report = cache_file, measure, report
        self.peak = cached_peak(dtype=dtype, device=device, cache_file=cache_file, measure=measure)
        self.reprobed = self.capped = False

    @property
    def job_peak(self) -> float:
        return self.peak.flops * self.devices

    def describe(self) -> str:
        source = "measured now, cached" if self.peak.measured else "cached"
        return (f"MFU against a measured {self.peak.key.dtype} matmul peak of {flop_rate(self.peak.flops)} per device "
                f"× {self.devices} ({source} in {self.cache_file or default_cache_file()})")

    def mfu(self, model_flops_per_s: float) -> float:
        if model_flops_per_s > self.job_peak and not self.reprobed:
            self.reprobed = True
            self.peak = cached_peak(dtype=self.dtype, device=self.device, cache_file=self.cache_file,
                                    measure=self.measure, at_least_size=self.peak.size * REPROBE_SCALE)
        if model_flops_per_s <= self.job_peak:
            return model_flops_per_s / self.job_peak
        if not self.capped:
            self.capped = True
            self.report(f"model FLOP/s ({flop_rate(model_flops_per_s)}) exceed the measured {self.peak.key.dtype} "
                        f"matmul peak ({flop_rate(self.job_peak)}, re-probed with {self.peak.size}-matmuls): the "
                        f"probe under-measured, probably under load; MFU is shown as 100%. Delete "
                        f"{self.cache_file or default_cache_file()} on an idle machine to measure again")
        return 1.0
