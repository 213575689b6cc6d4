"""The user's own data for SFT, the reward model and PPO (``data.sft``, ``data.reward``, ``data.ppo``).

Each names a JSONL / parquet file (optionally ``.gz``) or a ``datasets.save_to_disk`` folder, the
fields that hold the prompt and the response(s), and its evaluation split: a second file
(``eval_path``), or ``eval_fraction`` of its prompts held out by ``data.split_seed``. The data step
(``orchestrate data``) reads them, counts bad rows per reason and writes the phases' files
(``orchestrator/data/phase_data.py``). Pure dataclasses: nothing is read here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from orchestrator.config.loader import FieldError, Range, check_ranges

EVAL_FRACTION = Range(0.0, 0.5, low_open=True, high_open=True)


@dataclass(frozen=True)
class PhaseDataConfig:
    """What every phase's data has: where it is and how it is split."""

    path: str = ""
    """A .jsonl / .json / .parquet file (optionally .gz), or a folder written by ``datasets``'
    ``save_to_disk`` (a ``DatasetDict`` is read from its ``train`` split)."""
    eval_path: Optional[str] = None
    """The held-out rows, in the same form; unset: ``eval_fraction`` of ``path``'s prompts (a
    ``DatasetDict``'s ``test`` or ``validation`` split when it has one)."""
    eval_fraction: float = 0.1
    """Share of the prompts held out when ``eval_path`` is unset (all rows of a prompt go one way)."""
    prompt_field: str = "prompt"

    def __post_init__(self) -> None:
        if not self.path.strip():
            raise FieldError("path", self.path, "give the file or save_to_disk folder of this phase's rows")
        check_ranges(self, {"eval_fraction": EVAL_FRACTION})
        for name in self.fields:
            if not name.strip():
                raise FieldError("fields", name, "field names must be non-empty")

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields a row must have."""
        return (self.prompt_field,)


@dataclass(frozen=True)
class SFTDataConfig(PhaseDataConfig):
    """Demonstrations: a prompt and the response to learn."""

    response_field: str = "response"

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.prompt_field, self.response_field)


@dataclass(frozen=True)
class RewardDataConfig(PhaseDataConfig):
    """Comparisons: K responses ranked best first (``ranked``), or a chosen and a rejected one (``pairwise``)."""

    format: Literal["ranked", "pairwise"] = "ranked"
    responses_field: str = "responses"
    """``ranked``: a list of 2 to 9 responses, best first."""
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    """``pairwise``: the preferred and the other response."""
    merge_pairs: bool = True
    """``pairwise``: the pairs of one prompt become one K-way element when together they rank its
    responses in one strict order (a > b and b > c: a > b > c, its a > c pair by transitivity), at
    most 9; otherwise (a cycle, or responses no pair orders) each pair stays its own element."""

    @property
    def fields(self) -> tuple[str, ...]:
        if self.format == "ranked":
            return (self.prompt_field, self.responses_field)
        return (self.prompt_field, self.chosen_field, self.rejected_field)


@dataclass(frozen=True)
class PromptDataConfig(PhaseDataConfig):
    """PPO's prompts (its held-out ones score every policy)."""
