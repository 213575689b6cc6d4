"""``orchestrate``: the command line. Each subcommand lives in ``orchestrator/commands/NAME.py``
with ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when their
command runs, so ``orchestrate plan`` never imports torch."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from orchestrator import __version__
from orchestrator.faults import EnvironmentFault, describe, is_fault

# name → (module under orchestrator.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("models", "list the model catalog"),
    "plan": ("plan", "plan a layout of a model on a cluster (search, or evaluate fixed degrees)"),
    "config": ("config", "write the DeepSpeed JSON and launch command for a plan"),
    "data": ("data", "prepare the tokenizer, the pretraining corpus and the RLHF task files"),
    "train": ("train", "run one phase on this rank (what the deepspeed launcher starts)"),
    "run": ("run", "run a recipe's phases in order, each as its own launcher process"),
    "status": ("status", "show the phases of a run directory"),
    "report": ("report", "plot a run's curves and write a Markdown summary"),
    "import": ("import_", "make a local GPT-2 / GPT-Neo Hugging Face folder the pretrain phase of a run"),
    "scaling": ("scaling", "predict a run's final loss from a ladder of small pretraining runs"),
    "export": ("export", "consolidate a phase checkpoint and export it to Hugging Face format"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrate", description="Plan, launch and run GPT training on DeepSpeed.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(f"orchestrator.commands.{module}").add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        build_parser().parse_args(argv or ["--help"])
        return 2
    args = build_parser(command).parse_args(argv)
    module = importlib.import_module(f"orchestrator.commands.{COMMANDS[command][0]}")
    try:
        return module.run(args) or 0
    except BrokenPipeError:  # `orchestrate plan ... | head -1`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, FileNotFoundError) as err:  # config and layout errors: one clear line, no trace
        print(f"orchestrate {command}: error: {err}", file=sys.stderr)
        return 2
    except EnvironmentFault as err:                # the machine: a full disk, a permission (exit 1)
        print(f"orchestrate {command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if not is_fault(err):
            raise
        print(f"orchestrate {command}: error: {describe(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
