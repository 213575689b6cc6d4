"""What a sharded checkpoint of a layout costs: bytes per rank, bytes in all, seconds to write.

The checkpoint format (SPEC §5) keeps, for every parameter element, the fp32 master weight and
Adam's two moments (``exp_avg``, ``exp_avg_sq``): 12 bytes, whatever precision the model computes
in. Each rank writes only what it owns (``handoff.sharded``): its tp / pp shard, cut once more
over the data-parallel group by ZeRO's partition (stages 1–3); under ZeRO 0 the replicas hold the
same state and data-parallel rank 0 writes it. So a rank writes

    12 · (dense / dp + expert / (dp / ep))  bytes   (ZeRO 1–3)
    12 · (dense + expert)                   bytes   (ZeRO 0, data-parallel rank 0)

for the ``dense`` and ``expert`` parameters of its stage (``partition.stage_params``). Nothing is
gathered: the whole checkpoint is 12 bytes per parameter of the model (the tied LM head's copy on
the last stage and the vocabulary padding included), spread over the ranks.

Writing is bound by the file system, by whichever is slower of its aggregate bandwidth and one
node's link to it (the heaviest node writes ``gpus_per_node`` heaviest ranks' shares):

    save_s = max(total / aggregate, gpus_per_node · per_rank / per_node)

Worked example (``tests/unit/plan/test_checkpoint_cost.py``): gpt3-175b on 1,024 A100s,
TP 8 × PP 16 × DP 8, ZeRO 1, the default storage (1 TB/s in all, 10 GB/s per node). A first-stage
rank holds 1.46B parameters (6 of the 96 layers' eighths, the word embedding's eighth and the
whole position table) and writes 12 · 1.46B / 8 = 2.19 GB; the checkpoint is 12 · 175.2B = 2.10 TB
(174.6B parameters, the last stage's copy of the tied head, the padding); a node writes 17.5 GB at
10 GB/s = 1.75 s, the file system takes 2.10 TB at 1 TB/s = 2.10 s: the save costs 2.1 s, bound
by the aggregate bandwidth.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.plan.job import Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.partition import padded_vocab, stage_params, stages_to_check

STATE_BYTES_PER_PARAM = 12
"""fp32 master weight + Adam's exp_avg + exp_avg_sq."""


@dataclass(frozen=True)
class CheckpointCost:
    """One sharded checkpoint of a layout."""

    bytes_per_rank: float
    """What the heaviest rank writes (and reads back on a resume in the same layout)."""
    total_bytes: float
    save_s: float
    """Seconds to write it, bound by the file system's aggregate or one node's bandwidth."""
    bound: str
    """``aggregate`` or ``node``: which bandwidth set ``save_s``."""


def rank_checkpoint_bytes(layout: Layout, job: Job) -> float:
    """Bytes the heaviest rank writes: its stage's parameters (over the data-parallel group under
    ZeRO ≥ 1), × 12."""
    dense_dp = layout.dp if layout.zero_stage > 0 else 1
    expert_dp = max(layout.dp // max(layout.ep, 1), 1) if layout.zero_stage > 0 else 1
    shares = []
    for stage in stages_to_check(layout.pp):
        rank = stage_params(job.model, tp=layout.tp, pp=layout.pp, ep=layout.ep, stage=stage)
        shares.append(rank.dense / dense_dp + rank.expert / expert_dp)
    return STATE_BYTES_PER_PARAM * max(shares)


def total_checkpoint_bytes(layout: Layout, job: Job) -> float:
    """12 bytes per stored parameter: the model, its vocabulary padding, and the tied head's copy
    on the last stage when the pipeline splits the embedding from the head."""
    model = job.model
    padding = (padded_vocab(model.vocab, layout.tp) - model.vocab) * model.d_model
    head_copy = padded_vocab(model.vocab, layout.tp) * model.d_model if layout.pp > 1 else 0
    return STATE_BYTES_PER_PARAM * (model.params() + padding + head_copy)


def checkpoint_cost(layout: Layout, job: Job) -> CheckpointCost:
    """Bytes and save seconds of one checkpoint of ``layout`` on ``job.cluster``'s storage."""
    per_rank = rank_checkpoint_bytes(layout, job)
    total = total_checkpoint_bytes(layout, job)
    aggregate, per_node = job.cluster.storage
    node_s = job.cluster.gpus_per_node * per_rank / per_node
    total_s = total / aggregate
    return CheckpointCost(bytes_per_rank=per_rank, total_bytes=total, save_s=max(node_s, total_s),
                          bound="node" if node_s >= total_s else "aggregate")
