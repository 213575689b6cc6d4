"""``orchestrate plan``: search the layouts of a model on a cluster, or evaluate one fixed layout.

    orchestrate plan --model gpt3-175b --gpus 1024 --gpu a100-80g --top 5 [--explain] [--json]
    orchestrate plan --model gpt3-175b --gpus 1024 --gpu a100-80g --tp 8 --pp 16 --zero 1 \\
        --micro-batch 1 --recompute full          # a fixed layout: every reason and its numbers, refused or not

Pure Python: nothing here imports torch. ``orchestrate config`` takes the same arguments.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time

from orchestrator.config.cluster import DEVICES, make_cluster
from orchestrator.config.loader import ConfigError, apply_overrides
from orchestrator.config.run import resolve_model
from orchestrator.plan.artifact import Plan, make_plan
from orchestrator.plan.evaluate import Evaluation
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.report import describe_report, layout_report
from orchestrator.plan.search import Fixed, SearchResult, describe_layout, search

SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def count(text: str) -> float:
    """``3.2M`` → 3.2e6; plain numbers and exponents work too."""
    match = re.fullmatch(r"\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)\s*([KMBGT]?)\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: write e.g. 3200000, 3.2e6 or 3.2M")
    return float(match.group(1)) * SUFFIXES.get(match.group(2).upper(), 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--top", type=int, default=5, help="how many of the best layouts to print")
    parser.add_argument("--explain", action="store_true", help="list why the other layouts were rejected")
    parser.add_argument("--json", action="store_true", help="print the layouts as a JSON list")


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments ``plan`` and ``config`` share: model, cluster, batch, fixed degrees, options."""
    parser.add_argument("--model", required=True, help="a preset name or a YAML/JSON model file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE",
                        help="override a model field, e.g. --set model.n_layers=48 (repeatable)")
    parser.add_argument("--gpus", type=int, required=True, help="total GPUs (ranks)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--gpu", default="h100-80g", choices=list(DEVICES), help="device preset")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--global-batch-tokens", type=count, help="tokens per step (default: the GPT-3 paper's)")
    batch.add_argument("--global-batch", type=int, help="sequences per step, met exactly")
    parser.add_argument("--seq", type=int, help="sequence length (default: the model's context)")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help="default: bf16 on GPUs, fp32 on cpu")
    fixed = parser.add_argument_group("fixed degrees (the search fills in the rest)")
    for name in ("tp", "pp", "dp", "ep"):
        fixed.add_argument(f"--{name}", type=int)
    fixed.add_argument("--zero", type=int, choices=[0, 1, 2, 3])
    fixed.add_argument("--micro-batch", type=int)
    fixed.add_argument("--recompute", choices=["none", "selective", "full"])
    fixed.add_argument("--interleave", type=int, help="virtual pipeline stages per rank (Megatron's schedule)")
    fixed.add_argument("--max-interleave", type=int, default=1,
                       help="search interleave up to this (default 1; > 1 is plan only: DeepSpeed runs plain 1F1B)")
    fixed.add_argument("--offload", action="store_true", help="offload optimizer state to the CPU (ZeRO-Offload)")
    fixed.add_argument("--sequence-parallel", action="store_true",
                       help="shard LayerNorm/dropout activations over tp (plan only: this project's runtime "
                            "does not run it)")
    parser.add_argument("--uneven-pipeline", action="store_true", help="allow pp that does not divide the layers")
    parser.add_argument("--ppo", action="store_true", help="plan PPO's four models (actor, critic, reference, reward)")
    parser.add_argument("--offload-frozen", action="store_true", help="PPO: keep the frozen models in host RAM")
    parser.add_argument("--accounting", choices=["deepspeed", "zero-paper"], default="deepspeed",
                        help="model-state memory accounting (deepspeed: what the runtime allocates)")
    parser.add_argument("--train-tokens", type=count, default=300e9, help="tokens to train on, for days (300B)")
    parser.add_argument("--storage-gbps", type=float, metavar="GB/s",
                        help="aggregate write bandwidth of the checkpoint file system (default 1000 on GPUs, 1 on cpu)")
    parser.add_argument("--storage-node-gbps", type=float, metavar="GB/s",
                        help="write bandwidth one node reaches on it (default 10 on GPUs, 1 on cpu)")


