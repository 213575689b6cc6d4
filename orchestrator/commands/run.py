"""``orchestrate run RECIPE``: run a recipe's phases in order, each as its own launcher process."""
from __future__ import annotations

import argparse

from orchestrator.config.run import PHASES, ClusterConfig, load_run_config
from orchestrator.runner.pipeline import run_pipeline, write_sbatch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="run recipe (YAML), or a run directory's run_config.yaml")
    parser.add_argument("--run-dir", help="where the run's folders go (default: the recipe's run_dir)")
    phases = parser.add_mutually_exclusive_group()
    phases.add_argument("--only", choices=PHASES, metavar="PHASE", help="run this phase alone")
    phases.add_argument("--from", dest="start", choices=PHASES, metavar="PHASE",
                        help="run this phase and the ones after it")
    parser.add_argument("--dry-run", action="store_true", help="check everything and print the commands; write nothing")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set pretrain.optim.lr=1e-3 (repeatable)")
    parser.add_argument("--node-rank", type=int, default=0,
                        help="this node's rank when every node runs its own launcher (launch.multinode=no_ssh)")
    parser.add_argument("--sbatch", metavar="FILE", help="write a Slurm batch script for this run instead of running it")


def check_node_rank(node_rank: int, cluster: ClusterConfig) -> None:
    """``--node-rank`` names a node of the recipe's cluster (checked before anything is read or written)."""
    if not 0 <= node_rank < cluster.nodes:
        raise ValueError(f"--node-rank {node_rank}: must be in 0..{cluster.nodes - 1} (cluster.nodes={cluster.nodes})")


def run(args: argparse.Namespace) -> int:
    config = load_run_config(args.recipe, args.overrides)
    check_node_rank(args.node_rank, config.cluster)
    if args.sbatch:
        path = write_sbatch(config, run_dir=args.run_dir, path=args.sbatch)
        print(f"wrote {path}: submit it with `sbatch {path}`")
        return 0
    return run_pipeline(config, run_dir=args.run_dir, only=args.only, start=args.start, dry_run=args.dry_run,
                        node_rank=args.node_rank)
