"""Refit the planner's time-model constants on the calibration table and show how well they do.

    python scripts/fit_time_model.py           # fit, print the table, compare with the shipped constants
    python scripts/fit_time_model.py --check   # exit 1 if the fit differs from the shipped FITTED

The table is ``orchestrator/plan/calibration.py`` (Narayanan et al. 2021, Table 1, as given in
``calibration/megatron-a100.md``); the held-out rows are the same table's other five runs.
"""
from __future__ import annotations

import argparse
import sys

from orchestrator.plan.calibration import FITTED, HELD_OUT, ROWS
from orchestrator.plan.fit import fit_constants, reproduce


def table(title: str, reproductions) -> str:
    lines = [title, f"{'params':>8}  {'tp':>2} {'pp':>3} {'dp':>3} {'mb':>3} {'v':>2}  "
                    f"{'measured':>8}  {'predicted':>9}  {'error':>6}"]
    for r in reproductions:
        row = r.row
        lines.append(f"{row.params_billion:>7g}B  {row.tp:>2} {row.pp:>3} {row.dp:>3} {row.micro_batch:>3} "
                     f"{row.interleave:>2}  {row.tflops_per_gpu:>8g}  {r.predicted_tflops:>9.1f}  "
                     f"{r.relative_error:>+6.1%}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the refit differs from FITTED")
    args = parser.parse_args()
    fitted = fit_constants(ROWS)
    print(f"fitted:  {fitted}\nshipped: {FITTED}\n")
    print(table("calibration rows (fitted), TFLOP/s per GPU:", reproduce(ROWS, fitted)) + "\n")
    print(table("held-out rows (not fitted):", reproduce(HELD_OUT, fitted)))
    if args.check and fitted != FITTED:
        print("the refit differs from orchestrator/plan/calibration.py FITTED: update it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