def build_job(args: argparse.Namespace) -> Job:
    """Model (preset or file, then --set overrides), cluster, batch and options from the arguments."""
    outside = [text for text in args.overrides if not text.startswith("model.")]
    if outside:
        raise ConfigError(f"--set {outside[0]}: only model.* fields can be overridden here")
    model = resolve_model(apply_overrides({"model": args.model}, args.overrides)["model"])
    for flag, value in (("--storage-gbps", args.storage_gbps), ("--storage-node-gbps", args.storage_node_gbps)):
        if value is not None and not value > 0:
            raise ValueError(f"{flag} {value:g}: must be > 0 GB/s (or leave it out for the default)")
    cluster = make_cluster(gpu=args.gpu, gpus=args.gpus, gpus_per_node=args.gpus_per_node,
                           storage_bandwidth=gbps(args.storage_gbps), storage_node_bandwidth=gbps(args.storage_node_gbps))
    seq = model.ctx if args.seq is None else args.seq
    if not 1 <= seq <= model.ctx:
        raise ValueError(f"--seq {seq}: must be in 1..{model.ctx} (the model's context); "
                         f"or raise it with --set model.ctx={seq}")
    if args.global_batch is not None:
        batch = BatchTarget(args.global_batch)
    elif args.global_batch_tokens is not None:
        batch = BatchTarget.from_tokens(args.global_batch_tokens, seq=seq)
    elif model.paper_batch_tokens:
        batch = BatchTarget.from_tokens(model.paper_batch_tokens, seq=seq)
    else:
        raise ConfigError(f"model {model.name} has no GPT-3 paper batch size: give --global-batch SEQS "
                          f"or --global-batch-tokens T")
    precision = args.precision or ("fp32" if cluster.device.kind == "cpu" else "bf16")
    return Job(model=model, cluster=cluster, seq=seq, batch=batch, precision=precision, accounting=args.accounting,
               ppo=args.ppo, offload_frozen=args.offload_frozen,
               train_tokens=args.train_tokens)


def gbps(value: float | None) -> float | None:
    """GB/s from the command line → bytes/s (None stays None: the preset's default)."""
    return None if value is None else value * 1e9


def build_fixed(args: argparse.Namespace) -> Fixed:
    return Fixed(tp=args.tp, pp=args.pp, dp=args.dp, ep=args.ep, zero_stage=args.zero, micro_batch=args.micro_batch,
                 recompute=args.recompute, interleave=args.interleave, offload_optimizer=args.offload,
                 sequence_parallel=args.sequence_parallel, max_interleave=args.max_interleave,
                 uneven_pipeline=args.uneven_pipeline)


def plan_search(args: argparse.Namespace) -> tuple[Job, SearchResult, float]:
    job = build_job(args)
    start = time.perf_counter()
    result = search(job, build_fixed(args))
    return job, result, time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError(f"--top {args.top}: must be >= 1")
    job, result, seconds = plan_search(args)
    if result.fixed_layout:
        return report_fixed(result.ranked + result.rejected, job, as_json=args.json)
    plans = [make_plan(evaluation, job) for evaluation in result.ranked[:args.top]]
    if args.json:
        print(json.dumps([plan.row() for plan in plans], indent=2))
    else:
        print(header(job, result, seconds))
        print(format_table(plans) if plans else "no layout fits: see the reasons below")
        if plans and plans[0].warnings:
            print("\nbest layout's warnings:\n" + "\n".join(f"  {w}" for w in plans[0].warnings))
        if any(plan.plan_only for plan in plans):
            print("\n" + plan_only_notes(plans))
    if (args.explain or not plans) and not args.json:
        print("\n" + explain(result))
    return 0 if plans else 2


def header(job: Job, result: SearchResult, seconds: float) -> str:
    model = job.model
    params = f"{model.params() / 1e9:.1f}B params" + (f", {model.active_params() / 1e9:.1f}B active" if model.is_moe else "")
    return (f"{model.name} ({params}) on {job.cluster.describe()}, {job.precision}, seq {job.seq}, "
            f"batch {job.batch.describe(job.seq)}{', PPO (4 models)' if job.ppo else ''}\n"
            f"{result.considered} layouts considered, {len(result.ranked)} fit, searched in {seconds * 1e3:.0f} ms; "
            f"memory: {job.accounting} accounting\n")


