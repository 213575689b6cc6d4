"""What the target costs on the recipe's cluster: FLOPs, GPU-days and wall-clock days. Pure Python.

The planner (``orchestrator.plan.search``) lays the target onto the cluster; its best layout's
predicted tokens/s gives the days. FLOPs are the model FLOPs of Narayanan et al. 2021, eq. 3
(``flops_per_token(seq) × tokens``, no recompute: what the run must compute), with Kaplan et
al.'s 6·N·D beside them.
"""
from __future__ import annotations

from orchestrator.config.cluster import make_cluster
from orchestrator.config.model import GPTConfig
from orchestrator.plan.artifact import make_plan
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.search import describe_layout, search

SECONDS_PER_DAY = 86400.0


def target_cost(model: GPTConfig, *, gpu: str, gpus: int, gpus_per_node: int, seq: int, tokens: float,
                batch_sequences: float) -> dict:
    """The best layout's days for ``tokens`` tokens of ``model``; the batch is the GPT-3 paper's if it has one.

    >>> from orchestrator.config.model import gpt3_175b
    >>> cost = target_cost(gpt3_175b(), gpu="a100-80g", gpus=1024, gpus_per_node=8, seq=2048, tokens=300e9,
    ...                    batch_sequences=1536)
    >>> round(cost["flops_6nd"] / 1e23, 2)
    3.14
    """
    cluster = make_cluster(gpu=gpu, gpus=gpus, gpus_per_node=gpus_per_node)
    batch = (BatchTarget.from_tokens(model.paper_batch_tokens, seq=seq) if model.paper_batch_tokens
             else BatchTarget(batch_sequences))
    job = Job(model=model, cluster=cluster, seq=seq, batch=batch, precision="bf16", train_tokens=tokens)
    flops = model.flops_per_token(seq) * tokens
    row = {"gpu": gpu, "gpus": gpus, "seq": seq, "tokens": tokens, "flops": flops,
           "flops_6nd": 6.0 * model.params() * tokens, "flops_convention": "Narayanan et al. 2021 eq. 3 (model FLOPs)"}
    result = search(job)
    if result.best is None:
        return {**row, "layout": None, "note": f"no layout of {model.name} fits {gpus} {gpu}: see `orchestrate plan "
                                               f"--model {model.name} --gpus {gpus} --gpu {gpu} --explain`"}
    plan = make_plan(result.best, job)
    days = plan.prediction.days_to_train
    return {**row, "layout": describe_layout(plan.layout), "tokens_per_s": plan.prediction.tokens_per_s,
            "mfu": plan.prediction.mfu, "wall_days": days, "gpu_days": days * gpus,
            "sustained_flops_per_s": flops / (days * SECONDS_PER_DAY)}


def describe_cost(cost: dict) -> str:
    head = (f"target on {cost['gpus']} × {cost['gpu']}: {cost['flops']:.3g} FLOPs ({cost['flops_convention']}; "
            f"6·N·D {cost['flops_6nd']:.3g}) for {cost['tokens']:.3g} tokens")
    if cost.get("layout") is None:
        return f"{head}; {cost['note']}"
    return (f"{head}; best layout {cost['layout']}: {cost['tokens_per_s']:,.0f} tokens/s, MFU {cost['mfu']:.1%}, "
            f"{cost['wall_days']:.1f} days wall clock, {cost['gpu_days']:,.0f} GPU-days")
