"""The one train loop every phase shares: resume, step, log, evaluate, save, finish.

A phase (pretrain, sft, reward, ppo) adds only what differs — its models, its data, its loss —
by implementing ``Phase``. The loop owns the cadence (STYLE.md habit 9):

    setup → resume from the latest checkpoint, if any (``checkpointing``; under another layout,
    one evaluation of the resharded weights) →
    for each step: train_step → count non-finite steps → log → evaluate → save →
    final evaluation → every rank's fp32 master shards (``final/shards``, nothing gathered) →
    manifest (status complete, every shard file's hash as its rank computed it)
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from orchestrator.engine.peak import MFUMeter
from orchestrator.handoff.checkpoint import save_faults, step_tag
from orchestrator.phases import checkpointing, outputs
from orchestrator.phases.context import PhaseContext
from orchestrator.phases.tracking import MetricsLog


@dataclass
class StepOutcome:
    """What one optimizer step (or one PPO iteration) reports to the loop."""

    loss: float
    skipped: bool = False
    tokens: int = 0
    """Tokens processed this step over all ranks (for tokens/s and MFU)."""
    metrics: dict[str, float] = field(default_factory=dict)


class Phase(abc.ABC):
    """One job of the pipeline. Subclasses set ``name`` and ``head`` and fill ``trained``."""

    name: str = ""
    head: str = "lm"

    def __init__(self, ctx: PhaseContext) -> None:
        self.ctx = ctx
        self.trained: dict = {}
        """Runtimes the loop checkpoints and restores, by name (``model``; PPO: ``actor``, ``critic``)."""
        self.step = 0
        """The last optimizer step completed (what a failed manifest reports)."""

    @property
    def config(self):
        return self.ctx.config.phase(self.name)

    @abc.abstractmethod
    def setup(self, *, resuming: bool) -> None:
        """Build runtimes and data; load the parent's weights unless resuming from our own checkpoint."""

    @abc.abstractmethod
    def train_step(self, step: int) -> StepOutcome:
        """One optimizer step."""

    @abc.abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics (all ranks call it; values are already reduced)."""

    def flops_per_token(self) -> float:
        """Training FLOPs per token, for MFU (model FLOPs: no recompute)."""
        return self.ctx.config.model.flops_per_token(self.config.loop.seq_len)

    def state(self) -> dict:
        """Phase state for the checkpoint (e.g. the data position)."""
        return {}

    def restore(self, state: dict) -> None:
        """Inverse of ``state``."""

    def handoff_metrics(self, shards: Path) -> dict[str, float]:
        """Metrics of the weights handed on (``shards``: the committed ``final/shards``), measured
        on rank 0 for what ``evaluate`` cannot measure on the runtime (the reward model's pretrain_loss)."""
        return {}

    def exported_runtime(self):
        """The runtime whose weights the next phase receives."""
        return self.trained["model"]

    @property
    def layout(self):
        """The resolved layout this phase trains with (set by ``setup``)."""
        return self.exported_runtime().layout

    @abc.abstractmethod
    def tokenizer_info(self) -> dict:
        """``tokenizer_hash``, ``pad_id``, ``eos_id``, ``tokenizer_dir`` for the manifest."""


def run(phase: Phase) -> dict[str, float]:
    """Train ``phase`` to its configured number of steps and write its manifest; returns final metrics."""
    ctx = phase.ctx
    loop = phase.config.loop
    latest = checkpointing.latest_checkpoint(ctx)
    phase.setup(resuming=latest is not None)
    start, skipped, reshard_check = checkpointing.resume(phase, latest) if latest is not None else (0, 0, {})
    phase.step = start
    if latest is not None and ctx.is_main:  # the launch log says where an interrupted phase picked up
        print(f"{phase.name}: resuming from checkpoint {latest} at step {start} of {loop.steps}", flush=True)
    manifest = outputs.begin(ctx.run_dir, phase=phase.name, model=ctx.config.model.to_dict(), head=phase.head,
                             layout=phase.layout, tokenizer=phase.tokenizer_info()) if ctx.is_main else None
    log = MetricsLog(ctx.phase_dir, phase=phase.name, enabled=ctx.is_main, config=ctx.config.to_dict(),
                     resume_step=start)
    if reshard_check:   # the resharded weights on the held-out batches: the checkpoint's last eval, if it had one
        log.log("reshard", start, **reshard_check)
        if ctx.is_main:
            print(f"{phase.name}: resharded weights at step {start}: "
                  + ", ".join(f"{key}={value:.6g}" for key, value in reshard_check.items()), flush=True)
    try:
        _train(phase, log, start=start, skipped=skipped)
        final = phase.evaluate()
        weights = outputs.save_final_weights(phase.exported_runtime(), ctx.phase_dir, rank=ctx.rank,
                                             world=ctx.world)          # collective: each rank its own shards
        if ctx.is_main:
            final.update(phase.handoff_metrics(ctx.phase_dir / outputs.FINAL_WEIGHTS))
        log.log("final", loop.steps, **final)
        if ctx.is_main:
            outputs.complete(manifest, ctx.phase_dir, step=loop.steps, metrics=final, weights=weights)
        outputs.barrier()
    except BaseException as error:
        if ctx.is_main:
            outputs.fail(manifest, ctx.phase_dir, step=phase.step, error=error)
        raise
    finally:
        log.close()
    return final


def _train(phase: Phase, log: MetricsLog, *, start: int, skipped: int) -> None:
    ctx, loop = phase.ctx, phase.config.loop
    bad_in_row, skipped_total = 0, skipped
    meter = _mfu_meter(phase)
    progress = _progress(ctx, start=start, total=loop.steps, name=phase.name)
    window_tokens, window_start = 0, time.perf_counter()
    for step in range(start + 1, loop.steps + 1):
        outcome = phase.train_step(step)
        phase.step = step
        bad_in_row, skipped_total = _count_bad(outcome, step, bad_in_row, skipped_total, loop.max_bad_steps)
        window_tokens += outcome.tokens
        if step % loop.log_every == 0 or step == loop.steps:
            elapsed = time.perf_counter() - window_start
            rates = _rates(phase, window_tokens, elapsed, meter)
            log.log("train", step, loss=outcome.loss, skipped_steps=skipped_total, **rates, **outcome.metrics)
            _advance(progress, step, outcome.loss, rates)
            window_tokens, window_start = 0, time.perf_counter()
        if loop.eval_every and step % loop.eval_every == 0 and step != loop.steps:
            log.log("eval", step, **phase.evaluate())
        if loop.save_every and step % loop.save_every == 0 or step == loop.steps:
            with save_faults(ctx.checkpoint_root, step_tag(step)):   # a full disk: one message, nothing lost
                checkpointing.save_checkpoint(phase, step=step, skipped_total=skipped_total)
    if progress is not None:
        progress.close()


def _count_bad(outcome: StepOutcome, step: int, bad_in_row: int, skipped_total: int, limit: int) -> tuple[int, int]:
    """A non-finite loss skips its step (the runtime leaves the weights alone); ``limit`` in a row stop the run."""
    if not outcome.skipped:
        return 0, skipped_total
    bad_in_row += 1
    if bad_in_row >= limit:
        raise FloatingPointError(
            f"loss was not finite for {bad_in_row} steps in a row (steps {step - bad_in_row + 1}..{step}); "
            f"the run stops: lower optim.lr, raise optim.warmup_steps, or check the data; "
            f"loop.max_bad_steps={limit} sets how many are tolerated")
    return bad_in_row, skipped_total + 1


def _mfu_meter(phase: Phase) -> Optional[MFUMeter]:
    """Rank 0's MFU meter against the measured matmul peak of the runtime's device and precision
    (``engine.peak``; cached per machine). The other ranks wait, so a CPU probe has the cores to itself.

    CPU ranks of a node share one machine, so its peak counts once per node; GPU ranks each bring their own.
    """
    ctx, meter = phase.ctx, None
    if ctx.is_main:
        runtime = phase.exported_runtime()
        devices = ctx.world if runtime.device.type == "cuda" else ctx.config.cluster.nodes
        meter = MFUMeter(dtype=runtime.dtype, device=runtime.device, devices=devices,
                         report=lambda message: print(f"{phase.name}: {message}", flush=True))
        print(f"{phase.name}: {meter.describe()}", flush=True)
    outputs.barrier()
    return meter


def _rates(phase: Phase, tokens: int, seconds: float, meter: Optional[MFUMeter]) -> dict[str, float]:
    """tokens/s and model-FLOPs utilisation (Chowdhery et al. 2022, App. B), on rank 0 (the one that logs)."""
    if meter is None:
        return {}
    tokens_per_s = tokens / seconds if seconds > 0 else 0.0
    return {"tokens_per_s": tokens_per_s, "mfu": meter.mfu(phase.flops_per_token() * tokens_per_s)}


def _progress(ctx: PhaseContext, *, start: int, total: int, name: str):
    if not ctx.is_main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True, mininterval=1.0)


def _advance(progress, step: int, loss: float, rates: dict) -> None:
    if progress is None:
        return
    progress.n = step
    progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rates['tokens_per_s']:.0f}", mfu=f"{rates['mfu']:.1%}")
