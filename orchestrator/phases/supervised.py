"""What pretrain, SFT and the reward model have in common: one runtime, batches drawn at a
stream position, and the runtime's ``train_step`` with the phase's loss.

A subclass says how to build its runtime's starting weights (fresh, or its parent's), where its
micro-batches come from (``micro_batch_at``) and how it evaluates; this class does the rest.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Callable, Optional

from orchestrator.engine.build import build_runtime
from orchestrator.phases.context import RunTokenizer
from orchestrator.phases.loop import Phase, StepOutcome


class SupervisedPhase(Phase):
    """One trained model; ``position`` counts examples (or blocks) consumed by all DP ranks."""

    loss_fn: Optional[Callable] = None
    """None: the runtime's LM loss on ``input_ids``/``labels``; else ``loss_fn(forward, batch)``."""

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.position = 0
        self.tokenizer: Optional[RunTokenizer] = None
        """The run's tokenizer (``context.load_run_tokenizer``), set by ``setup``."""

    # --- what a subclass provides -------------------------------------------------------------
    @abc.abstractmethod
    def micro_batch_at(self, position: int, *, micro_batch: int, dp_rank: int, dp_size: int) -> dict:
        """This DP rank's micro-batch at stream ``position``."""

    # --- shared -------------------------------------------------------------------------------
    def build(self, *, parent: Optional[Path] = None, parent_head: str = "lm") -> None:
        """The phase's runtime under its configured layout, started from the ``parent``'s sharded
        weights (each rank reads its own regions; None: a fresh init, or a resume). Collective."""
        cfg = self.ctx.config
        runtime = build_runtime(cfg.model, self.config.layout, self.config.optim, total_steps=self.config.loop.steps,
                                head=self.head, seed=cfg.seed, ds_config=self.ctx.ds_config(),
                                device_type=cfg.cluster.device_type, timeout_minutes=cfg.launch.timeout_minutes)
        if parent is not None:
            runtime.load_weights_sharded(parent, parent_head=parent_head)
        self.trained = {"model": runtime}

    @property
    def runtime(self):
        return self.trained["model"]

    def train_step(self, step: int) -> StepOutcome:
        layout = self.runtime.layout
        micro_batches = []
        for _ in range(layout.grad_accum):
            micro_batches.append(self.micro_batch_at(self.position, micro_batch=layout.micro_batch,
                                                     dp_rank=self.runtime.state.dp_rank, dp_size=layout.dp))
            self.position += layout.micro_batch * layout.dp
        result = self.runtime.train_step(micro_batches, loss_fn=self.loss_fn)
        return StepOutcome(loss=result.loss, skipped=result.skipped, tokens=result.tokens,
                           metrics={"lr": result.lr, "grad_norm": result.grad_norm, **result.metrics})

    def state(self) -> dict:
        return {"position": self.position}

    def restore(self, state: dict) -> None:
        self.position = int(state["position"])

    def tokenizer_info(self) -> dict:
        return self.tokenizer.manifest_fields()
