"""``orchestrate models [--json]``: the catalog with computed parameter counts."""
from __future__ import annotations

import argparse
import json

from orchestrator.config.model import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    rows = [preset().summary() for preset in PRESETS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(format_table(rows))
    return 0


def human(count: float) -> str:
    """1.75e11 → '175.0B'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(int(count))


def format_table(rows: list[dict]) -> str:
    header = ["name", "layers", "d_model", "heads×d_head", "ctx", "vocab", "experts", "params",
              "active", "paper", "GPT-3 batch/lr"]
    lines = []
    for r in rows:
        experts = f"{r['n_experts']} top-{r['top_k']}" if r["n_experts"] else "-"
        paper_hp = f"{r['paper_batch_tokens'] / 1e6:g}M/{r['paper_lr']:.1e}" if r["paper_lr"] else "-"
        lines.append([r["name"], str(r["n_layers"]), str(r["d_model"]), f"{r['n_heads']}×{r['d_head']}",
                      str(r["ctx"]), str(r["vocab"]), experts, human(r["params"]),
                      human(r["active_params"]), human(r["paper_params"]) if r["paper_params"] else "-",
                      paper_hp])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*line) for line in lines])
