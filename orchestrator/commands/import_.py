"""``orchestrate import HF_DIR RUN_DIR``: a Hugging Face GPT-2 / GPT-Neo folder as a run's pretrain phase."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", help="a local GPT2LMHeadModel or GPTNeoForCausalLM folder (weights and tokenizer, "
                                       "as save_pretrained writes them)")
    parser.add_argument("run_dir", help="the run directory whose pretrain phase it becomes (RUN_DIR/pretrain must "
                                        "not exist)")


def next_command(run_dir: str, *, model_file: str, tokenizer_dir: str) -> str:
    """The run that continues from the import: the imported model and tokenizer as the recipe's."""
    return (f"orchestrate run RECIPE --run-dir {run_dir} --from sft --set model={model_file} "
            f"--set data.tokenizer={tokenizer_dir}")


def run(args: argparse.Namespace) -> int:
    from orchestrator.handoff.hf_import import import_folder

    result = import_folder(args.hf_dir, args.run_dir)
    model = result.model
    print(f"imported {result.architecture} from {args.hf_dir} into {result.phase_dir}: {model.n_layers} layers × "
          f"{model.d_model}, {model.n_heads} heads, ctx {model.ctx}, vocab {model.vocab}, attention {model.attention}; "
          f"max |Δlogit| vs ours {result.max_abs_logit_diff:.2e}; tokenizer in {result.tokenizer_dir}")
    print("continue with:\n  " + next_command(args.run_dir, model_file=result.model_file,
                                               tokenizer_dir=result.tokenizer_dir))
    return 0
