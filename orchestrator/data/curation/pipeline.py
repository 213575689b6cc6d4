"""The curation stages in GPT-3's order, cached by content, with their counts and listings.

    quality (raw sources only) → dedup (all sources, across them) → held-out split → contamination (train)

Every stage narrows each source's list of surviving document positions; the result — train and
eval positions per source, the counts, and ``quality.jsonl``, ``duplicates.jsonl``,
``contamination.jsonl`` — is stored under ``cache_dir/curation/<hash>``, the hash of the sources'
contents, the curation config, the seed, the split settings and the evaluation sets. A second run
with the same inputs reads it back and does no work; every stage is deterministic from the seed.

In a listing, ``source`` is the source's path as the recipe gives it and ``index`` the 0-based row
of its file (a JSONL line, a parquet row, a paragraph or line of a .txt); ``file`` is added when the
source has several files.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
import numpy as np

from orchestrator.config.run import DataConfig, SourceConfig
from orchestrator.data.cache import atomic_directory, hash_of, sha256_file
from orchestrator.data.corpus import SourceDocuments, load_source, resolve_files
from orchestrator.data.curation import contamination, dedup, quality
from orchestrator.data.curation.config import ContaminationConfig, DedupConfig, QualityConfig
from orchestrator.data.curation.text import map_texts, write_jsonl
from orchestrator.data.report import DataError

CURATION_VERSION = 1
"""Bump when a stage's result for the same inputs changes: it is part of the cache key."""
LISTINGS = {"quality": "quality.jsonl", "dedup": "duplicates.jsonl", "contamination": "contamination.jsonl"}
RM_K_RANGE = range(2, 10)
"""The generated RM eval file depends on ``reward.k``, which the data step does not see: all are checked."""

Split = Callable[[datasets.Dataset], tuple[datasets.Dataset, datasets.Dataset]]


@dataclass(frozen=True)
class CuratedSource:
    """One source after curation: its train and held-out documents, and their content key."""

    source: SourceDocuments
    train: datasets.Dataset
    eval: datasets.Dataset
    fingerprint: str

    def documents(self) -> SourceDocuments:
        """The source with only its curated documents (train, then eval), under the curated key."""
        both = datasets.concatenate_datasets([self.train, self.eval])
        return dataclasses.replace(self.source, documents=both, fingerprint=self.fingerprint)


