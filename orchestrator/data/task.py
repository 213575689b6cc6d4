"""The shipped RLHF task: "List six fruits." → six words, judged by a deterministic oracle.

InstructGPT (Ouyang et al. 2022) had human labelers write demonstrations, rank K sampled
answers and rate held-out outputs. Here one programmatic labeller does all three, so anyone can
check that each phase did its job (SPEC §6):

* ``oracle_score(prompt, response)`` ∈ [0, 1]: the share of the asked-for count that are
  distinct words of the prompt's topic, ``min(valid, n) / max(n, len(words))`` — a list that is
  too short or too long cannot score 1, so length alone is not the signal;
* ``Labeller`` writes the SFT demonstrations, deliberately noisy: each word is, with probability
  ``noise_rate``, a word of another topic. SFT imitates those slips, and the RM's comparisons
  then carry information the demonstrations do not; a wrong word is visible token by token,
  which is what a small reward model can learn (SPEC §6's measured lesson);
* ``rank_responses(prompt, responses)`` orders any K candidates best first and returns the
  scores alongside, so tied pairs (which carry no preference) can be dropped.

Pure Python: no torch, no tokenizer. The prompt states both the topic and the count, so the
oracle needs nothing but the prompt and the response.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from orchestrator.config.loader import AT_LEAST_ONE, UNIT, Range, check_ranges
from orchestrator.data.task_words import NUMBER_WORDS, PROMPT_TEMPLATES, TOPICS
from orchestrator.handoff.hashing import atomic_write_text

TOPIC_NAMES: tuple[str, ...] = tuple(TOPICS)
_PROMPT = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\s+(" + "|".join(TOPIC_NAMES) + r")\b", re.IGNORECASE)
_STRIP = ".,;:!?\"'()[]"


@dataclass(frozen=True)
class TaskConfig:
    """Knobs of the shipped word-list task (``data.task.*`` in a recipe)."""

    n_topics: int = 16
    """Topics prompts are drawn from: the first n of ``task_words.TOPICS`` (16 in all)."""
    response_words: int = 6
    """Words every prompt asks for (1 to 12); the oracle reads the count from the prompt."""
    noise_rate: float = 0.3
    """Chance that the labeller writes a word of another topic, per word of a demonstration."""
    candidate_noise_max: float = 0.6
    """Generated RM candidates each get a noise rate drawn uniformly from [0, this]."""
    sft_train: int = 2000
    sft_eval: int = 200
    rm_train: int = 1000
    rm_eval: int = 200
    ppo_train: int = 1000
    ppo_eval: int = 200
    """Rows written to each task file."""

    def __post_init__(self) -> None:
        smallest = min(len(words) for words in TOPICS.values())
        check_ranges(self, {"n_topics": Range(2, len(TOPICS)), "response_words": Range(1, min(len(NUMBER_WORDS), smallest)),
                            "noise_rate": UNIT, "candidate_noise_max": UNIT,
                            **{name: AT_LEAST_ONE for name in ("sft_train", "sft_eval", "rm_train", "rm_eval",
                                                               "ppo_train", "ppo_eval")}})

    @property
    def topics(self) -> tuple[str, ...]:
        return TOPIC_NAMES[: self.n_topics]


# --- prompts and the oracle ------------------------------------------------------------------
def make_prompt(*, topic: str, count: int, template: int = 0) -> str:
    """``make_prompt(topic="fruits", count=6)`` → ``"List six fruits."``."""
    if topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r}: choose from {', '.join(TOPIC_NAMES)}")
    if not 1 <= count <= len(NUMBER_WORDS):
        raise ValueError(f"count={count} must be in 1..{len(NUMBER_WORDS)}")
    return PROMPT_TEMPLATES[template % len(PROMPT_TEMPLATES)].format(count=NUMBER_WORDS[count - 1], topic=topic)


def parse_prompt(prompt: str) -> tuple[str, int]:
    """The (topic, count) a prompt asks for: ``"Name three colors."`` → ("colors", 3)."""
    match = _PROMPT.search(prompt)
    if match is None:
        raise ValueError(f"prompt {prompt!r} names no count and topic of the word-list task "
                         f"(e.g. {make_prompt(topic='fruits', count=6)!r})")
    return match.group(2).lower(), NUMBER_WORDS.index(match.group(1).lower()) + 1


def response_words(response: str) -> list[str]:
    """Lower-cased words with surrounding punctuation removed: ``"Apple, pear."`` → [apple, pear]."""
    words = (word.strip(_STRIP).lower() for word in response.split())
    return [word for word in words if word]


def oracle_score(prompt: str, response: str) -> float:
    """Share of the asked-for words that are distinct words of the topic, in [0, 1].

    score = min(valid, n) / max(n, len(words)), valid = distinct words of the topic.
    ``oracle_score("List three fruits.", "apple pear dog")`` → 2/3; repeating a word
    (``"apple apple apple"`` → 1/3) or padding the list with extra words does not pay.
    """
    topic, count = parse_prompt(prompt)
    words = response_words(response)
    valid = len(set(words) & set(TOPICS[topic]))
    return min(valid, count) / max(count, len(words))


def rank_responses(prompt: str, responses: list[str]) -> tuple[list[str], list[float]]:
    """The responses best first by oracle score, with their scores (``labeller.rank`` with this oracle)."""
    from orchestrator.data.labeller import rank

    return rank(oracle_score, prompt, responses)


# --- the noisy labeller ----------------------------------------------------------------------
@lru_cache(maxsize=None)
def _other_words(topic: str, topics: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(word for name in topics if name != topic for word in TOPICS[name])


@dataclass(frozen=True)
class Labeller:
    """Writes a demonstration for a prompt; each word is off-topic with probability ``noise_rate``."""

    topics: tuple[str, ...]
    """Topics the wrong words are drawn from (those of the task)."""
    noise_rate: float

    def write(self, prompt: str, rng: random.Random) -> str:
        topic, count = parse_prompt(prompt)
        words = rng.sample(TOPICS[topic], count)
        others = _other_words(topic, self.topics)
        for i in range(count):
            if rng.random() < self.noise_rate:
                words[i] = rng.choice([w for w in others if w not in words])
        return " ".join(words)


def sample_prompt(config: TaskConfig, rng: random.Random) -> str:
    return make_prompt(topic=rng.choice(config.topics), count=config.response_words,
                       template=rng.randrange(len(PROMPT_TEMPLATES)))


# --- the task files (SPEC §6 formats) --------------------------------------------------------
def sft_rows(config: TaskConfig, *, rng: random.Random, n: int) -> list[dict]:
    """``{"prompt", "response"}`` demonstrations by the noisy labeller."""
    labeller = Labeller(topics=config.topics, noise_rate=config.noise_rate)
    prompts = [sample_prompt(config, rng) for _ in range(n)]
    return [{"prompt": p, "response": labeller.write(p, rng)} for p in prompts]


def rm_rows(config: TaskConfig, *, k: int, rng: random.Random, n: int) -> list[dict]:
    """``{"prompt", "responses", "scores"}``: k candidates of spread-out quality, ranked best first.

    Each candidate comes from a labeller whose noise rate is drawn from [0, candidate_noise_max],
    so the k answers differ in quality as samples from an SFT policy would.
    """
    if not 2 <= k <= 9:
        raise ValueError(f"k={k} responses per prompt must be in 2..9 (InstructGPT ranked 4 to 9)")
    if config.candidate_noise_max == 0:
        raise ValueError("task.candidate_noise_max=0 makes every candidate perfect, so every ranking is a "
                         "tie: use a value > 0 (0.6 is the default)")
    rows = []
    for _ in range(n):
        prompt = sample_prompt(config, rng)
        ranked, scores = _untied_candidates(config, prompt=prompt, k=k, rng=rng)
        rows.append({"prompt": prompt, "responses": ranked, "scores": scores})
    return rows


def _untied_candidates(config: TaskConfig, *, prompt: str, k: int, rng: random.Random) -> tuple[list[str], list[float]]:
    """k ranked candidates, redrawn while all k tie (a row without a preference teaches nothing)."""
    for _ in range(1000):
        candidates = [Labeller(topics=config.topics, noise_rate=rng.uniform(0.0, config.candidate_noise_max))
                      .write(prompt, rng) for _ in range(k)]
        ranked, scores = rank_responses(prompt, candidates)
        if scores[0] != scores[-1]:
            return ranked, scores
    raise ValueError(f"1000 draws of {k} candidates for {prompt!r} all tied: raise task.candidate_noise_max")


def ppo_rows(config: TaskConfig, *, rng: random.Random, n: int) -> list[dict]:
    """``{"prompt"}`` rows for PPO rollouts (and, from another seed, the held-out eval prompts)."""
    return [{"prompt": sample_prompt(config, rng)} for _ in range(n)]


TASK_FILES = ("sft_train", "sft_eval", "rm_train", "rm_eval", "ppo_train", "ppo_eval")


def task_rows(config: TaskConfig, *, name: str, k: int, seed: int) -> list[dict]:
    """The rows of one task file; each file draws from its own seeded stream."""
    rng = random.Random(f"{seed}:{name}")  # str seeds hash with SHA-512: stable across runs
    n = getattr(config, name)
    if name.startswith("sft"):
        return sft_rows(config, rng=rng, n=n)
    if name.startswith("rm"):
        return rm_rows(config, k=k, rng=rng, n=n)
    return ppo_rows(config, rng=rng, n=n)


def write_task_files(out_dir: str | Path, *, config: TaskConfig, k: int, seed: int,
                     names: tuple[str, ...] | list[str] = TASK_FILES) -> dict[str, Path]:
    """Write ``sft_train.jsonl … ppo_eval.jsonl`` (or those of ``names``) into ``out_dir``; returns name → path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        rows = task_rows(config, name=name, k=k, seed=seed)
        path = out_dir / f"{name}.jsonl"
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))   # a full disk leaves no .tmp
        paths[name] = path
    return paths
