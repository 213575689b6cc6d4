"""The planner's memory per rank against what the DeepSpeed engine actually holds, ZeRO 0-3.

    .venv/bin/python -m benchmarks.memory_accuracy --write BENCHMARKS.md

For the ``tiny`` and ``gpt-25m`` presets, ZeRO 0 on one rank and ZeRO 1, 2, 3 on one and two gloo
ranks, ``build_runtime`` builds the engine exactly as a phase does (on ``--device`` in
``--precision``: fp32 on the CPU by default) and trains two
steps. At the start of the second optimizer step — gradients reduced, Adam moments allocated: the
model states' peak — every tensor reachable from the engine is found (module parameters and their
ZeRO-3 partitions, ``.grad`` of the model and of the optimizer's fp32 partitions, optimizer state,
DeepSpeed's flat buffers and buckets; each storage counted once) and classed:

- params: storages of the module's parameters (ZeRO-3: their partitions ``ds_tensor``);
- grads: storages of any ``.grad`` the model or the optimizer holds (16-bit and fp32 partitions);
- optimizer: Adam's state and the optimizer's own parameters (DeepSpeed's fp32 master partitions);
- buffers: ZeRO's reduce buckets (even while gradients are views into them), the flattened copy a
  reduction is holding when it returns, and everything else the engine holds;
- activations: the saved-for-backward tensors of a micro-batch at their peak (``SavedTensorMeter``).

The planner's figure is ``estimate_memory`` for the same layout and precision (DeepSpeed accounting, a
``cpu`` cluster of as many ranks, or ``h100-80g`` for ``--device cuda``), whose buffers include the
preset's framework reserve (0.5 GiB for ``cpu``); that reserve is left out of the comparison (nothing
in the engine corresponds to it).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from benchmarks.common import (CPU_FP32, SavedTensorMeter, Target, add_target_arguments, machine_info,
                               markdown_table, parse_target, run_ranks, today, write_section)

HEADING = "## Planner memory vs measured (ZeRO 0-3)"
SHAPES = {"tiny": (128, 4), "gpt-25m": (256, 4)}  # preset -> (sequence, micro-batch)
PARTS = ("params", "grads", "optimizer", "buffers", "activations")
MiB = 2**20


# --- what the engine holds -------------------------------------------------------------------------
def reachable_tensors(root: Any, *, max_depth: int = 10) -> dict[int, tuple[int, str]]:
    """Storage address -> (bytes, first path) of every tensor reachable from ``root`` through
    attributes of torch / deepspeed / orchestrator objects, dicts, lists and tuples, including each
    tensor's ``.grad`` and ZeRO-3 ``.ds_tensor``. Each storage once, however many tensors view it."""
    import torch

    found: dict[int, tuple[int, str]] = {}
    visited: dict[int, Any] = {}   # id -> object: holding it keeps the id from being reused mid-walk
    stack: list[tuple[Any, str, int]] = [(root, type(root).__name__, 0)]
    while stack:
        obj, path, depth = stack.pop()
        if id(obj) in visited or depth > max_depth:
            continue
        visited[id(obj)] = obj
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.nbytes():
                found.setdefault(storage.data_ptr(), (storage.nbytes(), path))
            stack += [(getattr(obj, name), f"{path}.{name}", depth + 1) for name in ("grad", "ds_tensor")
                      if isinstance(getattr(obj, name, None), torch.Tensor)]
        elif isinstance(obj, dict):
            stack += [(value, f"{path}[{key if isinstance(key, (str, int)) else type(key).__name__}]", depth + 1)
                      for key, value in obj.items()]
            stack += [(key, f"{path}[key]", depth + 1) for key in obj if isinstance(key, torch.Tensor)]
        elif isinstance(obj, (list, tuple, set)):
            stack += [(value, f"{path}[{i}]", depth + 1) for i, value in enumerate(obj)]
        elif (type(obj).__module__ or "").startswith(("torch", "deepspeed", "orchestrator")) and \
                hasattr(obj, "__dict__"):
            stack += [(value, f"{path}.{name}", depth + 1) for name, value in vars(obj).items()]
    return found