@dataclass(frozen=True)
class Curation:
    sources: list[CuratedSource]
    counts: dict
    """Per stage: read, kept, dropped by reason, per source, and the stage's own figures."""
    listing_dir: Path

    def write_listings(self, out_dir: Path) -> dict[str, str]:
        """Copy the stages' listing files into ``out_dir``; stage → path written."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written = {}
        for stage, name in LISTINGS.items():
            if (self.listing_dir / name).is_file():
                shutil.copyfile(self.listing_dir / name, out_dir / name)
                written[stage] = str(out_dir / name)
            else:  # a stage turned off since the last run leaves no stale listing behind
                (out_dir / name).unlink(missing_ok=True)
        return written


@dataclass
class Survivors:
    """Positions (into each source's documents) still in the corpus, and what the stages wrote."""

    documents: list[SourceDocuments]
    configs: list[SourceConfig]
    alive: list[np.ndarray]
    out: Path
    counts: dict = dataclasses.field(default_factory=dict)

    def locate(self, source: int, document: int) -> dict:
        """``{"source": path as in the recipe, "index": row in its file[, "file": name]}``."""
        docs, config = self.documents[source], self.configs[source]
        file, row = docs.origin(int(document))
        place = {"source": config.path, "index": row}
        if len(docs.row_files) > 1:
            place["file"] = file.name if config.path.startswith("embedded") else str(file)
        return place

    def subset(self, source: int, positions: np.ndarray) -> datasets.Dataset:
        return self.documents[source].documents.select(positions)


def curate(documents: list[SourceDocuments], *, data: DataConfig, seed: int, split: Split) -> Curation:
    """Run (or read back from the cache) every configured stage over the loaded sources."""
    cache_dir = Path(data.cache_dir).resolve()
    key = cache_key(documents, data=data, seed=seed)
    target = cache_dir / "curation" / hash_of(key)[:24]
    if not (target / "counts.json").is_file():
        with atomic_directory(target) as tmp:
            survivors = Survivors(documents=documents, configs=list(data.sources),
                                  alive=[np.arange(len(d.documents)) for d in documents], out=tmp)
            train, held_out = run_stages(survivors, data=data, seed=seed, split=split)
            np.savez(tmp / "positions.npz", **{f"train_{i}": t for i, t in enumerate(train)},
                     **{f"eval_{i}": e for i, e in enumerate(held_out)})
            (tmp / "key.json").write_text(json.dumps(key, indent=1, default=str))
            (tmp / "counts.json").write_text(json.dumps(survivors.counts, indent=1))
    positions = np.load(target / "positions.npz")
    sources = [CuratedSource(source=d, train=d.documents.select(positions[f"train_{i}"]),
                             eval=d.documents.select(positions[f"eval_{i}"]),
                             fingerprint=hash_of({"source": d.fingerprint, "curation": hash_of(key)}))
               for i, d in enumerate(documents)]
    return Curation(sources=sources, counts=json.loads((target / "counts.json").read_text()), listing_dir=target)


def run_stages(survivors: Survivors, *, data: DataConfig, seed: int,
               split: Split) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """quality → dedup → split → contamination; returns (train, eval) positions per source."""
    curation = data.curation
    if curation.quality is not None:
        quality_stage(survivors, config=curation.quality, cache_dir=Path(data.cache_dir).resolve(), seed=seed)
    if curation.dedup is not None:
        dedup_stage(survivors, config=curation.dedup, num_proc=curation.num_proc)
    train, held_out = split_stage(survivors, split=split)
    if curation.contamination is not None:
        eval_sets = gather_eval_sets(survivors, held_out, config=curation.contamination, data=data, seed=seed)
        train = contamination_stage(survivors, train, eval_sets=eval_sets, config=curation.contamination,
                                    num_proc=curation.num_proc)
    survivors.counts["documents"] = {"read": sum(len(d.documents) for d in survivors.documents),
                                     "train": int(sum(len(t) for t in train)),
                                     "eval": int(sum(len(e) for e in held_out))}
    return train, held_out


# --- the cache key -----------------------------------------------------------------------------
def cache_key(documents: list[SourceDocuments], *, data: DataConfig, seed: int) -> dict:
    """Everything the curated corpus depends on."""
    from orchestrator.config.loader import to_dict

    curation = data.curation
    stages = {name: value for name, value in to_dict(curation).items() if name != "num_proc"}  # same result
    key = {"version": CURATION_VERSION, "seed": seed, "curation": stages,
           "sources": [{"name": c.name, "path": c.path, "fingerprint": d.fingerprint}
                       for c, d in zip(data.sources, documents)],
           "eval_fraction": data.eval_fraction, "split_seed": data.split_seed}
    if curation.quality is not None:
        key["reference"] = [sha256_file(f) for f in resolve_files(curation.quality.reference)]
    if curation.contamination is not None:
        key["eval_files"] = [_file_digest(path) for path in curation.contamination.eval_files]
        if curation.contamination.task_eval:
            key["task"] = _task_key(data, seed=seed)
    return key


def _file_digest(path: str) -> str:
    if not Path(path).is_file():
        raise DataError(f"contamination eval file {path} not found; fix data.curation.contamination.eval_files")
    return sha256_file(path)


def _task_key(data: DataConfig, *, seed: int) -> object:
    if data.task_dir:
        return {name: sha256_file(path) for name, path in _task_eval_files(data.task_dir).items()}
    from orchestrator.config.loader import to_dict

    return {"generated": to_dict(data.task), "seed": seed}


def _task_eval_files(task_dir: str) -> dict[str, Path]:
    files = {name: Path(task_dir) / f"{name}.jsonl" for name in ("sft_eval", "rm_eval", "ppo_eval")}
    return {name: path for name, path in files.items() if path.is_file()}


# --- stage 1: quality --------------------------------------------------------------------------
def filtered_sources(configs: list[SourceConfig], config: QualityConfig) -> list[int]:
    """Positions of the sources the quality filter reads: those named, or every non-reference one."""
    names = [c.name for c in configs]
    if config.sources is not None:
        unknown = [n for n in config.sources if n not in names]
        if unknown:
            raise DataError(f"data.curation.quality.sources names {unknown[0]!r}, not a source: "
                            f"choose from {', '.join(names)}")
        return [names.index(n) for n in config.sources]
    chosen = [i for i, c in enumerate(configs) if c.path != config.reference]
    if not chosen:
        raise DataError(f"every source is the quality reference {config.reference!r}: add a raw source or "
                        "name the sources to filter in data.curation.quality.sources")
    return chosen


def quality_stage(survivors: Survivors, *, config: QualityConfig, cache_dir: Path, seed: int) -> None:
    """Fit reference vs raw, score each raw document, keep it when pareto(α) > 1 − score."""
    chosen = filtered_sources(survivors.configs, config)
    reference = load_source(SourceConfig(name="reference", path=config.reference, text_field=config.text_field),
                            cache_dir=cache_dir)
    negatives = [survivors.subset(i, survivors.alive[i])["text"] for i in chosen]
    positives = [p for text in reference.documents["text"] for p in text.split("\n\n") if len(p.split()) >= 8]
    scores = quality.raw_scores(positives=positives, negatives=[t for n in negatives for t in n],
                                n_features=config.n_features, regularization=config.regularization,
                                max_documents=config.max_train_documents, folds=config.folds, seed=seed)
    rows, per_source, start = [], {}, 0
    for i, texts in zip(chosen, negatives):
        alive, source_scores = survivors.alive[i], scores[start:start + len(texts)]
        start += len(texts)
        keep = quality.keep_by_pareto(source_scores, alpha=config.alpha, rng=np.random.default_rng([seed, i]))
        rows += [{**survivors.locate(i, d), "score": round(float(s), 6), "reason": "quality"}
                 for d, s in zip(alive[~keep], source_scores[~keep])]
        per_source[survivors.configs[i].name] = {
            "read": int(len(alive)), "kept": int(keep.sum()), "dropped": int((~keep).sum()),
            "mean_score": round(float(source_scores.mean()), 4) if len(texts) else None}
        survivors.alive[i] = alive[keep]
    write_jsonl(survivors.out / LISTINGS["quality"], rows)
    survivors.counts["quality"] = {**_totals(per_source, reason="quality"), "sources": per_source,
                                   "reference": config.reference, "alpha": config.alpha,
                                   "folds": config.folds}


def _totals(per_source: dict, *, reason: str, dropped_key: str = "dropped") -> dict:
    read = sum(s["read"] for s in per_source.values())
    kept = sum(s["kept"] for s in per_source.values())
    return {"read": read, "kept": kept, dropped_key: {reason: read - kept}}


# --- stage 2: fuzzy dedup ----------------------------------------------------------------------
def dedup_stage(survivors: Survivors, *, config: DedupConfig, num_proc: int) -> None:
    """MinHash every surviving document, cluster duplicates across all sources, keep each cluster's first."""
    owners = [(i, int(d)) for i, alive in enumerate(survivors.alive) for d in alive]  # global id → (source, doc)
    parts = [map_texts(survivors.subset(i, alive), dedup.signature_function(num_perm=config.num_perm,
                                                                            ngram=config.ngram),
                       num_proc=num_proc, desc=f"dedup: signatures {survivors.configs[i].name}",
                       fingerprint=f"minhash-{config.num_perm}-{config.ngram}-{i}")["signature"]
             for i, alive in enumerate(survivors.alive) if len(alive)]
    signature = np.vstack(parts).astype(np.uint64) if parts else np.zeros((0, config.num_perm), np.uint64)
    found = dedup.find_duplicates(signature, threshold=config.threshold, bands=config.bands)
    cluster_ids = {root: n for n, root in enumerate(np.unique(found.cluster[~found.keep]))}
    rows = []
    for g in np.flatnonzero(~found.keep):
        (source, doc), (kept_source, kept_doc) = owners[g], owners[found.cluster[g]]
        rows.append({**survivors.locate(source, doc), "cluster": cluster_ids[found.cluster[g]],
                     "kept": survivors.locate(kept_source, kept_doc), "jaccard": round(float(found.jaccard[g]), 4),
                     "reason": "duplicate"})
    write_jsonl(survivors.out / LISTINGS["dedup"], rows)
    per_source, start = {}, 0
    for i, alive in enumerate(survivors.alive):
        keep = found.keep[start:start + len(alive)]
        per_source[survivors.configs[i].name] = {"read": int(len(alive)), "kept": int(keep.sum()),
                                                 "dropped": int((~keep).sum())}
        survivors.alive[i], start = alive[keep], start + len(alive)
    across = sum(owners[g][0] != owners[found.cluster[g]][0] for g in np.flatnonzero(~found.keep))
    survivors.counts["dedup"] = {**_totals(per_source, reason="duplicate"), "sources": per_source,
                                 "clusters": len(cluster_ids), "across_sources": int(across),
                                 "candidate_pairs": found.candidate_pairs, "confirmed_pairs": found.confirmed_pairs,
                                 "threshold": config.threshold, "num_perm": config.num_perm, "bands": config.bands,
                                 "ngram": config.ngram}


# --- the held-out split ------------------------------------------------------------------------
def split_stage(survivors: Survivors, *, split: Split) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each source's surviving documents split as ``pretrain.split_documents`` does; positions back."""
    train, held_out = [], []
    for i, alive in enumerate(survivors.alive):
        rows = datasets.Dataset.from_dict({"text": [""] * len(alive), "position": alive})
        train_part, eval_part = split(rows)
        train.append(np.asarray(train_part["position"], dtype=np.int64))
        held_out.append(np.asarray(eval_part["position"], dtype=np.int64))
    return train, held_out


# --- stage 3: contamination --------------------------------------------------------------------
def gather_eval_sets(survivors: Survivors, held_out: list[np.ndarray], *, config: ContaminationConfig,
                     data: DataConfig, seed: int) -> list[contamination.EvalSet]:
    """The held-out split of every source, the recipe's eval files, the task's eval files."""
    sets = []
    if config.held_out:
        sets += [contamination.EvalSet(name=f"held-out:{c.name}", texts=survivors.subset(i, held_out[i])["text"])
                 for i, c in enumerate(survivors.configs) if len(held_out[i])]
    sets += [contamination.EvalSet(name=path, texts=contamination.read_eval_texts(path)) for path in config.eval_files]
    if config.task_eval:
        sets += task_eval_sets(data, seed=seed)
    return sets


def task_eval_sets(data: DataConfig, *, seed: int) -> list[contamination.EvalSet]:
    """``data.task_dir``'s eval files, or the generated task's eval rows (as ``orchestrate data`` writes them)."""
    if data.task_dir:
        return [contamination.EvalSet(name=str(path), texts=contamination.read_eval_texts(path))
                for path in _task_eval_files(data.task_dir).values()]
    from orchestrator.data.task import task_rows

    sets = []
    for name in ("sft_eval", "rm_eval", "ppo_eval"):
        rows = []
        for k in (RM_K_RANGE if name == "rm_eval" else RM_K_RANGE[:1]):  # k only matters to rm_eval
            try:
                rows += task_rows(data.task, name=name, k=k, seed=seed)
            except ValueError:  # a task setting that cannot rank (its own data step refuses it)
                continue
        sets.append(contamination.EvalSet(name=f"task:{name}",
                                          texts=[t for row in rows for t in contamination.row_texts(row)]))
    return sets


def contamination_stage(survivors: Survivors, train: list[np.ndarray], *, eval_sets: list[contamination.EvalSet],
                        config: ContaminationConfig, num_proc: int) -> list[np.ndarray]:
    """Every training document with an n-gram of an evaluation set: listed, and dropped or flagged."""
    index = contamination.build_index(eval_sets, n=config.ngram)
    rows, per_source, hits_per_set = [], {}, {name: 0 for name in index.names}
    for i, positions in enumerate(train):
        found = map_texts(survivors.subset(i, positions), contamination.overlap_function(index), num_proc=num_proc,
                          desc=f"contamination: {survivors.configs[i].name}",
                          fingerprint=f"ngrams-{config.ngram}-{i}") if len(positions) else {}
        overlaps = np.asarray(found.get("overlaps", []), dtype=np.int64)
        for d, count, first, sets in zip(positions[overlaps > 0], overlaps[overlaps > 0],
                                         np.asarray(found.get("first_ngram", []))[overlaps > 0],
                                         np.asarray(found.get("eval_sets", []))[overlaps > 0]):
            names = [index.names[int(p)] for p in str(sets).split(",")]
            for name in names:
                hits_per_set[name] += 1
            rows.append({**survivors.locate(i, d), "eval": names, "ngram": str(first), "overlaps": int(count),
                         "reason": "contamination", "action": config.action})
        kept = positions[overlaps == 0] if config.action == "drop" else positions
        per_source[survivors.configs[i].name] = {"read": int(len(positions)), "kept": int(len(kept)),
                                                 "overlapping": int((overlaps > 0).sum())}
        train[i] = kept
    write_jsonl(survivors.out / LISTINGS["contamination"], rows)
    totals = _totals(per_source, reason="contamination", dropped_key="dropped")
    if config.action == "flag":
        totals["flagged"] = {"contamination": len(rows)}
    survivors.counts["contamination"] = {**totals, "sources": per_source, "action": config.action,
                                         "ngram": config.ngram,
                                         "eval_sets": {name: {**index.stats[name], "documents_hit": hits_per_set[name]}
                                                       for name in index.names}}
    return train