def format_table(plans: list[Plan]) -> str:
    header_row = ["#", "layout", "GiB/GPU", "step s", "tokens/s", "MFU", "bubble", "days", "ckpt s"]
    rows = [[str(i + 1), describe_layout(plan.layout) + (" (plan only)" if plan.plan_only else ""),
             f"{plan.prediction.memory_gib:.1f}",
             f"{plan.prediction.step_time_s:.3g}", f"{plan.prediction.tokens_per_s:,.0f}",
             f"{plan.prediction.mfu:.1%}", f"{plan.prediction.bubble_fraction:.1%}",
             f"{plan.prediction.days_to_train:.1f}", f"{plan.prediction.checkpoint_save_s:.3g}"]
            for i, plan in enumerate(plans)]
    widths = [max(len(header_row[c]), *(len(row[c]) for row in rows)) for c in range(len(header_row))]
    line = lambda cells: "  ".join(cell.ljust(w) if c == 1 else cell.rjust(w)  # noqa: E731
                                   for c, (cell, w) in enumerate(zip(cells, widths)))
    days_note = (f"(days: to train {plans[0].train_tokens / 1e9:g}B tokens; ckpt s: one sharded checkpoint "
                 f"written at the storage bandwidth)")
    return "\n".join([line(header_row), line(["-" * w for w in widths]), *map(line, rows), days_note])


def plan_only_notes(plans: list[Plan]) -> str:
    """Why each "plan only" row cannot run here (the planner prices it; ``orchestrate run`` refuses it)."""
    rows: dict[str, list[str]] = {}
    for i, plan in enumerate(plans):
        if plan.plan_only:
            rows.setdefault("; ".join(plan.plan_only), []).append(f"#{i + 1}")
    lines = ["plan only: this project's runtime cannot run these layouts (orchestrate run refuses them):"]
    lines += [f"  {', '.join(numbers)}: {reason}" for reason, numbers in rows.items()]
    return "\n".join(lines)


def explain(result: SearchResult, examples: int = 2) -> str:
    """Rejections grouped by reason, most common first, with a couple of examples each."""
    lines = [f"rejected {len(result.rejected)} of {result.considered} layouts:"]
    by_code: dict[str, list[Evaluation]] = {}
    for evaluation in result.rejected:
        by_code.setdefault(evaluation.reason.code if evaluation.reason else "?", []).append(evaluation)
    for code, group in sorted(by_code.items(), key=lambda item: -len(item[1])):
        lines.append(f"  {code}: {len(group)} layouts")
        seen: set[str] = set()
        for evaluation in group:
            message = evaluation.reason.message if evaluation.reason else ""
            key = re.sub(r"[0-9.]+", "#", message)
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"    e.g. {describe_layout(evaluation.layout)}: {message}")
            if len(seen) >= examples:
                break
    return "\n".join(lines)


def report_fixed(evaluations: list[Evaluation], job: Job, *, as_json: bool) -> int:
    """The layout the fixed degrees leave (with its recompute / interleave variants): each one's
    every reason and its numbers, refused or not. Exit 0 if one of them can run, else 2 (the text
    then goes to stderr, as every refusal does)."""
    reports = [layout_report(evaluation, job) for evaluation in evaluations]
    code = 0 if any(not evaluation.errors for evaluation in evaluations) else 2
    if as_json:
        print(json.dumps([report.to_dict() for report in reports], indent=2))
        return code
    text = "\n\n".join(describe_report(report, job) for report in reports)
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def describe_plan(plan: Plan) -> str:
    p = plan.prediction
    lines = [f"{plan.model.name} on {plan.nodes} × {plan.gpus_per_node} {plan.gpu}: {describe_layout(plan.layout)}",
             f"  memory   {p.memory_gib:.1f} GiB per GPU ({p.memory_stage} stage): "
             + ", ".join(f"{k} {v:.2f}" for k, v in p.memory_breakdown_gib.items())
             + (f"; host {p.cpu_memory_gib_per_node:.0f} GiB per node" if p.cpu_memory_gib_per_node else ""),
             f"  step     {p.step_time_s:.3g} s, {p.tokens_per_s:,.0f} tokens/s, MFU {p.mfu:.1%}, "
             f"{p.tflops_per_gpu:.0f} TFLOP/s per GPU, bubble {p.bubble_fraction:.1%}, "
             f"{p.days_to_train:.1f} days for {plan.train_tokens / 1e9:g}B tokens",
             "  time     " + ", ".join(f"{k} {v:.3g}" for k, v in p.time_breakdown_s.items()),
             f"  ckpt     {p.checkpoint_gib_per_rank:.3g} GiB per rank, {p.checkpoint_total_gib:,.0f} GiB in all, "
             f"written in {p.checkpoint_save_s:.3g} s",
             f"  stages   {plan.layers_per_stage} layers, vocab padded to {plan.padded_vocab}"]
    if plan.ppo_models_gib:
        lines.append("  ppo      " + ", ".join(f"{k} {v:.2f} GiB" for k, v in plan.ppo_models_gib.items()))
    lines += [f"  plan only: {reason} (orchestrate run refuses it)" for reason in plan.plan_only]
    lines += [f"  warning: {w}" for w in plan.warnings] + [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)
