"""Session fixtures of the end-to-end suite: one prepared data directory, one whole tiny pipeline,
and one two-rank pretraining run per layout, each made once and shared (read-only) by the tests
that need it. Tests that change a run work on a copy.

Makes ``e2e_support`` importable under ``--import-mode=importlib``, which does not put test
folders on ``sys.path``.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = str(Path(__file__).parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import e2e_support as e2e  # noqa: E402

TWO_RANKS = ("cluster.gpus_per_node=2",)
SHORT_PRETRAIN = ("pretrain.loop.steps=6", "pretrain.loop.save_every=3", "pretrain.loop.eval_every=3")
# Two ranks each, and the same 4 sequences per step as the one-process pipeline (micro_batch 4):
# tp2 reads them as one micro-batch, pp2 as two micro-batches of 2, zero2 as 2 per data-parallel rank.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "tp2": (*TWO_RANKS, *SHORT_PRETRAIN, "pretrain.layout.tp=2"),
    "pp2": (*TWO_RANKS, *SHORT_PRETRAIN, "pretrain.layout.pp=2", "pretrain.layout.micro_batch=2",
            "pretrain.layout.grad_accum=2"),
    # all 24 steps: the runner kill test resumes this run and compares with it
    "zero2": (*TWO_RANKS, "pretrain.layout.zero_stage=2", "pretrain.layout.micro_batch=2"),
}


@dataclass(frozen=True)
class Prepared:
    """``orchestrate data`` output shared by every run, and the overrides that match it."""

    root: Path
    data: Path
    sets: tuple[str, ...]

    def run_dir(self, name: str) -> Path:
        return e2e.new_run_dir(self.root / name, data=self.data)


@dataclass(frozen=True)
class FinishedRun:
    run_dir: Path
    sets: tuple[str, ...]
    output: str


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Prepared:
    root = tmp_path_factory.mktemp("e2e")
    sets = tuple(e2e.base_sets(root / "cache"))
    code, output = e2e.run(e2e.orchestrate("data", "--out", str(root / "data"), "--recipe", str(e2e.TINY_RECIPE),
                                           *e2e.as_set_flags(sets)), log=root / "data.log", cwd=root)
    assert code == 0, output[-3000:]
    return Prepared(root=root, data=root / "data", sets=sets)


@pytest.fixture(scope="session")
def tiny_pipeline(prepared) -> FinishedRun:
    """``orchestrate run recipes/tiny.yaml`` through all four phases, one process each."""
    run_dir = prepared.run_dir("pipeline")
    code, output = e2e.run_recipe(run_dir, prepared.sets)
    assert code == 0, output[-5000:]
    return FinishedRun(run_dir=run_dir, sets=prepared.sets, output=output)


@pytest.fixture(scope="session")
def pretrained(prepared):
    """``pretrained("tp2")``: a complete two-rank pretraining run under that layout (made once)."""
    done: dict[str, FinishedRun] = {}

    def get(layout: str) -> FinishedRun:
        if layout not in done:
            sets = (*prepared.sets, *LAYOUTS[layout])
            run_dir = prepared.run_dir(f"pretrain-{layout}")
            code, output = e2e.run_recipe(run_dir, sets, "--only", "pretrain")
            assert code == 0, output[-5000:]
            done[layout] = FinishedRun(run_dir=run_dir, sets=sets, output=output)
        return done[layout]

    return get
