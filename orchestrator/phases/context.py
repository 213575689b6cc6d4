"""What a phase process knows: the run config, its directories, and its rank."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.run import RunConfig, load_run_config


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


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The run config the runner wrote into the run directory (phases never read the recipe)."""
    config_path = Path(run_dir) / "run_config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: start phases with `orchestrate run RECIPE "
                                f"--run-dir {run_dir}`, which writes it")
    return load_run_config(config_path)
