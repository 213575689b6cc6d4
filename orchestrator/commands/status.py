"""``orchestrate status RUN_DIR``: one line per phase (status, step, key metric, checkpoint, time)."""
from __future__ import annotations

import argparse
import json

from orchestrator.runner.summary import format_table, summarize, table_rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (the recipe's run_dir)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when no phase failed, 1 when one did (so scripts can test a run's health)."""
    summaries = summarize(args.run_dir)
    failed = any(summary.status == "failed" for summary in summaries)
    if args.json:
        print(json.dumps([{"phase": s.phase, "status": s.status, "step": s.step,
                           "metric": dict([s.metric]) if s.metric else {}, "checkpoint": s.checkpoint,
                           "seconds": s.seconds, "error": s.error} for s in summaries], indent=2))
        return 1 if failed else 0
    print(format_table(table_rows(summaries)))
    for summary in summaries:
        if summary.error:
            print(f"{summary.phase}: {summary.error}")
    return 1 if failed else 0
