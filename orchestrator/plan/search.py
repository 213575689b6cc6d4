"""Search every layout of a job, drop the invalid and the over-memory ones, rank the rest.

Enumerated: tp over the divisors of GPUs per node; pp over the divisors of world / tp up to the
layer count; dp the rest; ep over the divisors of the expert count; ZeRO 0-3; micro-batches
1-32; recompute none / selective / full; interleave up to ``max_interleave`` (1 by default,
because DeepSpeed's pipeline engine runs plain 1F1B). Fixed degrees narrow the space. Every
rejected layout keeps its reason. Ranking: predicted tokens/s, i.e. step time per sequence, since
a batch given in tokens rounds to a slightly different number of sequences per layout.

Worked example: gpt3-175b on 1024 A100-80G at 3.2M tokens per batch considers about 1,700
layouts; the fastest keep tp 8 inside a node and pipeline the 96 layers.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import product
from typing import Iterator, Optional

from orchestrator.config.model import GPTConfig
from orchestrator.plan.evaluate import Evaluation, evaluate
from orchestrator.plan.job import Job
from orchestrator.plan.layout import Layout, Recompute
from orchestrator.plan.validate import divisors

MICRO_BATCHES = (1, 2, 4, 8, 16, 32)
RECOMPUTES: tuple[Recompute, ...] = ("none", "selective", "full")


@dataclass(frozen=True)
class Fixed:
    """Degrees the user fixed; None leaves a dimension to the search."""

    tp: Optional[int] = None
    pp: Optional[int] = None
    dp: Optional[int] = None
    ep: Optional[int] = None
    zero_stage: Optional[int] = None
    micro_batch: Optional[int] = None
    recompute: Optional[Recompute] = None
    interleave: Optional[int] = None
    offload_optimizer: bool = False
    sequence_parallel: bool = False
    """Shard LayerNorm/dropout activations over tp (Korthikanti et al. 2022) in every tp > 1 layout.
    Off by default: plan only (this project's runtime refuses it, ``plan.validate.check_runtime``)."""
    max_interleave: int = 1
    """Largest interleave the search tries when ``interleave`` is not fixed."""
    uneven_pipeline: bool = False
    """Let pp not divide the layers (``Layout.uneven_pipeline``); otherwise such pp are rejected."""

    def fixes_layout(self, model: GPTConfig) -> bool:
        """Every parallel degree, the ZeRO stage and the micro-batch are given (ep too for an MoE
        model; dp follows from the world): what is left, recompute and interleave, are a few
        variants of one layout, each reported in full, refused or not."""
        given = (self.tp, self.pp, self.zero_stage, self.micro_batch)
        return all(value is not None for value in given) and (self.ep is not None or not model.is_moe)

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp", "ep", "micro_batch", "interleave", "max_interleave"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value}: must be >= 1")


def _choices(fixed: Optional[int], options: list[int]) -> list[int]:
    return [fixed] if fixed is not None else options


def parallel_degrees(job: Job, fixed: Fixed) -> Iterator[tuple[int, int, int, int]]:
    """(tp, pp, dp, ep) candidates."""
    world, model = job.world, job.model
    for tp in _choices(fixed.tp, divisors(job.cluster.gpus_per_node)):
        rest = world // tp if world % tp == 0 else 0
        pp_options = [p for p in divisors(rest) if p <= model.n_layers] if rest else [1]
        for pp in _choices(fixed.pp, pp_options):
            dp = fixed.dp if fixed.dp is not None else max(world // (tp * pp), 1)
            ep_options = divisors(model.n_experts) if model.is_moe else [1]
            for ep in _choices(fixed.ep, ep_options):
                yield tp, pp, dp, ep


def candidate_layouts(job: Job, fixed: Fixed) -> Iterator[Layout]:
    """Every layout in the (fixed-narrowed) space; grad_accum is filled in by ``evaluate``."""
    zeros = _choices(fixed.zero_stage, [0, 1, 2, 3])
    micro_batches = _choices(fixed.micro_batch, list(MICRO_BATCHES))
    recomputes = [fixed.recompute] if fixed.recompute else list(RECOMPUTES)
    for tp, pp, dp, ep in parallel_degrees(job, fixed):
        interleaves = _choices(fixed.interleave, list(range(1, fixed.max_interleave + 1)) if pp > 1 else [1])
        sequence_parallel = fixed.sequence_parallel and tp > 1
        for zero, micro_batch, recompute, interleave in product(zeros, micro_batches, recomputes, interleaves):
            yield Layout(tp=tp, pp=pp, dp=dp, ep=ep, zero_stage=zero, offload_optimizer=fixed.offload_optimizer,
                         micro_batch=micro_batch, recompute=recompute, interleave=interleave,
                         sequence_parallel=sequence_parallel, uneven_pipeline=fixed.uneven_pipeline)


@dataclass(frozen=True)
class SearchResult:
    ranked: list[Evaluation]
    """Valid layouts that fit, fastest first."""
    rejected: list[Evaluation]
    considered: int
    single: bool = False
    """The fixed degrees left exactly one layout."""
    fixed_layout: bool = False
    """The user fixed the layout (``Fixed.fixes_layout``): every candidate has its numbers, refused or not."""
    rejection_counts: Counter = field(default_factory=Counter)

    @property
    def best(self) -> Optional[Evaluation]:
        return self.ranked[0] if self.ranked else None


def rank_key(evaluation: Evaluation) -> tuple[float, float]:
    assert evaluation.time is not None and evaluation.memory is not None
    return -evaluation.time.tokens_per_s, evaluation.memory.total


def search(job: Job, fixed: Fixed = Fixed()) -> SearchResult:
    """Evaluate every candidate; keep the fitting ones ranked and the others with their reasons."""
    candidates = list(candidate_layouts(job, fixed))
    single = len(candidates) == 1
    fixed_layout = single or fixed.fixes_layout(job.model)
    ranked, rejected = [], []
    for layout in candidates:
        evaluation = evaluate(layout, job, time_when_over_memory=fixed_layout, numbers_when_refused=fixed_layout)
        (ranked if evaluation.ok else rejected).append(evaluation)
    ranked.sort(key=rank_key)
    counts = Counter(evaluation.reason.code for evaluation in rejected if evaluation.reason)
    return SearchResult(ranked=ranked, rejected=rejected, considered=len(candidates), single=single,
                        fixed_layout=fixed_layout, rejection_counts=counts)


def describe_layout(layout: Layout) -> str:
    """A compact name: ``tp8 pp16 dp8 ep1 zero1 mb1×195 full``."""
    parts = [f"tp{layout.tp}", f"pp{layout.pp}", f"dp{layout.dp}"]
    parts += [f"ep{layout.ep}"] if layout.ep > 1 else []
    parts += [f"zero{layout.zero_stage}" + ("+offload" if layout.offload_optimizer else ""),
              f"mb{layout.micro_batch}×{layout.grad_accum}", layout.recompute]
    parts += ["sp"] if layout.sequence_parallel else []
    parts += [f"v{layout.interleave}"] if layout.interleave > 1 else []
    return " ".join(parts)
