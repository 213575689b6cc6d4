"""Your SFT / RM / PPO data (``data.sft``, ``data.reward``, ``data.ppo``) as the phases' files.

    rows   = read_rows(path)                       # JSONL / parquet (optionally .gz) / save_to_disk folder
    train, eval = split_by_prompt(rows, ...)       # or eval_path's rows
    sft_train.jsonl {"prompt", "response"}    rm_train.jsonl {"prompt", "responses" best first}
    ppo_train.jsonl {"prompt"}                 (and the *_eval.jsonl files)

The data step (``orchestrate data``) writes these into ``RUN_DIR/data``, where the phases read
them exactly as they read the shipped task's files. Every refused row is counted per reason with
its ``file:row`` (``report.REASONS``); a missing file or a field no row has stops before launch
(``check_phase_data``, called by the runner). Pairwise comparisons of one prompt become one K-way
element when they rank its responses in one strict order (``merge_pairs``), else one element per
pair. Pure Python apart from reading parquet (pyarrow) and ``save_to_disk`` folders (``datasets``).
"""
from __future__ import annotations

import gzip
import io
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from orchestrator.config.phase_data import PhaseDataConfig, RewardDataConfig, SFTDataConfig
from orchestrator.data.report import BadRows, DataError
from orchestrator.data.taskfiles import MAX_K, MIN_K, parse_row

PHASE_FILES = {"sft": "sft", "reward": "rm", "ppo": "ppo"}
"""Phase → the stem of its files (``sft_train.jsonl``, ``rm_train.jsonl``, ``ppo_train.jsonl``)."""
EVAL_SPLITS = ("test", "validation")


def task_file(data, data_dir: Path, name: str) -> Path:
    """Where a phase reads ``name`` (``sft_train`` … ``ppo_eval``): ``data.task_dir`` for a phase
    without its own ``data.<phase>``, else the run's prepared ``data_dir``."""
    phase = {stem: phase for phase, stem in PHASE_FILES.items()}[name.split("_")[0]]
    if data.task_dir and getattr(data, phase) is None:
        return Path(data.task_dir) / f"{name}.jsonl"
    return Path(data_dir) / f"{name}.jsonl"


# --- reading any of the three forms ----------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    fields: dict
    where: str
    """``file:line`` (JSONL) or ``file:row N`` (parquet, save_to_disk)."""


def form_of(path: Path) -> str:
    """``jsonl``, ``parquet`` or ``disk`` (a ``save_to_disk`` folder), or a DataError naming the path."""
    if path.is_dir():
        if not any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
            raise DataError(f"{path} is a folder but not one datasets' save_to_disk wrote (no dataset_info.json "
                            f"or dataset_dict.json)")
        return "disk"
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    suffix = Path(path.name.removesuffix(".gz")).suffix
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .jsonl, .json or .parquet "
                    f"(optionally .gz), or a datasets save_to_disk folder")


def read_rows(path: Path, tally: BadRows, *, split: str = "train") -> Iterator[Row]:
    """Every row of ``path`` as a dict; unreadable lines are tallied (bad_utf8, bad_json, blank_line)."""
    form = form_of(path)
    if form == "jsonl":
        yield from _jsonl_rows(path, tally)
        return
    records = _parquet_records(path) if form == "parquet" else _disk_records(path, split=split)
    for number, record in enumerate(records):
        tally.read += 1
        yield Row(fields=record, where=f"{path.name}:row {number}")


def _open_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.name.endswith(".gz") else raw
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None


def _jsonl_rows(path: Path, tally: BadRows) -> Iterator[Row]:
    lines = _open_bytes(path).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        tally.read += 1
        row, reason = parse_row(line, kind=None)
        if reason:
            tally.add(reason, f"{path.name}:{number}")
        else:
            yield Row(fields=row, where=f"{path.name}:{number}")


