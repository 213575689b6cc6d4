"""What is being planned: a model, a cluster, a batch, a sequence length and a few options.

The layout (how) is separate: ``Layout`` in ``layout.py``. A ``Job`` is everything the planner
holds fixed while it searches layouts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from orchestrator.config.cluster import Cluster
from orchestrator.config.model import GPTConfig
from orchestrator.plan.calibration import FITTED, TimeConstants

Precision = Literal["fp32", "bf16", "fp16"]
Accounting = Literal["deepspeed", "zero-paper"]

BATCH_TOLERANCE = 0.10
"""A batch given in tokens is met by the nearest multiple of micro_batch × dp within ±10%."""


@dataclass(frozen=True)
class BatchTarget:
    """The global batch the user asked for, in sequences.

    ``exact``: given as sequences, so micro_batch × grad_accum × dp must equal it; otherwise it came
    from a token count and each layout takes the nearest multiple of micro_batch × dp.
    """

    sequences: float
    exact: bool = True

    def __post_init__(self) -> None:
        if self.sequences < 1:
            raise ValueError(f"global batch {self.sequences:g} sequences: need at least 1")

    @classmethod
    def from_tokens(cls, tokens: float, *, seq: int) -> "BatchTarget":
        """GPT-3's batch sizes are in tokens: 3.2M tokens at seq 2048 is 1562.5 sequences."""
        if tokens < seq:
            raise ValueError(f"global batch {tokens:g} tokens is less than one sequence of {seq}: "
                             f"give at least {seq} tokens")
        return cls(sequences=tokens / seq, exact=False)

    def describe(self, seq: int) -> str:
        if self.exact:
            return f"{self.sequences:g} sequences"
        return f"{self.sequences * seq / 1e6:g}M tokens (≈{self.sequences:.1f} sequences of {seq})"


@dataclass(frozen=True)
class Job:
    """The fixed inputs of one planning problem."""

    model: GPTConfig
    cluster: Cluster
    seq: int
    batch: BatchTarget
    precision: Precision = "bf16"
    accounting: Accounting = "deepspeed"
    """Model-state memory: DeepSpeed's runtime accounting (what its estimators count, used for real
    jobs) or the ZeRO paper's 2 + 2 + 12 bytes per parameter (a lower bound, for comparison)."""
    head: str = "lm"
    """The trained model's head: "lm", or "scalar" for a reward model (this runtime runs it with pp 1)."""
    ppo: bool = False
    """Plan the four PPO models together (actor and critic trained, reference and reward frozen)."""
    offload_frozen: bool = False
    """PPO: keep the frozen models' weights on the CPU."""
    scatter_gather_p2p: bool = False
    """Megatron-LM's scatter/gather of pipeline messages (Narayanan et al. 2021, §4.1): each tp rank
    sends 1/t of the activation. DeepSpeed's pipeline engine sends the whole tensor from every rank."""
    train_tokens: float = 300e9
    """Tokens to train on, for the days-to-train figure (GPT-3: 300B)."""
    constants: TimeConstants = field(default_factory=lambda: FITTED)

    @property
    def world(self) -> int:
        return self.cluster.world

    @property
    def param_bytes(self) -> int:
        """Bytes of one parameter as the model computes with it (16-bit, or 4 for fp32 runs)."""
        return 4 if self.precision == "fp32" else 2
