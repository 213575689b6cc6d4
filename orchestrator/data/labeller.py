"""The programmatic labeller (``data.labeller``): a function ``(prompt, response) -> float``,
higher is better, that stands in for InstructGPT's human labelers (Ouyang et al. 2022 §3.4).

    wordlist         the shipped word-list task's oracle (``task.oracle_score``)
    none             no labeller: the RM trains on the files, PPO is judged by the held-out RM score and KL
    module:function  a callable of the user's, importable in every phase process (on ``PYTHONPATH``)
    (unset)          ``wordlist`` when every RLHF phase reads the shipped task, else ``none``

With one, the reward phase can rank the SFT model's own samples (``reward.candidates: policy``) and
every policy is scored by it (``oracle_score`` in SFT's and PPO's evaluation). The phases only see
the callable, never the task. Pure Python: no torch.
"""
from __future__ import annotations

import importlib
import math
from typing import Callable, Optional

Labeller = Callable[[str, str], float]
WORDLIST, NONE = "wordlist", "none"
SPEC_FORMS = "give wordlist, none, or 'module:function' (a callable (prompt, response) -> float, e.g. 'mypkg.judge:score')"


def check_spec(spec: str) -> None:
    """Refuse a spec that is none of the three forms (a config check: nothing is imported)."""
    if spec in (WORDLIST, NONE):
        return
    module, sep, function = spec.partition(":")
    if not sep or not module.strip() or not function.strip() or ":" in function:
        raise ValueError(f"data.labeller={spec!r}: {SPEC_FORMS}")


def resolve(spec: str) -> Optional[Labeller]:
    """The labeller a spec names (None for ``none``); a missing module or function names the fix."""
    check_spec(spec)
    if spec == NONE:
        return None
    if spec == WORDLIST:
        from orchestrator.data.task import oracle_score

        return oracle_score
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"data.labeller={spec!r}: cannot import {module_name!r} ({err}); put its folder on "
                         f"PYTHONPATH (every phase process imports it too)") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"data.labeller={spec!r}: {module_name} has no callable {function_name!r}")
    return function


def score(labeller: Labeller, prompt: str, response: str) -> float:
    """``labeller(prompt, response)`` as a finite float, or an error naming the row."""
    value = labeller(prompt, response)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"the labeller returned {value!r} for prompt {prompt[:60]!r}, response {response[:60]!r}: "
                         f"it must return a finite number (higher is better)")
    return float(value)


def rank(labeller: Labeller, prompt: str, responses: list[str]) -> tuple[list[str], list[float]]:
    """The responses best first by the labeller's score, with their scores (equal scores are ties).

    The sort is stable, so tied responses keep their input order; a tie carries no preference
    and the RM loader drops tied pairs (``taskfiles.preference_pairs``).
    """
    scored = sorted(((score(labeller, prompt, r), i) for i, r in enumerate(responses)), key=lambda s: -s[0])
    return [responses[i] for _, i in scored], [value for value, _ in scored]
