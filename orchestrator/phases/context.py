"""What a phase process knows: the run config, its directories, its rank — and what every phase
reads from the run directory: the run's tokenizer and its parents' sharded weights."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config.run import RunConfig, load_run_config
from orchestrator.data.tokenizer import TokenizerInfo, load_tokenizer, tokenizer_info
from orchestrator.handoff.manifest import PARENTS
from orchestrator.engine.ds_config import DS_CONFIG_FILE, ds_config_text, phase_ds_config
from orchestrator.handoff.hashing import atomic_write_text


@dataclass(frozen=True)
class PhaseContext:
    phase: str
    run_dir: Path
    config: RunConfig
    rank: int
    world: int

    @property
    def phase_dir(self) -> Path:
        return self.run_dir / self.phase

    @property
    def checkpoint_root(self) -> Path:
        return self.phase_dir / "checkpoints"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def ds_config(self) -> dict:
        """The DeepSpeed config this phase's engines are built with: ``PHASE/ds_config.json`` as the
        runner wrote it, read, never rebuilt, so the record is what runs. A phase started by hand
        without one writes it first (rank 0), from the function the runner uses."""
        path = self.phase_dir / DS_CONFIG_FILE
        if path.is_file():
            return json.loads(path.read_text())
        layout = self.config.phase(self.phase).layout.resolve(self.world)
        config = phase_ds_config(self.config, phase=self.phase, layout=layout)
        if self.is_main:
            atomic_write_text(path, ds_config_text(config))
        return config


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The run config the runner wrote into the run directory (phases never read the recipe)."""
    config_path = Path(run_dir) / "run_config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: start phases with `orchestrate run RECIPE "
                                f"--run-dir {run_dir}`, which writes it")
    return load_run_config(config_path)


@dataclass
class RunTokenizer:
    """The run's tokenizer as a phase uses it: ``info`` (ids, hash, folder) for batches and the
    manifest, ``hf()`` (the ``PreTrainedTokenizerFast``, loaded on first use) to encode and decode."""

    info: TokenizerInfo
    manifest_dir: str
    """The folder relative to the run directory, as the manifest records it."""
    _hf: Any = field(default=None, init=False, repr=False)

    @property
    def eos_id(self) -> int:
        return self.info.eos_id

    @property
    def pad_id(self) -> int:
        return self.info.pad_id

    def hf(self):
        if self._hf is None:
            self._hf = load_tokenizer(self.info.path)
        return self._hf

    def manifest_fields(self) -> dict:
        """``tokenizer_hash``, ``pad_id``, ``eos_id``, ``tokenizer_dir`` for the phase's manifest."""
        info = self.info
        return {"tokenizer_hash": info.tokenizer_hash, "pad_id": info.pad_id, "eos_id": info.eos_id,
                "tokenizer_dir": self.manifest_dir}


def run_tokenizer_dir(ctx: PhaseContext) -> Path:
    return ctx.data_dir / "tokenizer"


def load_run_tokenizer(ctx: PhaseContext) -> RunTokenizer:
    """The run's tokenizer (``RUN_DIR/data/tokenizer``, written by data preparation), checked to fit the model."""
    path = run_tokenizer_dir(ctx)
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer at {path}: prepare the run's data with `orchestrate run RECIPE "
                                f"--run-dir {ctx.run_dir}` (or `orchestrate data --out {path.parent}`)")
    info = tokenizer_info(path)
    info.check_fits(ctx.config.model.vocab)
    return RunTokenizer(info=info, manifest_dir=path.relative_to(ctx.run_dir).as_posix())


def parent_shards(ctx: PhaseContext, *, parent: str, tokenizer: RunTokenizer) -> Path:
    """``parent``'s sharded final weights (``final/shards``), verified against this run's model,
    the head this phase expects of that parent (``handoff.manifest.PARENTS``) and the run's tokenizer."""
    from orchestrator.phases import outputs  # torch: only phase processes get here

    return outputs.parent_shards(ctx.run_dir, parent=parent, head=parent_head(ctx.phase, parent),
                                 model=ctx.config.model.to_dict(), tokenizer_hash=tokenizer.info.tokenizer_hash)


def parent_head(phase: str, parent: str) -> str:
    """The head ``phase`` expects its ``parent`` to carry (``handoff.manifest.PARENTS``)."""
    return dict(PARENTS[phase])[parent]