def _parquet_records(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(io.BytesIO(_open_bytes(path))).to_pylist()
    except Exception as err:   # pyarrow raises several types for a file that is not parquet
        raise DataError(f"cannot read {path} as parquet: {err}") from None


def _disk_dataset(path: Path, *, split: str):
    """A ``save_to_disk`` Dataset, or the ``split`` of a DatasetDict (None when it has no such split)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:   # datasets raises FileNotFoundError, ValueError … for a foreign folder
        raise DataError(f"cannot read {path} with datasets.load_from_disk: {err}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split == "train" and "train" not in loaded:
            raise DataError(f"{path} holds splits {list(loaded)}, none called 'train'")
        return loaded.get(split)
    return loaded if split == "train" else None


def _disk_records(path: Path, *, split: str) -> list[dict]:
    dataset = _disk_dataset(path, split=split)
    return [] if dataset is None else dataset.to_list()


def disk_eval_split(path: Path) -> Optional[str]:
    """The held-out split a ``save_to_disk`` DatasetDict brings (``test`` or ``validation``), if any."""
    if form_of(path) != "disk":
        return None
    return next((split for split in EVAL_SPLITS if _disk_dataset(path, split=split) is not None), None)


def available_fields(path: Path) -> Optional[set[str]]:
    """The field names of ``path``'s rows without reading them all (JSONL: those of its first object)."""
    form = form_of(path)
    if form == "parquet":
        import pyarrow.parquet as pq

        try:
            return set(pq.read_schema(io.BytesIO(_open_bytes(path))).names)
        except Exception as err:
            raise DataError(f"cannot read {path} as parquet: {err}") from None
    if form == "disk":
        return set(_disk_dataset(path, split="train").column_names)
    for row in _jsonl_rows(path, BadRows(path.name)):
        return set(row.fields)
    return None


# --- one row → the phase's form ----------------------------------------------------------------
def _text(value) -> Optional[str]:
    return value if isinstance(value, str) else None


def canonical_row(row: dict, spec: PhaseDataConfig, *, phase: str) -> tuple[Optional[dict], str]:
    """(the row in the phase's field names, "") or (None, reason)."""
    if any(name not in row or row[name] is None for name in spec.fields):
        return None, "missing_field"
    prompt = _text(row[spec.prompt_field])
    if prompt is None:
        return None, "missing_field"
    if phase == "sft":
        assert isinstance(spec, SFTDataConfig)
        response = _text(row[spec.response_field])
        out, texts = {"prompt": prompt, "response": response}, [prompt, response]
    elif phase == "ppo":
        out, texts = {"prompt": prompt}, [prompt]
    elif spec.format == "ranked":
        responses = row[spec.responses_field]
        if not isinstance(responses, (list, tuple)):
            return None, "missing_field"
        responses = [_text(r) for r in responses]
        out, texts = {"prompt": prompt, "responses": responses}, [prompt, *responses]
    else:
        chosen, rejected = _text(row[spec.chosen_field]), _text(row[spec.rejected_field])
        out, texts = {"prompt": prompt, "chosen": chosen, "rejected": rejected}, [prompt, chosen, rejected]
    if any(t is None for t in texts):
        return None, "missing_field"
    if any(not t.strip() for t in texts):
        return None, "empty_text"
    if phase == "reward" and spec.format == "ranked" and not MIN_K <= len(out["responses"]) <= MAX_K:
        return None, "bad_k"
    if phase == "reward" and spec.format == "pairwise" and out["chosen"].strip() == out["rejected"].strip():
        return None, "tied_pair"
    return out, ""


# --- pairwise → K-way ------------------------------------------------------------------------------
def strict_order(pairs: list[tuple[str, str]]) -> Optional[list[str]]:
    """The one best-first order of the responses the (winner, loser) pairs all agree with, when the
    pairs determine it (their transitive closure is a strict total order); None otherwise.

    ``strict_order([("a", "b"), ("b", "c")])`` → ["a", "b", "c"]; ``[("a", "b"), ("c", "d")]`` → None
    (nothing orders a against c); ``[("a", "b"), ("b", "a")]`` → None (a cycle). Kahn's algorithm:
    the order is unique exactly when one response at a time has no unplaced winner above it.
    """
    beats: dict[str, set[str]] = defaultdict(set)
    above: dict[str, int] = {}
    for winner, loser in pairs:
        above.setdefault(winner, 0)
        above.setdefault(loser, 0)
        if loser not in beats[winner]:
            beats[winner].add(loser)
            above[loser] += 1
    order = []
    ready = [r for r, n in above.items() if n == 0]
    while ready:
        if len(ready) > 1:
            return None
        best = ready.pop()
        order.append(best)
        for loser in beats[best]:
            above[loser] -= 1
            if above[loser] == 0:
                ready.append(loser)
    return order if len(order) == len(above) else None


@dataclass
class MergeCounts:
    pairs: int = 0
    merged_prompts: int = 0
    """Prompts whose several pairs became one K-way element."""
    pair_elements: int = 0
    """Elements of one pair (a prompt with one pair, or pairs that do not make one order)."""
    k: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "merged_prompts": self.merged_prompts, "pair_elements": self.pair_elements,
                "elements_by_k": dict(sorted(self.k.items()))}


