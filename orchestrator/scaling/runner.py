"""Training the ladder: each rung (and the target) an ordinary pretrain phase job under ``DIR/ladder/NAME``.

Each run is the recipe with the rung's shape, steps, learning rate and warm-up put in, started
through ``run_pipeline`` exactly as ``orchestrate run RECIPE --only pretrain --set model.…`` starts
it: a complete rung is skipped, an interrupted one resumes from its latest checkpoint, under
whatever layout the recipe gives. The data step runs once, into ``DIR/data``, and every run gets a
copy of it, so all of them read one tokenizer and one held-out set (the same ``eval_batches``
micro-batches of ``data.eval_fraction`` of the documents, chosen by ``data.split_seed``).

``DIR/ladder/NAME/rung.json`` records what a run was planned as; a rerun whose plan differs (say
the LR rule changed) is refused rather than mixing old and new runs in one fit.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Optional

from orchestrator.config.model import GPTConfig
from orchestrator.config.run import RunConfig, save_run_config
from orchestrator.engine.launch import ENTRY_MODULE, LaunchCommand
from orchestrator.handoff.manifest import read_manifest, verified_complete
from orchestrator.runner.pipeline import run_pipeline
from orchestrator.runner.process import format_tail, run_logged
from orchestrator.scaling.ladder import Rung, family_model

SHARED_DATA = "data"
BASE_CONFIG = "scaling_config.yaml"
RUNG_FILE = "rung.json"


class RungNotFinished(ValueError):
    """A run the fit needs has not completed."""


def rung_dir(run_dir: Path, rung: Rung, seed: Optional[int] = None) -> Path:
    """``DIR/ladder/NAME`` for a rung (``DIR/ladder/NAME-seedS`` for its repeat at another seed), ``DIR/target``
    for the target."""
    if rung.name.startswith("target"):
        return run_dir / "target"
    return run_dir / "ladder" / (rung.name if seed is None else f"{rung.name}-seed{seed}")


def rung_config(base: RunConfig, rung: Rung, *, family: GPTConfig, run_dir: Path, eval_batches: int,
                seed: Optional[int] = None) -> RunConfig:
    """The recipe as one pretrain run of ``rung``: its shape, steps, LR and warm-up; one final evaluation;
    ``seed`` instead of the recipe's for a repeat."""
    model = family_model(family, n_layers=rung.n_layers, d_model=rung.d_model, name=rung.name)
    pretrain = base.pretrain
    if rung.micro_batch is not None:
        pretrain = dataclasses.replace(pretrain, layout=dataclasses.replace(pretrain.layout, micro_batch=rung.micro_batch))
    optim = dataclasses.replace(pretrain.optim, lr=rung.lr, warmup_steps=rung.warmup_steps)
    loop = dataclasses.replace(pretrain.loop, steps=rung.steps, eval_every=0, eval_batches=eval_batches,
                               log_every=max(1, rung.steps // 20), save_every=max(1, rung.steps // 4))
    return dataclasses.replace(base, name=f"{base.name}-{rung.name}", run_dir=str(rung_dir(run_dir, rung, seed)),
                               model=model, phases=["pretrain"], seed=base.seed if seed is None else seed,
                               pretrain=dataclasses.replace(pretrain, optim=optim, loop=loop))


def planned(config: RunConfig) -> dict:
    """What identifies a run: model, data, seed, the pretrain optimizer and loop, and the global batch.

    Not the parallel layout: an interrupted rung may resume under another one (the runner reshards).
    """
    data = config.to_dict()
    pretrain = {key: data["pretrain"][key] for key in ("optim", "loop")}
    pretrain["global_batch"] = config.pretrain.layout.resolve(config.cluster.world).global_batch
    return {"seed": data["seed"], "model": data["model"], "data": data["data"], "pretrain": pretrain}


def check_planned(directory: Path, config: RunConfig) -> None:
    """Record the run's plan, or refuse one that differs from what its folder was trained as."""
    path = directory / RUNG_FILE
    plan = planned(config)
    if path.is_file():
        before = json.loads(path.read_text())
        if before != json.loads(json.dumps(plan)):
            changed = sorted(_differences(before, json.loads(json.dumps(plan))))
            raise ValueError(f"{directory} was planned with other settings ({', '.join(changed[:6])}): delete it to "
                             f"train it again with the new ones, or restore the recipe it was trained with")
        return
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2))


def _differences(before: dict, after: dict, prefix: str = "") -> list[str]:
    keys = set(before) | set(after)
    found = []
    for key in keys:
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key} {a!r} → {b!r}")
    return found


def prepare_shared_data(base: RunConfig, run_dir: Path, out: IO[str]) -> int:
    """``orchestrate data`` once into ``DIR/data`` with the recipe's data config (skipped when there)."""
    data_dir = run_dir / SHARED_DATA
    if (data_dir / "data.json").is_file() and (data_dir / "tokenizer").is_dir():
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(dataclasses.replace(base, run_dir=str(run_dir), phases=["pretrain"]), run_dir / BASE_CONFIG)
    command = LaunchCommand(argv=(sys.executable, "-m", "orchestrator", "data", "--out", str(data_dir.resolve()),
                                  "--recipe", str((run_dir / BASE_CONFIG).resolve())))
    print(f"[data] $ {command.shell()}", file=out, flush=True)
    code, tail = run_logged(command, log_path=data_dir / "prepare.log", out=out)
    if code != 0:
        print(f"[data] failed (exit code {code}):\n{format_tail(tail)}", file=out, flush=True)
    return code


def corpus_train_tokens(run_dir: Path) -> Optional[int]:
    """Training tokens of the shared corpus (``DIR/data/data.json``), if prepared."""
    path = run_dir / SHARED_DATA / "data.json"
    if not path.is_file():
        return None
    return int(json.loads(path.read_text())["corpus"]["train_tokens"])


def train_rung(config: RunConfig, *, shared_data: Optional[Path], entry_module: str = ENTRY_MODULE,
               out: IO[str]) -> int:
    """Run (or skip, or resume) one rung's pretrain phase; its launcher's exit code."""
    directory = Path(config.run_dir)
    check_planned(directory, config)
    if shared_data is not None and not (directory / "data" / "data.json").is_file():
        shutil.copytree(shared_data, directory / "data", dirs_exist_ok=True)
    return run_pipeline(config, only="pretrain", entry_module=entry_module, with_data=shared_data is not None,
                        out=out)


def final_loss(directory: Path, *, rerun: str) -> tuple[float, Optional[float]]:
    """(held-out loss, seconds its last attempt trained) of a complete run; ``RungNotFinished``
    (with the state and the fix) otherwise."""
    done = verified_complete(directory, "pretrain") if (directory / "pretrain").is_dir() else None
    if done is None:
        state = "not started"
        if (directory / "pretrain" / "manifest.json").is_file():
            manifest = read_manifest(directory / "pretrain")
            state = f"{manifest.status} at step {manifest.step}"
        raise RungNotFinished(f"{directory.name} has not finished ({directory / 'pretrain'}: {state}): run `{rerun}` "
                              f"to train it (an interrupted run resumes)")
    if "eval_loss" not in done.metrics:
        raise RungNotFinished(f"{directory / 'pretrain'} is complete but has no final eval_loss: its data has no "
                              f"held-out documents (data.eval_fraction > 0 is needed)")
    seconds = None
    if done.started and done.finished:
        seconds = (datetime.fromisoformat(done.finished) - datetime.fromisoformat(done.started)).total_seconds()
    return float(done.metrics["eval_loss"]), seconds