def _storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if t is not None and t.untyped_storage().nbytes()}


def gradient_storages(engine, optimizer) -> set[int]:
    """Every ``.grad`` of the model and of the optimizer's (fp32 master) parameters, and what
    DeepSpeed's ZeRO optimizer keeps under a gradient attribute (``averaged_gradients``,
    ``grads_in_partition``, ``grad_partitions_flat_buffer`` …); reduce buckets (``ipg_*``) are buffers."""
    params = list(engine.module.parameters()) + [p for group in optimizer.param_groups for p in group["params"]]
    keys = _storages([p.grad for p in params])
    zero_optimizer = engine.optimizer if engine.optimizer is not optimizer else None
    for name, value in vars(zero_optimizer).items() if zero_optimizer is not None else ():
        if "grad" in name.lower() and "ipg" not in name.lower():
            keys |= set(reachable_tensors(value))
    return keys


def reduce_bucket_storages(zero_optimizer) -> dict[int, int]:
    """Storage -> bytes of a ZeRO optimizer's contiguous reduce buckets (a list of buffers under
    ZeRO-1/2, one tensor under ZeRO-3); none for anything else."""
    buckets = getattr(zero_optimizer, "ipg_buckets", None) or {}
    buffers = [bucket.buffer for bucket in buckets.values()]
    tensors = [t for b in buffers for t in (b if isinstance(b, list) else [b]) if hasattr(t, "untyped_storage")]
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def classify(engine, optimizer, *, transient: Any = ()) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes per part of everything ``engine`` holds, and the buffers by path. ``transient``: tensors
    a reduction is holding right now (its flattened copy) that nothing in the engine refers to."""
    params = list(engine.module.parameters())
    param_keys = _storages([p.data for p in params] + [getattr(p, "ds_tensor", None) for p in params])
    grad_keys = gradient_storages(engine, optimizer)
    # ZeRO steps one parameter group at a time with only that group in param_groups: Adam's state
    # keys name the optimizer's (fp32 master) parameters of every group
    master = [p for group in optimizer.param_groups for p in group["params"]] + list(optimizer.state)
    state = [v for per_param in optimizer.state.values() for v in per_param.values() if hasattr(v, "untyped_storage")]
    optimizer_keys = _storages(state + master)
    bucket_keys = set(reduce_bucket_storages(engine.optimizer))   # buffers even while gradients view them
    totals, buffers = dict.fromkeys(PARTS[:4], 0), {}
    found = reachable_tensors(engine)
    for key, (nbytes, path) in reachable_tensors(transient).items():
        found.setdefault(key, (nbytes, "flattened copy of the bucket being reduced (transient)"))
    for key, (nbytes, path) in found.items():
        part = ("buffers" if key in bucket_keys else "params" if key in param_keys else "grads" if key in grad_keys else
                "optimizer" if key in optimizer_keys else "buffers")
        totals[part] += nbytes
        if part == "buffers":
            name = "reduce bucket (optimizer.ipg_buckets[dtype].buffer)" if key in bucket_keys else \
                re.sub(r"\[\d+\]", "[i]", path)
            buffers[name] = buffers.get(name, 0) + nbytes
    return totals, buffers


def _bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    live = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}
    return sum(live.values())


class PeakTracker:
    """Each part's largest figure over one train step, looked at where each part peaks:

    - params at every module boundary of the forward (ZeRO-3 gathers and prefetches there);
    - grads after each parameter's gradient is accumulated (ZeRO-1 keeps them all until the end of
      backward), and everything again when ``engine.backward`` returns (after ZeRO's reduction);
    - everything each time the optimizer steps (ZeRO steps one parameter group / sub-group at a time);
    - everything, plus the flattened copy being reduced, when a gradient reduction returns (the
      engine's and ZeRO-1/2's ``allreduce_bucket``, ZeRO-3's ``reduce_scatter_coalesced``).
    """

    def __init__(self, engine, optimizer):
        import deepspeed.runtime.zero.stage3 as stage3

        self.engine, self.optimizer = engine, optimizer
        self.zero_optimizer = engine.optimizer if engine.optimizer is not optimizer else None
        self.params = list(engine.module.parameters())
        self.peak = dict.fromkeys(PARTS[:4], 0)
        self.buffer_paths: dict[str, int] = {}
        self.handles = [hook(self._look_at_params) for m in engine.module.modules()
                        for hook in (m.register_forward_pre_hook, m.register_forward_hook)]
        self.handles += [p.register_post_accumulate_grad_hook(self._look_at_grads) for p in self.params
                         if p.requires_grad]
        self._wrap("backward", engine)
        self._wrap("step", optimizer, before=True)
        self._wrap("allreduce_bucket", engine, transient=True)
        if self.zero_optimizer is not None and hasattr(self.zero_optimizer, "allreduce_bucket"):
            self._wrap("allreduce_bucket", self.zero_optimizer, transient=True)
        self._wrap("reduce_scatter_coalesced", stage3, transient=True)

    def _wrap(self, name: str, owner, *, before: bool = False, transient: bool = False) -> None:
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            if before:
                self._look_at_everything()
            result = original(*args, **kwargs)
            if not before:
                self._look_at_everything(transient=result if transient else ())
            return result

        restore = _Restore(owner, name, original) if name in vars(owner) else _Unwrap(owner, name)
        setattr(owner, name, wrapped)
        self.handles.append(restore)

    def _look_at_params(self, *_) -> None:
        tensors = [p.data for p in self.params] + [getattr(p, "ds_tensor", None) for p in self.params]
        self.peak["params"] = max(self.peak["params"], _bytes(tensors))

    def _look_at_grads(self, _param) -> None:
        """Gradients by their own bytes. ZeRO's reduce buckets are buffers, whole, even while
        gradients are views into them (ZeRO-1 allocates its bucket at the first gradient and fills
        it after the backward, ZeRO-2/3 copy each gradient in as it arrives); of any other flat
        storage behind the gradients, the bytes no gradient views count as buffers too."""
        buckets = reduce_bucket_storages(self.zero_optimizer)
        storages: dict[int, tuple[int, dict]] = {}
        for grad in (p.grad for p in self.params if p.grad is not None):
            storage = grad.untyped_storage()
            if storage.data_ptr() in buckets:
                continue
            views = storages.setdefault(storage.data_ptr(), (storage.nbytes(), {}))[1]
            views[(grad.storage_offset(), grad.numel())] = grad.numel() * grad.element_size()
        used = sum(sum(views.values()) for _, views in storages.values())
        self.peak["grads"] = max(self.peak["grads"], used)
        reserve = sum(n for n, _ in storages.values()) - used
        if reserve + sum(buckets.values()) > self.peak["buffers"]:
            self.peak["buffers"] = reserve + sum(buckets.values())
            self.buffer_paths = {"reduce bucket (ipg_buckets[dtype].buffer), during the backward": sum(buckets.values()),
                                 "flat storage behind the gradients not viewed by any": reserve}

    def _look_at_everything(self, transient: Any = ()) -> None:
        totals, buffers = classify(self.engine, self.optimizer, transient=transient)
        if totals["buffers"] > self.peak["buffers"]:
            self.buffer_paths = buffers
        for part, value in totals.items():
            self.peak[part] = max(self.peak[part], value)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _Unwrap:
    """Undo an instance-level wrapper (the class's method shows through again)."""

    def __init__(self, owner, name: str):
        self.owner, self.name = owner, name

    def remove(self) -> None:
        delattr(self.owner, self.name)


class _Restore:
    """Undo a wrapper of an attribute the owner itself held (a module's function)."""

    def __init__(self, owner, name: str, original):
        self.owner, self.name, self.original = owner, name, original

    def remove(self) -> None:
        setattr(self.owner, self.name, self.original)


def attention_is_fused(preset: str, *, device: str = "cpu", precision: str = "fp32") -> bool:
    """Whether SDPA runs a fused kernel for this model in training on ``device`` in ``precision`` (no s × s
    scores kept: CPU's flash kernel without dropout, CUDA's flash / memory-efficient kernels),
    read from the autograd graph of one forward."""
    import torch

    from orchestrator.config.model import get_model
    from orchestrator.model.gpt import GPT

    config = get_model(preset)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = GPT(config).train().to(device=device, dtype=dtype)   # uninitialised: only the graph's kernels matter
    ids = torch.zeros(1, min(16, config.ctx), dtype=torch.long, device=device)
    seen: dict[int, object] = {}   # holds the node wrappers, so their ids are not reused while walking
    stack = [model(ids).logits.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        stack += [child for child, _ in node.next_functions]
    return any("Flash" in node.name() or "Efficient" in node.name() for node in seen.values())


def measure_case(preset: str, zero: int, *, device: str = "cpu", precision: str = "fp32") -> dict:
    """This rank's peak bytes per part for ``preset`` under ZeRO ``zero`` on ``device`` in
    ``precision`` (all ranks call it)."""
    import torch

    from orchestrator.config.model import get_model
    from orchestrator.config.run import OptimConfig
    from orchestrator.engine.build import build_runtime
    from orchestrator.plan.layout import Layout

    seq, micro_batch = SHAPES[preset]
    config = get_model(preset)
    runtime = build_runtime(config, Layout(zero_stage=zero, micro_batch=micro_batch, grad_accum=1),
                            OptimConfig(lr=1e-4, warmup_steps=0), total_steps=10, seed=0, precision=precision,
                            device_type=device)
    ids = torch.randint(0, config.vocab, (micro_batch, seq + 1), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": ids[:, :-1], "labels": ids[:, 1:]}]
    runtime.train_step(batches)                      # step 1 allocates Adam's moments
    engine = runtime.engine
    tracker = PeakTracker(engine, engine.client_optimizer if hasattr(engine, "client_optimizer") else engine.optimizer)
    meter = SavedTensorMeter(exclude=list(engine.module.parameters()))
    try:
        with meter.hooks():
            runtime.train_step(batches)
    finally:
        tracker.remove()
    result = {**tracker.peak, "activations": meter.peak_bytes, "buffer_paths": tracker.buffer_paths}
    del runtime, engine, tracker
    gc.collect()
    return result


def memory_worker(cases: list[tuple[str, int]], device: str = "cpu", precision: str = "fp32") -> list[dict]:
    """Every case on this rank; rank 0 returns each case's largest figure per part over the ranks."""
    import torch.distributed as dist

    results = []
    for preset, zero in cases:
        mine = measure_case(preset, zero, device=device, precision=precision)
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        merged = {part: max(rank[part] for rank in gathered) for part in PARTS}
        fullest = max(gathered, key=lambda rank: rank["buffers"])
        results.append({"preset": preset, "zero": zero, "world": dist.get_world_size(), **merged,
                        "buffer_paths": fullest["buffer_paths"]})
    return results


# --- the planner -------------------------------------------------------------------------------
def planned(preset: str, zero: int, world: int, *, fused_attention: bool, device: str = "cpu",
            precision: str = "fp32") -> dict[str, float]:
    """``estimate_memory`` for the same job, layout and precision, without the device preset's framework
    reserve (``cpu``, or ``h100-80g`` for a cuda run: the planner's dropout masks follow the device kind).

    When SDPA runs fused there are no s × s attention scores to keep: the activations are then
    the planner's selective-recompute figure, which drops exactly Korthikanti's 5·a·s²·b core."""
    from orchestrator.config.cluster import GiB, make_cluster
    from orchestrator.config.model import get_model
    from orchestrator.plan.job import BatchTarget, Job
    from orchestrator.plan.layout import Layout
    from orchestrator.plan.memory import estimate_memory

    seq, micro_batch = SHAPES[preset]
    cluster = make_cluster(gpu="cpu" if device == "cpu" else "h100-80g", gpus=world)
    job = Job(model=get_model(preset), cluster=cluster, seq=seq, batch=BatchTarget(micro_batch * world),
              precision=precision)
    layout = Layout(zero_stage=zero, micro_batch=micro_batch, grad_accum=1, dp=world)
    b = estimate_memory(layout, job).breakdown
    activations = b.activations
    if fused_attention:
        activations = estimate_memory(dataclasses.replace(layout, recompute="selective"), job).breakdown.activations
    return dict(params=b.params, grads=b.grads, optimizer=b.optimizer,
                buffers=b.buffers - cluster.device.reserved_gib * GiB, activations=activations)


def ratio(measured: float, predicted: float) -> str:
    """measured / predicted; "—" when both are nothing (under 0.01 MiB: flags and counters)."""
    if predicted == 0:
        return "—" if measured < MiB / 100 else "∞"
    return f"{measured / predicted:.3f}"


FINDINGS = """Where the two disagree, and why (read off the engine's tensors, not guessed):

- **Activations** follow Korthikanti et al. once the kernel is known. `{fused}` has no dropout, so PyTorch's
  fused SDPA kernel keeps no s × s scores: the applicable figure is the planner's selective-recompute one (it
  drops exactly the 5·a·s²·b core); the planner still counts the formula's dropout masks, which a model without
  dropout does not keep (6% under). `{unfused}` has dropout, which sends CPU attention down the
  unfused path (the s × s scores are kept, as the formula assumes), and CPU dropout keeps float32 masks (4 bytes
  where CUDA's bool masks are 1), which the planner counts on a `cpu` device (`dropout_mask_bytes`).
- **Buffers** are the ZeRO buckets `build_runtime` now writes from the plan (`planned_bucket_elements`: the
  rank's parameter count here, at most 2e8): ZeRO-1/2's contiguous reduce bucket, allocated at the first
  gradient of the backward, plus on 2 ranks the flattened copy `average_tensor` reduces; ZeRO-3's reduce bucket
  plus the interleaved copy its `reduce_scatter_coalesced` makes (transient, caught when it returns).
  ZeRO-0 on one rank has none: `build_runtime` turns the all-reduce off.
- **ZeRO-1 gradients** are the larger of the backward's full gradients and the step's partition plus its fp32
  copy: DeepSpeed moves the full gradients into the bucket and drops them before the step.
- **ZeRO-1/2 on 2 ranks, `tiny`**: DeepSpeed's gradient partition (`grads_in_partition`) holds the whole
  gradient of every parameter the partition's edges cut (`params_in_partition` counts full tensors). tiny's word
  embedding is 55% of the model, so rank 1's partition holds all of it: 4Ψ bytes instead of 4Ψ/2 (gpt-25m's
  cut adds 0.7 MiB). The planner does not count it: it depends on the flat parameter order, and it is at
  most the two tensors cut by the partition's edges.
- **ZeRO-3 parameters**: the partition plus what is gathered, min(Ψ, stage3_max_live_parameters + the largest
  layer) (the live cap, prefetch bucket and reuse distance are the bucket, here the whole model, so it is all
  gathered). On one rank the gathered weights alias the partition, so nothing is added.
- **ZeRO-3 gradients**: the fp32 partition plus the larger of a gathered layer's gradient (before it is copied
  into the bucket) and the fp32 gradient of the sub-group being stepped, which the step flattens beside the
  partition (`sub_group_size` 1e9: one sub-group here). DeepSpeed's hook moves each gradient into the bucket
  before the benchmark's hook runs, so the measured figure is the step's: `tiny`, whose embedding gradient
  is larger than half the model, measures a few per cent under on 2 ranks.
"""


def report(rows: list[dict], *, command: str, target: Target = CPU_FP32) -> str:
    table, notes = [], []
    fused = {preset: attention_is_fused(preset, device=target.device, precision=target.precision)
             for preset in {r["preset"] for r in rows}}
    for r in rows:
        plan = planned(r["preset"], r["zero"], r["world"], fused_attention=fused[r["preset"]], device=target.device,
                       precision=target.precision)
        states = sum(r[p] for p in PARTS[:3]), sum(plan[p] for p in PARTS[:3])
        cells = [f"{r[p] / MiB:.2f} / {plan[p] / MiB:.2f} ({ratio(r[p], plan[p])})" for p in PARTS]
        table.append([r["preset"], r["zero"], r["world"], *cells,
                      f"{states[0] / MiB:.2f} / {states[1] / MiB:.2f} ({ratio(*states)})"])
        largest = [(path, size) for path, size in sorted(r["buffer_paths"].items(), key=lambda item: -item[1])
                   if size >= MiB][:2]
        if largest:
            notes.append(f"- {r['preset']} ZeRO-{r['zero']} on {r['world']} rank(s): "
                         + ", ".join(f"`{path}` {size / MiB:.1f} MiB" for path, size in largest))
    kinds = {True: [p for p, f in fused.items() if f], False: [p for p, f in fused.items() if not f]}
    return "\n".join([
        target.heading(HEADING), "",
        "Per rank (the largest over ranks), MiB measured / planned (ratio). `build_runtime` as the phases use it "
        f"({target.device}, {target.precision}, the planner's buckets); the planner's `estimate_memory` with "
        f"`precision=\"{target.precision}\"` and the DeepSpeed accounting, without the device preset's "
        "framework reserve. "
        + ", ".join(f"`{name}`: sequence {seq}, micro-batch {mb}" for name, (seq, mb) in SHAPES.items())
        + f". Attention kernel: fused for {', '.join(kinds[True]) or 'none'}, unfused for "
          f"{', '.join(kinds[False]) or 'none'}.", "",
        "```bash", command, "```", "",
        f"Machine: {machine_info().describe()}. Date: {today()}.", "",
        markdown_table(["model", "ZeRO", "ranks", *PARTS, "params + grads + optimizer"], table), "",
        FINDINGS.format(fused=", ".join(kinds[True]) or "-", unfused=", ".join(kinds[False]) or "-"),
        "Buffers of 1 MiB or more, by where the engine holds them:", "", *(notes or ["- none"]), ""])


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, Target]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    add_target_arguments(parser)
    parser.add_argument("--write", help="replace this benchmark's section of that Markdown file")
    args = parser.parse_args(argv)
    return args, parse_target(parser, args, ranks=2)


def launches(args: argparse.Namespace, target: Target) -> list[tuple[int, tuple]]:
    """(ranks, ``memory_worker`` arguments) of each job: every case on one rank, then ZeRO ≥ 1 on two."""
    one = [(m, z) for m in args.models for z in (0, 1, 2, 3)]
    two = [(m, z) for m in args.models for z in (1, 2, 3)]
    return [(1, (one, target.device, target.precision)), (2, (two, target.device, target.precision))]


def main() -> None:
    args, target = parse_args()
    rows = [row for world, worker_args in launches(args, target)
            for row in run_ranks(memory_worker, world=world, args=worker_args)]
    command = (f".venv/bin/python -m benchmarks.memory_accuracy --models {' '.join(args.models)} {target.flags}"
               + (f" --write {args.write}" if args.write else ""))
    section = report(rows, command=command, target=target)
    print(section)
    if args.write:
        write_section(Path(args.write), section)


if __name__ == "__main__":
    main()
