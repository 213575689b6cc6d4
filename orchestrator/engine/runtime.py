"""The ``Runtime``: one rank's DeepSpeed engine with the GPT on it, and the step the phases call.

Made by ``orchestrator.engine.build.build_runtime``. The train loop sees the same five calls
under every layout: ``train_step``, ``eval_loss``, ``save`` / ``load``, and
``save_weights_sharded`` / ``load_weights_sharded`` for handing weights to another layout (each
rank writes and reads only its own shards; ``consolidated_state_dict`` gathers a whole model onto
rank 0 and is kept for single-process tools and tests, never a phase's path).

Batches are dicts of tensors: ``input_ids`` (B, T) and optionally ``labels`` (B, T, already
shifted: labels[t] is the target of position t, -100 = not scored; see ``model/loss.py``),
``attention_mask`` and ``position_ids`` (PP = 1 only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from orchestrator.config.model import GPTConfig
from orchestrator.config.run import OptimConfig
from orchestrator.engine.consolidate import (check_plain_state, gather_plain_state, load_plain_state_sharded,
                                             local_shards)
from orchestrator.engine.master import fp32_master, set_fp32_masters, trains_in_16_bit
from orchestrator.engine.optim import StepGuard, learning_rate
from orchestrator.engine.parallel import ParallelState
from orchestrator.engine.transfer import to_device
from orchestrator.model.gpt import GPT, GPTOutput
from orchestrator.model.loss import lm_loss, next_token_labels

Forward = Callable[..., GPTOutput]
LossFn = Callable[[Forward, dict[str, Tensor]], tuple[Tensor, dict[str, Any]]]
"""``loss_fn(forward, batch) -> (loss, metrics)``: ``forward(input_ids, **kwargs)`` runs the
model (through the engine) and returns a ``GPTOutput``; metrics are scalars to average."""


@dataclass(frozen=True)
class StepResult:
    """One optimizer step, as every rank reports it."""

    loss: float
    """Mean over micro-batches and data-parallel ranks."""
    grad_norm: float
    """Global gradient norm before clipping (NaN when the step was skipped)."""
    lr: float
    skipped: bool
    """A non-finite loss (any rank) or gradient: nothing was updated."""
    tokens: int
    """Input tokens of this step over all data-parallel ranks (positions where a given
    ``attention_mask`` is 0 are not counted)."""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Runtime:
    engine: Any
    """The DeepSpeed engine (a ``PipelineEngine`` when pp > 1)."""
    state: ParallelState
    model_config: GPTConfig
    head: str
    optim: OptimConfig
    total_steps: int
    guard: StepGuard
    dtype: torch.dtype
    steps_done: int = 0
    """Optimizer steps applied so far (skipped steps do not advance the LR schedule)."""

    @property
    def layout(self):
        return self.state.layout

    @property
    def device(self) -> torch.device:
        return self.state.device

    @property
    def forward_group(self):
        """The group every forward of this model is a collective over, beyond its TP group: under
        ZeRO-3 with dp > 1 each layer all-gathers its parameters from the data-parallel ranks, so
        they must all run the same forwards (sampling and evaluation keep them in lockstep). None
        when each replica may run forwards on its own."""
        return self.state.dp_group if self.layout.zero_stage == 3 and self.layout.dp > 1 else None

    # --- training ---------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict[str, Tensor]], loss_fn: Optional[LossFn] = None) -> StepResult:
        """One optimizer step over this data-parallel rank's ``layout.grad_accum`` micro-batches."""
        self._check_micro_batches(micro_batches, custom_loss=loss_fn is not None)
        lr = self._apply_learning_rate()
        self.guard.reset()
        if self.layout.pp > 1:
            loss, metrics = self.engine.train_batch(data_iter=self._pipeline_data(micro_batches)), {}
        else:
            loss, metrics = self._train_micro_batches(micro_batches, loss_fn or self.lm_loss)
        skipped = bool(self.guard.decision) or not self.engine.was_step_applied()
        if not skipped:
            self.steps_done += 1
        mean_loss, tokens, metrics = self._reduce_over_dp(loss, micro_batches, metrics)
        return StepResult(loss=mean_loss, grad_norm=self._grad_norm(skipped), lr=lr, skipped=skipped,
                          tokens=tokens, metrics=metrics)

    def _train_micro_batches(self, micro_batches, loss_fn: LossFn) -> tuple[Tensor, dict[str, Tensor]]:
        losses, sums = [], {}
        for batch in micro_batches:
            loss, metrics = loss_fn(self._forward, self._on_device(batch))
            self.guard.observe(loss)
            self.engine.backward(loss)
            self.engine.step()          # DeepSpeed steps the optimizer after the last micro-batch
            losses.append(loss.detach().float())
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + torch.as_tensor(value, dtype=torch.float32, device=self.device)
        return torch.stack(losses).mean(), {key: total / len(micro_batches) for key, total in sums.items()}

    def lm_loss(self, forward: Forward, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The default loss: next-token cross-entropy plus the MoE load-balancing loss."""
        if self.head != "lm":
            raise ValueError(f"the default LM loss needs head='lm', this model has head={self.head!r}: pass a loss_fn")
        extra = {key: batch[key] for key in ("attention_mask", "position_ids") if key in batch}
        output = forward(batch["input_ids"], parallel_logits=self.layout.tp > 1, **extra)
        labels = batch["labels"] if "labels" in batch else next_token_labels(batch["input_ids"])
        token_loss = lm_loss(output.logits, labels, vocab_parallel=self.layout.tp > 1)
        return token_loss + output.aux_loss, {"lm_loss": token_loss.detach(), "aux_loss": output.aux_loss.detach()}

    def pipeline_loss(self, outputs: Tensor | tuple[Tensor, Tensor], labels: Tensor) -> Tensor:
        """The last pipeline stage's loss (DeepSpeed calls it with the stage output and labels):
        LM loss, plus in training the MoE aux loss the stages carried (``model.pipeline``)."""
        logits, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
        if self.layout.tp > 1 and not torch.is_grad_enabled():
            logits = logits.clone()     # eval: keep the logits intact (Megatron's cross-entropy overwrites them)
        loss = lm_loss(logits, labels, vocab_parallel=self.layout.tp > 1)
        if aux is not None and torch.is_grad_enabled():
            loss = loss + aux.sum()
        self.guard.observe(loss)
        return loss

    def _forward(self, input_ids: Tensor, **kwargs) -> GPTOutput:
        return self.engine(input_ids, **kwargs)

    # --- evaluation -------------------------------------------------------------------------
    def eval_loss(self, micro_batches: list[dict[str, Tensor]]) -> float:
        """LM loss without gradients: mean over micro-batches, then over data-parallel ranks."""
        if not micro_batches:
            raise ValueError("eval_loss needs at least one micro-batch")
        if self.layout.pp > 1:
            loss = self.engine.eval_batch(self._pipeline_data(micro_batches), num_micro_batches=len(micro_batches))
            return float(loss)
        self.engine.eval()
        try:
            with torch.no_grad():
                losses = [self.lm_loss(self._forward, self._on_device(batch))[1]["lm_loss"] for batch in micro_batches]
        finally:
            self.engine.train()
        return self._reduce_over_dp(torch.stack(losses).mean(), [], {})[0]

    def logits(self, input_ids: Tensor) -> Optional[Tensor]:
        """Full-vocabulary logits (B, T, V) in eval mode, for checks across layouts. Returned on
        every rank when pp = 1, on the last stage's ranks when pp > 1 (None elsewhere)."""
        if self.layout.pp == 1:
            with torch.no_grad():
                was_training = self.engine.training
                self.engine.eval()
                logits = self.engine(input_ids.to(self.device)).logits
                self.engine.train(was_training)
            return logits.float().cpu()
        batch = [{"input_ids": input_ids}]
        _, local = self.engine.eval_batch(self._pipeline_data(batch), return_logits=True, num_micro_batches=1)
        local = local[0] if isinstance(local, tuple) else local      # an MoE pipeline's (logits, aux)
        self.engine.train()
        if not self.state.is_last_stage:
            return None
        from orchestrator.model.tensor_parallel import gather_last_dim

        full = gather_last_dim(local, self.state.tp_group) if self.layout.tp > 1 else local
        return full[..., :self.model_config.vocab].float().cpu()

    # --- checkpoints and handoff ------------------------------------------------------------
    def save(self, directory: str | Path, *, tag: str, client_state: dict) -> None:
        """DeepSpeed checkpoint (weights, optimizer, ZeRO partitions) under ``directory/tag``. Collective."""
        state = {"client_state": client_state, "runtime": {"steps_done": self.steps_done}}
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=state)

    def load(self, directory: str | Path, *, tag: str) -> dict:
        """Restore a checkpoint written by ``save`` under the same layout; returns its client state."""
        if not (Path(directory) / tag).is_dir():
            raise FileNotFoundError(f"no DeepSpeed checkpoint with tag {tag!r} in {directory}: "
                                    f"list the directory for the saved tags")
        path, client_state = self.engine.load_checkpoint(str(directory), tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint with tag {tag!r} in {directory}: "
                                    f"list the directory for the saved tags")
        self.steps_done = int(client_state["runtime"]["steps_done"])
        return client_state["client_state"]

    def consolidated_state_dict(self) -> dict[str, Tensor]:
        """The plain GPT state dict (fp32, CPU) on rank 0, from any layout; {} elsewhere. In bf16
        it holds the optimizer's fp32 master weights, not the module's rounding. Collective."""
        return gather_plain_state(self._shards(), state=self.state, zero3=self.layout.zero_stage == 3,
                                  master=lambda param: fp32_master(self.engine, param))

    def load_consolidated(self, state_dict: dict[str, Tensor]) -> None:
        """Set the weights from a plain state dict (every rank passes it). Optimizer moments are
        kept; the optimizer's fp32 master copy takes the state dict's fp32 values. Collective."""
        check_plain_state(state_dict, config=self.model_config, head=self.head)
        shards = self._shards()
        load_plain_state_sharded(shards, state_dict, zero3=self.layout.zero_stage == 3)
        refresh = getattr(self.engine.optimizer, "refresh_fp32_params", None)
        if refresh is not None:         # the optimizer's own copies (ZeRO partitions) from the new weights
            refresh()
        if trains_in_16_bit(self.engine):   # … and in 16 bits their exact fp32 values, not the rounding
            set_fp32_masters(self.engine, shards, state_dict)

    def save_sharded(self, directory: str | Path) -> dict[str, str]:
        """This rank's fp32 masters and Adam moments into ``directory`` (``handoff.sharded``): no
        gather, not collective. Returns {file name: sha256} of the files it wrote."""
        from orchestrator.engine.shards import save_rank_shards

        return save_rank_shards(self.engine, self._shards(), Path(directory), state=self.state)

    def load_sharded(self, directory: str | Path) -> None:
        """Weights, fp32 masters and Adam moments from a sharded checkpoint written under any
        layout; each rank reads only the regions it holds. Collective (ZeRO 1/2 all-gather)."""
        from orchestrator.engine.shards import load_rank_shards

        load_rank_shards(self.engine, self._shards(), Path(directory))

    def save_weights_sharded(self, directory: str | Path) -> dict[str, str]:
        """This rank's fp32 master weights only (what a phase hands on: ``handoff.final``) into
        ``directory``; no gather, not collective. Returns {file name: sha256} of its files."""
        from orchestrator.engine.shards import save_rank_shards
        from orchestrator.handoff.sharded import MASTER

        return save_rank_shards(self.engine, self._shards(), Path(directory), state=self.state, kinds=(MASTER,))

    def load_weights_sharded(self, directory: str | Path, *, parent_head: str) -> None:
        """Start from another phase's sharded weights (any layout): each rank reads only the
        regions it holds into its fp32 masters and the module's weights; the optimizer starts
        fresh (no moments). A parent with another head (a reward model from an LM) gives every
        tensor it has; the ones only this head has (``value_head``) keep their initial values,
        and the checkpoint must hold exactly the rest. Collective (ZeRO 1/2 all-gather)."""
        from orchestrator.engine.shards import load_rank_weights
        from orchestrator.handoff.final import check_weights
        from orchestrator.handoff.sharded import ShardedReader
        from orchestrator.model.params import plain_parameter_shapes

        shapes = plain_parameter_shapes(self.model_config, head=self.head)
        fresh = frozenset(shapes) - frozenset(plain_parameter_shapes(self.model_config, head=parent_head))
        check_weights(ShardedReader(directory), shapes, fresh=fresh)
        load_rank_weights(self.engine, self._shards(), Path(directory), fresh=fresh)

    def module_for_inference(self) -> GPT:
        """The whole GPT module (pp = 1) for forward passes with a KV cache (PPO rollouts)."""
        if self.layout.pp > 1:
            raise ValueError(f"a pipeline-parallel model (pp={self.layout.pp}) has no whole-model forward on one "
                             f"rank: run this phase with pp=1 (the handoff reshards the weights)")
        return self.engine.module

    # --- helpers ----------------------------------------------------------------------------
    def _shards(self):
        return local_shards(self.engine.module, state=self.state, config=self.model_config)

    def _check_micro_batches(self, micro_batches, *, custom_loss: bool) -> None:
        if len(micro_batches) != self.layout.grad_accum:
            raise ValueError(f"train_step got {len(micro_batches)} micro-batches but layout.grad_accum="
                             f"{self.layout.grad_accum}: pass exactly grad_accum micro-batches per step")
        if self.layout.pp > 1:
            if custom_loss:
                raise ValueError(f"a custom loss_fn needs pp=1 (this layout has pp={self.layout.pp}): "
                                 f"run reward/PPO phases with pp=1")
            extra = sorted(set(micro_batches[0]) - {"input_ids", "labels"})
            if extra:
                raise ValueError(f"pipeline-parallel batches carry input_ids and labels only, got {extra}: "
                                 f"right-pad and mark padding with labels=-100, or use pp=1")

    def _pipeline_data(self, micro_batches):
        return iter([(batch["input_ids"], batch["labels"] if "labels" in batch else
                      next_token_labels(batch["input_ids"])) for batch in micro_batches])

    def _on_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return to_device(batch, self.device)

    def _apply_learning_rate(self) -> float:
        lr = learning_rate(self.steps_done, optim=self.optim, total_steps=self.total_steps)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _grad_norm(self, skipped: bool) -> float:
        norm = self.engine.get_global_grad_norm()
        if skipped or norm is None:
            return float("nan")
        return float(norm)

    def _reduce_over_dp(self, loss: Tensor | float, micro_batches, metrics: dict[str, Tensor]):
        """One all-reduce over the data-parallel group: mean loss, summed tokens, mean metrics."""
        keys = sorted(metrics)
        tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                     for b in micro_batches)
        values = [torch.as_tensor(loss, dtype=torch.float64), torch.tensor(float(tokens), dtype=torch.float64)]
        values += [metrics[key].double().cpu() for key in keys]
        stats = torch.stack([value.cpu() for value in values]).to(self.device)
        dp = self.layout.dp
        if dp > 1:
            dist.all_reduce(stats, group=self.state.dp_group)
        stats = stats.cpu()
        return (float(stats[0]) / dp, int(stats[1]),
                {key: float(stats[2 + i]) / dp for i, key in enumerate(keys)})
