"""What a phase process knows: the run config, its directories, and its rank."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.run import RunConfig, load_run_config
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