def rankings_from_pairs(rows: list[dict], *, merge: bool, counts: MergeCounts) -> list[dict]:
    """``{"prompt", "responses"}`` elements from pairwise rows, in the order prompts first appear."""
    by_prompt: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        by_prompt[row["prompt"]].append((row["chosen"], row["rejected"]))
    out = []
    for prompt, pairs in by_prompt.items():
        counts.pairs += len(pairs)
        order = strict_order(pairs) if merge and len(pairs) > 1 else None
        if order is not None and len(order) <= MAX_K:
            counts.merged_prompts += 1
            elements = [order]
        else:
            counts.pair_elements += len(pairs)
            elements = [[winner, loser] for winner, loser in pairs]
        for responses in elements:
            counts.k[len(responses)] = counts.k.get(len(responses), 0) + 1
            out.append({"prompt": prompt, "responses": responses})
    return out


# --- the split and the whole phase ------------------------------------------------------------------
def split_by_prompt(rows: list[dict], *, fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, eval): round(fraction · prompts) distinct prompts held out (at least one of two or
    more), every row of a prompt on the same side; the choice depends on ``seed`` only."""
    prompts = sorted({row["prompt"] for row in rows})
    n_eval = 0 if len(prompts) < 2 else min(len(prompts) - 1, max(1, round(fraction * len(prompts))))
    held = set(random.Random(f"split:{seed}").sample(prompts, n_eval))
    return [r for r in rows if r["prompt"] not in held], [r for r in rows if r["prompt"] in held]


@dataclass
class PhaseRows:
    """One phase's train and eval rows in its files' form, and what reading them refused."""

    train: list[dict]
    eval: list[dict]
    tallies: list[BadRows]
    merge: Optional[MergeCounts] = None
    eval_from: str = ""

    def summary(self) -> dict:
        return {"train_rows": len(self.train), "eval_rows": len(self.eval), "eval_from": self.eval_from,
                "reports": [t.report().to_dict() for t in self.tallies],
                **({"pairwise": self.merge.to_dict()} if self.merge else {})}


def _canonical(path: Path, spec: PhaseDataConfig, *, phase: str, split: str, name: str) -> tuple[list[dict], BadRows]:
    tally = BadRows(name)
    rows = []
    for row in read_rows(path, tally, split=split):
        out, reason = canonical_row(row.fields, spec, phase=phase)
        if reason:
            tally.add(reason, row.where)
        else:
            rows.append(out)
    if not rows:
        raise DataError(f"{path} has no usable row for data.{phase} (fields {', '.join(spec.fields)}): "
                        f"{tally.report().summary()}")
    return rows, tally


def load_phase_rows(phase: str, spec: PhaseDataConfig, *, seed: int) -> PhaseRows:
    """Read, check, split (and for pairwise data merge) one phase's data."""
    path = Path(spec.path)
    rows, tally = _canonical(path, spec, phase=phase, split="train", name=f"data.{phase}.path ({path.name})")
    tallies, eval_split = [tally], None if spec.eval_path else disk_eval_split(path)
    if spec.eval_path:
        held, eval_tally = _canonical(Path(spec.eval_path), spec, phase=phase, split="train",
                                      name=f"data.{phase}.eval_path ({Path(spec.eval_path).name})")
        train, tallies, eval_from = rows, tallies + [eval_tally], "eval_path"
    elif eval_split:
        held, eval_tally = _canonical(path, spec, phase=phase, split=eval_split,
                                      name=f"data.{phase}.path ({path.name}, split {eval_split})")
        train, tallies, eval_from = rows, tallies + [eval_tally], f"split {eval_split}"
    else:
        train, held = split_by_prompt(rows, fraction=spec.eval_fraction, seed=seed)
        eval_from = f"eval_fraction {spec.eval_fraction:g}"
        if not held:
            raise DataError(f"data.{phase}.path {path} has one distinct prompt: nothing can be held out; give "
                            f"data.{phase}.eval_path")
    merge = None
    if isinstance(spec, RewardDataConfig) and spec.format == "pairwise":
        merge = MergeCounts()
        train = rankings_from_pairs(train, merge=spec.merge_pairs, counts=merge)
        held = rankings_from_pairs(held, merge=spec.merge_pairs, counts=merge)
    return PhaseRows(train=train, eval=held, tallies=tallies, merge=merge, eval_from=eval_from)


