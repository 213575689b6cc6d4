"""What the benchmark scripts share: the machine they ran on, their BENCHMARKS.md sections,
Markdown tables, and local torch.distributed ranks started from one script.

Each benchmark prints its section and, with ``--write BENCHMARKS.md``, replaces only its own
``## `` section of that file (or appends it), so ``make bench`` regenerates every section in place.
Each that trains or generates takes ``--device`` and ``--precision`` (``add_target_arguments``) and
runs every contender on that one device in that one precision.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from orchestrator.config.cluster import cpu_model
from orchestrator.engine.launch.ports import free_port  # noqa: F401  (re-exported for the benchmarks)


DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Target:
    """Where (``cpu``, or ``cuda``: one GPU per rank) and in what precision every contender runs."""

    device: str
    precision: str

    @property
    def flags(self) -> str:
        """The command-line flags that choose this target, for a section's command line."""
        return f"--device {self.device} --precision {self.precision}"

    def heading(self, heading: str) -> str:
        """A section's heading for this target: as is for cpu fp32 (the sections BENCHMARKS.md has),
        else its own, so ``--write`` for another target adds a section beside it instead of replacing it."""
        if (self.device, self.precision) == ("cpu", "fp32"):     # CPU_FP32
            return heading
        return f"{heading} ({self.device}, {self.precision})"


CPU_FP32 = Target("cpu", "fp32")
"""The default target, and the one the sections in BENCHMARKS.md were measured on."""


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision``: every contender of the benchmark runs on the one chosen."""
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where every contender runs: cpu, or cuda (one GPU per rank) (default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="what every contender computes in (default: %(default)s)")


def parse_target(parser: argparse.ArgumentParser, args: argparse.Namespace, *, ranks: int = 1) -> Target:
    """The parsed target, refused (``parser.error``: exit 2, before any process starts) when it asks
    for cuda and this process sees fewer than ``ranks`` GPUs (``visible_gpus``)."""
    if args.device == "cuda":
        visible = visible_gpus()
        if visible == 0:
            parser.error("--device cuda, but torch sees no GPU (torch.cuda.is_available() is False): run on a "
                         "machine with a CUDA GPU and a CUDA build of torch, or use --device cpu")
        if ranks > visible:
            parser.error(f"--device cuda runs one rank per GPU: {ranks} ranks asked for but {visible} GPU(s) "
                         f"visible; ask for at most {visible} ranks, or use --device cpu")
    return Target(device=args.device, precision=args.precision)


def visible_gpus() -> int:
    """CUDA devices this process sees (0 on a CPU build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class MachineInfo:
    """The machine and software a figure was measured on."""

    cpu_model: str
    cores: int
    ram_gib: float
    python: str
    torch: str
    deepspeed: str
    transformers: str
    load_average: tuple[float, float, float]
    """1, 5 and 15 minute load averages when the info was taken (other jobs share the cores)."""

    def describe(self) -> str:
        one, five, fifteen = self.load_average
        return (f"{self.cores}-core {self.cpu_model}, {self.ram_gib:.0f} GiB RAM; Python {self.python}, "
                f"torch {self.torch}, deepspeed {self.deepspeed}, transformers {self.transformers}; "
                f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min)")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> MachineInfo:
    """This machine, read from the OS and the installed packages (nothing is imported)."""
    try:
        ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        ram_gib = float("nan")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return MachineInfo(cpu_model=cpu_model(), cores=os.cpu_count() or 1, ram_gib=ram_gib,
                       python=platform.python_version(), torch=_version("torch"), deepspeed=_version("deepspeed"),
                       transformers=_version("transformers"), load_average=tuple(load))


def today() -> str:
    return datetime.date.today().isoformat()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are formatted with ``str``."""
    widths = len(header)
    for row in rows:
        if len(row) != widths:
            raise ValueError(f"table row {list(row)} has {len(row)} cells, the header {widths}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * widths]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(text: str, section: str) -> str:
    """``text`` (a Markdown file) with the ``## `` section named by ``section``'s first line
    replaced by ``section`` — from its heading to the next ``## `` heading — or appended."""
    heading = section.splitlines()[0] if section.strip() else ""
    if not heading.startswith("## "):
        raise ValueError(f"a section starts with its '## ' heading, got {heading!r}")
    lines = text.splitlines()
    body = section.rstrip("\n").splitlines()
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = body + ([""] if end < len(lines) else [])
        return "\n".join(lines).rstrip("\n") + "\n"
    return text.rstrip("\n") + "\n\n" + "\n".join(body) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace (or append) ``section`` in the Markdown file at ``path``; nothing else changes."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    path.write_text(replace_section(text, section))


def _rank_entry(local_rank: int, target: Callable[..., Any], world: int, port: int, threads: int, out: str,
                args: tuple) -> None:
    """One spawned rank: the rendezvous variables torchrun would set, then ``target(*args)``."""
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    try:
        result = target(*args)
        if local_rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(target: Callable[..., Any], *, world: int, args: tuple = (), threads: int = 1) -> Any:
    """Run ``target(*args)`` on ``world`` local processes (one job: gloo on CPU, NCCL on GPUs) and
    return rank 0's result, which must be JSON-serialisable. ``target`` must be a module-level
    function. A rank that raises fails the whole call."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        mp.start_processes(_rank_entry, args=(target, world, free_port(), threads, str(out), args), nprocs=world,
                           join=True, start_method="spawn")
        return json.loads(out.read_text())


class _Held:
    """A tensor autograd saved for backward, counted by a ``SavedTensorMeter`` until the graph frees it."""

    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor, meter: "SavedTensorMeter", key: int):
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self):
        self.meter._release(self.key)


class SavedTensorMeter:
    """Bytes of the tensors autograd keeps for backward — the activations of Korthikanti et al.
    2022 — live now and at their peak, with no CUDA allocator needed.

    Inside ``with meter.hooks():`` every tensor an op saves for backward is wrapped in a holder
    (``torch.autograd.graph.saved_tensors_hooks``); the holder dies when its graph is freed (after
    backward). A storage is counted once however many saved tensors view it. Parameters are not
    activations: ``nn.Parameter`` objects and the storages of ``exclude`` are skipped.
    """

    def __init__(self, exclude=()):
        self.excluded = {tensor.untyped_storage().data_ptr() for tensor in exclude}
        self.live_bytes = 0
        self.peak_bytes = 0
        self._storages: dict[int, list[int]] = {}  # storage address -> [saved tensors holding it, bytes]

    def hooks(self):
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes

    def _pack(self, tensor):
        import torch

        if isinstance(tensor, torch.nn.Parameter):
            return tensor
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self.excluded:
            return tensor
        entry = self._storages.setdefault(key, [0, storage.nbytes()])
        if entry[0] == 0:
            self.live_bytes += entry[1]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[0] += 1
        return _Held(tensor, self, key)

    @staticmethod
    def _unpack(held):
        return held.tensor if isinstance(held, _Held) else held

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live_bytes -= entry[1]
            del self._storages[key]
