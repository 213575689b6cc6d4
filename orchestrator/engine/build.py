"""Build one rank's runtime: the GPT laid out by a ``Layout``, wrapped in a DeepSpeed engine.

``build_runtime`` is the one place where the parallel dimensions are composed, in this order:

  1. join the job and resolve the layout against the world; refuse what cannot run
     (``plan.validate.require_runtime``, the rules ``orchestrate run`` checked before launch);
  2. the grid (``ParallelState``): DeepSpeed's (pipe, data, model) topology, Megatron's TP group
     checked against it;
  3. the model: the plain GPT with its experts dealt out over ``ep`` ranks, built on the meta
     device → ``apply_tp`` (Megatron column/row/vocab-parallel layers) → either the whole model
     (pp = 1) or this rank's pipeline stage (``build_pipeline``) → recompute flags;
  4. the weights: drawn per plain tensor name (identical under every layout), or cut from a
     plain state dict handed over by the previous phase;
  5. AdamW over decay / no-decay / expert groups, guarded against non-finite losses;
  6. ``deepspeed.initialize`` with the phase's DeepSpeed config (``engine.ds_config``: ZeRO stage
     and the buckets the memory plan counted, offload, precision, batch triple), passed unchanged;
     it adds ZeRO partitioning and the data-parallel reduction.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from orchestrator.config.model import GPTConfig
from orchestrator.config.run import OptimConfig
from orchestrator.engine.consolidate import check_plain_state, local_shards
from orchestrator.engine.master import set_fp32_masters
from orchestrator.engine.ds_config import build_ds_config, check_ds_config, config_precision, optimizer_clips
from orchestrator.engine.optim import GuardedAdamW, StepGuard, global_norm_clipper, parameter_groups
from orchestrator.engine.parallel import (ParallelState, build_parallel_state,
                                          init_distributed)
from orchestrator.engine.runtime import Runtime, StepResult
from orchestrator.model.gpt import GPT
from orchestrator.model.params import init_parameters, load_plain_state, materialize
from orchestrator.plan.layout import Layout
from orchestrator.plan.validate import require_runtime

__all__ = ["build_runtime", "init_distributed", "Runtime", "StepResult"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_runtime(model_config: GPTConfig, layout: Layout, optim: OptimConfig, *, total_steps: int,
                  head: str = "lm", seed: int, precision: Optional[str] = None, device_type: str = "cpu",
                  ds_config: Optional[dict] = None, init_state: Optional[dict[str, Tensor]] = None,
                  timeout_minutes: float = 10.0) -> Runtime:
    """This rank's ``Runtime`` for ``model_config`` under ``layout``. Collective: all ranks call it.

    ``device_type``: ``cpu`` (gloo) or ``cuda`` (NCCL, GPU ``LOCAL_RANK``), as the run config's
    ``cluster.gpu`` says. ``ds_config``: the DeepSpeed config, passed to ``deepspeed.initialize``
    exactly as given (a phase passes its ``PHASE/ds_config.json``); its precision is the run's.
    None builds it with ``engine.ds_config.build_ds_config``, the function the runner writes that
    file with, for ``precision`` (None: bf16 on CUDA, fp32 on CPU) and ``optim.grad_clip``.
    ``init_state``: a plain (consolidated) state dict to start from instead of a fresh init —
    every rank passes it; in bf16 its fp32 values become the optimizer's master weights.
    """
    # 1. the job, the layout and the precision
    context = init_distributed(device_type=device_type, timeout_minutes=timeout_minutes)
    layout = layout.resolve(context.world)
    precision = _precision(precision, ds_config, device_type=device_type)
    require_runtime(layout, model_config, head=head, precision=precision)   # what `orchestrate run` checked
    if ds_config is None:
        ds_config = build_ds_config(layout, model=model_config, precision=precision, gpu=device_type == "cuda",
                                    grad_clip=optim.grad_clip)
    else:
        check_ds_config(ds_config, layout, source="the DeepSpeed config")
    if init_state is not None:
        check_plain_state(init_state, config=model_config, head=head)
    # 2. the grid
    state = build_parallel_state(layout, context)
    guard = StepGuard(device=context.device)
    runtime = Runtime(engine=None, state=state, model_config=model_config, head=head, optim=optim,
                      total_steps=total_steps, guard=guard, dtype=PRECISIONS[precision])
    # 3. the model, laid out
    module = _build_module(model_config, state=state, head=head, loss_fn=runtime.pipeline_loss)
    # 4. the weights
    shards = local_shards(module, state=state, config=model_config)
    if init_state is None:
        init_parameters(shards, config=model_config, seed=seed)
    else:
        load_plain_state(shards, init_state)
    _seed_dropout(seed, state)
    # 5. the optimizer (we clip ourselves only where DeepSpeed hands AdamW the model's own fp32 parameters)
    own_clipping = optimizer_clips(layout, precision)
    optimizer = GuardedAdamW(parameter_groups(module, weight_decay=optim.weight_decay), optim=optim, guard=guard,
                             clip_norm=global_norm_clipper(state) if own_clipping else None)
    # 6. DeepSpeed, with the config as given (the buckets the memory plan counted, clipping 0 where we clip)
    runtime.engine = _initialize(module, optimizer, ds_config, state=state)
    if init_state is not None and runtime.dtype != torch.float32:
        # DeepSpeed made its fp32 masters from the 16-bit copy: give them the parent's fp32 values back
        set_fp32_masters(runtime.engine, shards, init_state)
    return runtime


def _precision(precision: Optional[str], ds_config: Optional[dict], *, device_type: str) -> str:
    """The precision asked for, the DeepSpeed config's, or the device's default — refusing a mismatch."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    if ds_config is None:
        return precision or ("bf16" if device_type == "cuda" else "fp32")
    if precision is not None and precision != config_precision(ds_config):
        raise ValueError(f"precision={precision!r} but the DeepSpeed config trains in "
                         f"{config_precision(ds_config)}: pass one of them")
    return config_precision(ds_config)