def write_phase_files(out_dir: Path, phase: str, rows: PhaseRows) -> dict[str, Path]:
    """``<stem>_train.jsonl`` and ``<stem>_eval.jsonl`` in ``out_dir``, written atomically."""
    from orchestrator.handoff.hashing import atomic_write_text

    paths = {}
    for split, items in (("train", rows.train), ("eval", rows.eval)):
        name = f"{PHASE_FILES[phase]}_{split}"
        paths[name] = Path(out_dir) / f"{name}.jsonl"
        atomic_write_text(paths[name], "".join(json.dumps(item) + "\n" for item in items))
    return paths


# --- before launch ---------------------------------------------------------------------------------
def check_phase_data(data) -> None:
    """Every ``data.<phase>`` file or folder exists, is of a form we read, and has the named fields;
    all problems in one DataError, each naming the key and the fix."""
    problems = []
    for phase in PHASE_FILES:
        spec = getattr(data, phase)
        if spec is None:
            continue
        for key, value in (("path", spec.path), ("eval_path", spec.eval_path)):
            if value is None:
                continue
            try:
                names = available_fields(Path(value))
            except DataError as err:
                problems.append(f"data.{phase}.{key}: {err}")
                continue
            missing = [f for f in spec.fields if names is not None and f not in names]
            if names is None:
                problems.append(f"data.{phase}.{key}: {value} holds no row")
            elif missing:
                keys = _field_keys(spec)
                problems.append(f"data.{phase}.{key}: {value} has no field {', '.join(map(repr, missing))} "
                                f"(its rows have {', '.join(sorted(names)) or 'none'}): set "
                                + ", ".join(f"data.{phase}.{keys[m]}" for m in missing) + " to the field that holds it")
    if problems:
        raise DataError("your data cannot be read as the recipe says:\n  " + "\n  ".join(problems))


def _field_keys(spec: PhaseDataConfig) -> dict[str, str]:
    """Field name → the recipe key that names it."""
    keys = {}
    for key in ("prompt_field", "response_field", "responses_field", "chosen_field", "rejected_field"):
        if hasattr(spec, key):
            keys.setdefault(getattr(spec, key), key)
    return keys
