"""PPO's four models planned together (Ouyang et al. 2022, InstructGPT §3.5; the DeepSpeed-Chat layout).

The actor (from SFT) and the critic (from the RM) are trained: each holds parameters, gradients
and optimizer state as the layout's ZeRO stage says. The reference policy and the reward model
are frozen: 16-bit parameters only, sharded over dp under ZeRO-3 and replicated otherwise, or kept
in host RAM when ``offload_frozen`` (ZeRO-3 parameter offload: only the layer being run is on the
device). Rollouts need each whole model on a rank to sample token by token, so pp must be 1.

Activation peak: actor and critic train one after the other, and rollout generation (the actor's
KV cache, 2 · l · s · b · d_attn 16-bit values / t) happens before either, so the peak is the
larger of one training pass and the KV cache. The step: actor and critic updates plus the four
scoring forwards (actor and reference log-probabilities, values, reward); sampling time depends on
the response length and sampler and is not modelled.

Worked example: gpt3-6.7b with PPO on 8 × A100-80G under ZeRO-3 holds four 6.7B models; the two
frozen ones cost 2 · 6.7e9 · 2 / 8 bytes per rank.
"""
from __future__ import annotations

import dataclasses

from orchestrator.config.cluster import GiB
from orchestrator.plan.activations import dropout_mask_bytes, stage_activation_bytes
from orchestrator.plan.job import Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.memory import (CPU_BUFFER_FACTOR, USABLE_FRACTION, MemoryBreakdown, MemoryEstimate, ModelStates,
                                      buffer_bytes, rank_model_states)
from orchestrator.plan.partition import RankParams, stage_layer_range, stage_params
from orchestrator.plan.timing import StepTime, recomputed_forwards

MODELS = ("actor", "critic", "reference", "reward")


def frozen_states(rank: RankParams, layout: Layout, job: Job) -> ModelStates:
    """A frozen model: 16-bit parameters, no gradients or optimizer state."""
    nbytes = job.param_bytes * rank.total
    if job.offload_frozen:
        return ModelStates(params=job.param_bytes * rank.largest_module, grads=0.0, optimizer=0.0, cpu=nbytes)
    if layout.zero_stage == 3:
        return ModelStates(params=nbytes / layout.dp + job.param_bytes * rank.largest_module, grads=0.0, optimizer=0.0)
    return ModelStates(params=nbytes, grads=0.0, optimizer=0.0)


def ppo_model_states(layout: Layout, job: Job) -> dict[str, ModelStates]:
    """Per-rank states of each of the four models (the critic has the actor's shape; its scalar
    head replaces an LM head that is tied to the embedding, so the count is the same)."""
    rank = stage_params(job.model, tp=layout.tp, pp=1, ep=layout.ep, stage="only")
    trained = rank_model_states(rank, layout, job)
    frozen = frozen_states(rank, layout, job)
    return {"actor": trained, "critic": trained, "reference": frozen, "reward": frozen}


def kv_cache_bytes(layout: Layout, job: Job) -> float:
    """Keys and values of every layer for a rollout micro-batch of full length, on one tp rank."""
    model = job.model
    return 2 * model.n_layers * job.seq * layout.micro_batch * model.d_attn * job.param_bytes / layout.tp


def ppo_memory(layout: Layout, job: Job) -> tuple[MemoryEstimate, dict[str, float]]:
    """The rank's memory with all four models resident, and each model's model-state GiB."""
    states = ppo_model_states(layout, job)
    total = states["actor"] + states["critic"] + states["reference"] + states["reward"]
    training = stage_activation_bytes(job.model, layout, seq=job.seq, stage="only",
                                      layers=stage_layer_range(job.model, pp=1, stage="only"),
                                      activation_bytes=job.param_bytes,
                                      mask_bytes=dropout_mask_bytes(job.cluster.device.kind, job.param_bytes))
    rank = stage_params(job.model, tp=layout.tp, pp=1, ep=layout.ep, stage="only")
    breakdown = MemoryBreakdown(params=total.params, grads=total.grads, optimizer=total.optimizer,
                                activations=max(training, kv_cache_bytes(layout, job)),
                                buffers=buffer_bytes(rank, layout, job) + buffer_bytes(rank, layout, job)
                                - job.cluster.device.reserved_gib * GiB)
    estimate = MemoryEstimate(breakdown=breakdown, stage="only",
                              cpu_bytes_per_node=total.cpu * job.cluster.gpus_per_node * CPU_BUFFER_FACTOR,
                              limit_bytes=job.cluster.device_memory_bytes * USABLE_FRACTION,
                              accounting=job.accounting)
    per_model = {name: round(state.device / GiB, 3) for name, state in states.items()}
    return estimate, per_model


def ppo_step(train: StepTime, layout: Layout) -> StepTime:
    """One PPO update from one training step's prediction: actor and critic steps, plus four
    forward-only scoring passes (a forward is 1/(3 + r) of a micro-batch's pipeline time)."""
    forward_share = 1 / (3 + recomputed_forwards(layout.recompute))
    scoring_s = 4 * train.pipeline_s * forward_share
    return dataclasses.replace(
        train, step_s=2 * train.step_s + scoring_s,
        model_flops_per_step=train.model_flops_per_step * (2 + 4 / 3),
        hardware_flops_per_step=train.hardware_flops_per_step * 2 + train.model_flops_per_step * 4 / 3)