def _build_module(config: GPTConfig, *, state: ParallelState, head: str, loss_fn) -> nn.Module:
    layout = state.layout
    tp_group = state.tp_group if layout.tp > 1 else None
    if layout.pp > 1:
        from orchestrator.model.pipeline import build_pipeline

        return build_pipeline(config, topology=state.grid.topology(), tp_group=tp_group, loss_fn=loss_fn,
                              recompute=layout.recompute, ep_size=layout.ep)
    with torch.device("meta"):          # nothing is allocated until the layout is final
        model = GPT(config, head=head, ep_size=layout.ep)
    if tp_group is not None:
        from orchestrator.model.tensor_parallel import apply_tp

        apply_tp(model, tp_group=tp_group)
    model = materialize(model, state.device)
    apply_recompute(model, layout.recompute)
    return model


def apply_recompute(model: GPT, mode: str) -> None:
    """Activation recomputation (Korthikanti et al. 2022): "full" keeps only each block's input
    and re-runs the block in backward; "selective" re-runs only the attention core."""
    model.recompute_blocks = mode == "full"
    for block in model.h:
        block.attn.recompute_core = mode == "selective"


def _seed_dropout(seed: int, state: ParallelState) -> None:
    """Dropout differs across data-parallel replicas and stages, and agrees across a TP group
    (whose replicated activations must see the same masks)."""
    torch.manual_seed(seed + 1 + 1000 * state.dp_rank + 100_000 * state.pp_rank)


def _initialize(module: nn.Module, optimizer: torch.optim.Optimizer, ds_config: dict, *, state: ParallelState):
    import deepspeed

    # A PipelineModule brings its own grid; a tensor-parallel model passes ours so DeepSpeed's
    # data-parallel group is dp, not the world.
    mpu = state.grid if state.layout.tp > 1 and state.layout.pp == 1 else None
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config, mpu=mpu)
    _check_engine_grid(engine, state)
    if state.layout.dp == 1 and state.layout.zero_stage == 0 and state.layout.pp == 1:
        # nothing to reduce: skip DeepSpeed's flatten / all-reduce / copy-back of every gradient
        engine.enable_backward_allreduce = False
    return engine


def _check_engine_grid(engine, state: ParallelState) -> None:
    """DeepSpeed's data-parallel (and expert) groups must be the ones our ParallelState describes."""
    import torch.distributed as dist

    ds_dp = dist.get_world_size(engine.data_parallel_group) if hasattr(engine, "data_parallel_group") else None
    if ds_dp is not None and ds_dp != state.layout.dp:
        raise RuntimeError(f"DeepSpeed's data-parallel group has {ds_dp} ranks, the layout says dp={state.layout.dp}")
    if state.layout.ep > 1:
        from deepspeed.utils import groups

        ep_group = groups._get_expert_parallel_group(f"ep_size_{state.layout.ep}")
        if dist.get_rank(group=ep_group) != state.ep_rank:
            raise RuntimeError(f"DeepSpeed placed this rank at expert-parallel rank {dist.get_rank(group=ep_group)}, "
                               f"our grid at {state.ep_rank}")

