"""``orchestrate export RUN_DIR/PHASE OUT``: a phase's verified weights as a Hugging Face model."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("phase_dir", help="a complete LM phase folder, e.g. runs/smoke/sft")
    parser.add_argument("out", help="new folder for the model, its tokenizer and export.json")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the one the phase's manifest names)")
    parser.add_argument("--approximate", action="store_true",
                        help="GPT-Neo only: accept a model whose query bias GPT-Neo cannot hold, and report the "
                             "logit difference instead of refusing")


def run(args: argparse.Namespace) -> int:
    from orchestrator.handoff.export import export_phase

    result = export_phase(args.phase_dir, args.out, tokenizer_dir=args.tokenizer, approximate=args.approximate)
    print(f"wrote {result.out_dir}: {result.architecture}, max |Δlogit| vs ours {result.max_abs_logit_diff:.2e}"
          + (" (approximate)" if result.approximate else "") + "; load it with "
          f"AutoModelForCausalLM.from_pretrained({result.out_dir!r})")
    return 0
