"""``orchestrate data --out DIR [--seed S] [--recipe R]``: tokenizer, packed corpus, RLHF task files.

Trains (or finds in the cache) the tokenizer, reads, checks and packs the pretraining sources,
prints token counts and the bad-row report, writes ``sft_train.jsonl … ppo_eval.jsonl`` from your
data (``data.sft`` / ``data.reward`` / ``data.ppo``: read, bad rows counted, split, pairs merged) and,
for the phases without any, from the word-list oracle task (unless ``data.task_dir`` holds them),
checks that every row fits the phases' lengths with this tokenizer and template,
and records it all in ``DIR/data.json`` (with a copy of the tokenizer in ``DIR/tokenizer``).
With ``data.curation`` stages on, their counts go into ``data.json`` and the documents they dropped
(or flagged) into ``DIR/curation/{quality,duplicates,contamination}.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from orchestrator.config.run import RunConfig, load_run_config
from orchestrator.faults import writing_under


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder for the task files, data.json and the tokenizer")
    parser.add_argument("--seed", type=int, default=None, help="seed of the task files and the training order "
                        "(default: the recipe's seed)")
    parser.add_argument("--recipe", default=None, help="run recipe whose data section is used (default: built-ins)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.task.noise_rate=0.2 (repeatable)")


def run(args: argparse.Namespace) -> int:
    import datasets

    from orchestrator.data.phase_data import PHASE_FILES, task_file
    from orchestrator.data.pretrain import build_pretrain_data
    from orchestrator.data.task import TASK_FILES, write_task_files

    datasets.disable_progress_bars()
    config = load_run_config(args.recipe, args.overrides)
    seed = config.seed if args.seed is None else args.seed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = build_pretrain_data(config.data, seq_len=config.pretrain.loop.seq_len, seed=seed)
    corpus.tokenizer.check_fits(config.model.vocab)
    print(format_corpus(corpus.summary()))
    with writing_under(out):           # a full disk names --out
        listings = corpus.curation.write_listings(out / "curation") if corpus.curation is not None else {}
        if corpus.curation is not None:
            print(format_curation(corpus.curation.counts, listings))
        own = write_own_data(out, config)
        shipped = [name for name in TASK_FILES if not any(name.startswith(PHASE_FILES[p]) for p in own)]
        if shipped and not config.data.task_dir:
            write_task_files(out, config=config.data.task, k=config.reward.k, seed=seed, names=shipped)
        paths = {name: task_file(config.data, out, name) for name in TASK_FILES}
        task = check_task_files(paths, config=config, tokenizer_path=corpus.tokenizer.path)
        print(format_task(task))
        keep_or_copy_tokenizer(corpus.tokenizer, out / "tokenizer")
        summary = {"seed": seed, "corpus": corpus.summary(), "task": task, "tokenizer_copy": str(out / "tokenizer"),
                   **({"own_data": own} if own else {}), **({"curation_listings": listings} if listings else {})}
        (out / "data.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {len(paths)} task files, data.json and tokenizer/ to {out}")
    return 0


def write_own_data(out: Path, config: RunConfig) -> dict[str, dict]:
    """``data.sft`` / ``data.reward`` / ``data.ppo`` read, checked, split and written as the phases'
    files; per phase what was read, kept and refused (and, for pairwise data, how pairs were merged)."""
    from orchestrator.data.phase_data import load_phase_rows, write_phase_files

    summaries = {}
    for phase in ("sft", "reward", "ppo"):
        spec = getattr(config.data, phase)
        if spec is None:
            continue
        rows = load_phase_rows(phase, spec, seed=config.data.split_seed)
        write_phase_files(out, phase, rows)
        summaries[phase] = rows.summary()
        print(format_own_data(phase, summaries[phase]))
    return summaries


def format_own_data(phase: str, summary: dict) -> str:
    """``data.reward: 540 train, 60 eval (eval_fraction 0.1); rm.jsonl: 600 rows, 598 kept, 2 bad (...)``."""
    lines = [f"data.{phase}: {summary['train_rows']} train, {summary['eval_rows']} eval ({summary['eval_from']})"]
    for report in summary["reports"]:
        bad = ", ".join(f"{k} {v} (first at {report['first_bad'][k]})" for k, v in sorted(report["bad_rows"].items()))
        lines.append(f"  {report['source']}: {report['rows_read']} rows, {report['rows_kept']} kept"
                     + (f", bad: {bad}" if bad else ""))
    if "pairwise" in summary:
        merge = summary["pairwise"]
        lines.append(f"  pairwise: {merge['pairs']} pairs; {merge['merged_prompts']} prompts merged into one K-way "
                     f"element, {merge['pair_elements']} pairs kept as pairs; elements by K {merge['elements_by_k']}")
    return "\n".join(lines)


def keep_or_copy_tokenizer(info, target: Path) -> None:
    """Copy the run's tokenizer to ``target``, unless it is already there (``data.tokenizer`` naming
    ``RUN_DIR/data/tokenizer``, e.g. after ``orchestrate import``); another tokenizer there is refused,
    never overwritten: phases that were trained with it would no longer load."""
    from orchestrator.data.report import DataError
    from orchestrator.data.tokenizer import tokenizer_info

    if target.is_dir() and target.resolve() == Path(info.path).resolve():
        return
    if target.is_dir() and (existing := tokenizer_info(target)).tokenizer_hash != info.tokenizer_hash:
        raise DataError(f"{target} holds another tokenizer (hash {existing.tokenizer_hash[:12]}…, e.g. one written "
                        f"by `orchestrate import`) than data.tokenizer={info.path} (hash {info.tokenizer_hash[:12]}…): "
                        f"set data.tokenizer={target} to use it, or delete {target.parent} to start over")
    shutil.copytree(info.path, target, dirs_exist_ok=True)


def check_task_files(paths: dict[str, Path], *, config: RunConfig, tokenizer_path: str) -> dict:
    """Load every task file as its phase will; rows, reports and the labeller's view of the demonstrations."""
    from orchestrator.data import labeller as labellers
    from orchestrator.data.rlhf import load_prompts, load_rm, load_sft
    from orchestrator.data.taskfiles import preference_pairs
    from orchestrator.data.tokenizer import load_tokenizer, tokenizer_info

    tokenizer = load_tokenizer(tokenizer_path)
    info = tokenizer_info(tokenizer_path, tokenizer)
    template, labeller = config.data.prompt_template, labellers.resolve(config.data.labeller_spec)
    result = {}
    for name, path in paths.items():
        if name.startswith("sft"):
            examples, report = load_sft(path, tokenizer=tokenizer, eos_id=info.eos_id, seq_len=config.sft.loop.seq_len,
                                        template=template)
            extra = {"mean_tokens": _mean(len(e.ids) for e in examples)}
            if labeller is not None:
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                extra["mean_oracle_score"] = _mean(labellers.score(labeller, r["prompt"], r["response"]) for r in rows)
        elif name.startswith("rm"):
            examples, report = load_rm(path, tokenizer=tokenizer, eos_id=info.eos_id, seq_len=config.reward.loop.seq_len,
                                       template=template)
            pairs = [len(preference_pairs(list(e.scores))) for e in examples]
            ks = [len(e.scores) for e in examples]
            extra = {"k": max(ks), "pairs": sum(pairs), "tied_pairs": sum(k * (k - 1) // 2 for k in ks) - sum(pairs)}
        else:
            max_prompt = config.ppo.loop.seq_len - config.ppo.max_new_tokens
            examples, report = load_prompts(path, tokenizer=tokenizer, max_prompt_len=max_prompt, template=template)
            extra = {"mean_prompt_tokens": _mean(len(e.ids) for e in examples)}
        result[name] = {"path": str(path), "examples": len(examples), "report": report.to_dict(), **extra}
    return result


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / max(1, len(values)), 4)


def format_corpus(summary: dict) -> str:
    tok = summary["tokenizer"]
    lines = [f"tokenizer {tok['path']}  vocab {tok['vocab_size']}  eos {tok['eos_id']}  pad {tok['pad_id']}  "
             f"hash {tok['tokenizer_hash'][:16]}",
             f"{'source':<12} {'weight':>6} {'train docs':>10} {'train tokens':>12} {'blocks':>7} "
             f"{'eval docs':>9} {'eval tokens':>11} {'blocks':>7}"]
    for s in summary["sources"]:
        lines.append(f"{s['name']:<12} {s['weight']:>6.3f} {s['train_documents']:>10} {s['train_tokens']:>12} "
                     f"{s['train_blocks']:>7} {s['eval_documents']:>9} {s['eval_tokens']:>11} {s['eval_blocks']:>7}")
    lines.append(f"total train tokens {summary['train_tokens']}, eval tokens {summary['eval_tokens']}, "
                 f"blocks of {summary['seq_len']} + 1 tokens")
    report = summary["report"]
    lines.append(f"rows: {report['rows_read']} read, {report['rows_kept']} kept, bad: "
                 + (", ".join(f"{k} {v} (first at {report['first_bad'][k]})" for k, v in sorted(report["bad_rows"].items()))
                    or "none"))
    return "\n".join(lines)


def format_task(task: dict) -> str:
    lines = []
    for name, item in task.items():
        details = ", ".join(f"{k} {v}" for k, v in item.items() if k not in ("path", "examples", "report"))
        bad = item["report"]["bad_rows"]
        lines.append(f"{name:<10} {item['examples']:>5} rows  {details}"
                     + (f"  BAD: {bad} (first at {item['report']['first_bad']})" if bad else ""))
    return "\n".join(lines)


def format_curation(counts: dict, listings: dict[str, str]) -> str:
    """One line per curation stage: read, kept, dropped by reason, and where the listing is."""
    lines = []
    for stage in ("quality", "dedup", "contamination"):
        if stage not in counts:
            continue
        item = counts[stage]
        removed = ", ".join(f"{reason} {n}" for reason, n in item["dropped"].items())
        flagged = ", ".join(f"{reason} {n}" for reason, n in item.get("flagged", {}).items())
        lines.append(f"curation {stage:<13} read {item['read']:>7}  kept {item['kept']:>7}  dropped: {removed}"
                     + (f"  flagged: {flagged}" if flagged else "") + f"  → {listings.get(stage, '-')}")
    documents = counts.get("documents", {})
    if documents:
        lines.append(f"curation result: {documents['read']} documents read, {documents['train']} train, "
                     f"{documents['eval']} held out")
    return "\n".join(lines)
