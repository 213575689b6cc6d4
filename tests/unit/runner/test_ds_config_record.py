"""One DeepSpeed config: the ``PHASE/ds_config.json`` the runner writes is, byte for byte, the config
the engine runs with, and ``orchestrate config`` writes the same function's output for a plan."""
import json
from pathlib import Path

import pytest

from orchestrator.config.run import load_run_config
from orchestrator.engine.build import build_runtime
from orchestrator.engine.ds_config import DS_CONFIG_FILE, ds_config_text, phase_ds_config
from orchestrator.phases.context import PhaseContext
from orchestrator.plan.artifact import Plan
from orchestrator.plan.memory import planned_bucket_elements
from orchestrator.runner.prepare import prepare_jobs, write_job

DS_CONFIGS = Path(__file__).resolve().parents[3] / "ds_configs"


pytestmark = pytest.mark.usefixtures("world_of_one")   # tests/conftest.py


def tiny_run(tmp_path, *sets):
    return load_run_config({"name": "t", "run_dir": str(tmp_path / "run"), "model": "tiny", "phases": ["pretrain"]},
                           ["pretrain.layout.grad_accum=2", "pretrain.optim.grad_clip=0.5", "cluster.precision=fp32", *sets])


def written_job(config):
    job = prepare_jobs(config, run_dir=Path(config.run_dir))["pretrain"]
    write_job(config, job)
    return job


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_the_engine_runs_with_exactly_the_json_the_runner_wrote(tmp_path, zero):
    from deepspeed.runtime.config import DeepSpeedConfig

    config = tiny_run(tmp_path, f"pretrain.layout.zero_stage={zero}")
    job = written_job(config)
    path = job.directory / DS_CONFIG_FILE
    ctx = PhaseContext(phase="pretrain", run_dir=Path(config.run_dir), config=config, rank=0, world=1)
    runtime = build_runtime(config.model, config.pretrain.layout, config.pretrain.optim, total_steps=4,
                            seed=config.seed, ds_config=ctx.ds_config())
    engine = runtime.engine
    assert ds_config_text(engine.config) == path.read_text()                 # the record, byte for byte
    assert ds_config_text(engine._config._param_dict) == path.read_text()
    assert engine.zero_optimization_stage() == zero and engine.train_batch_size() == 2
    assert engine.gradient_clipping() == (0.0 if zero == 0 else 0.5)        # ZeRO 0 fp32: our AdamW clips
    if zero:
        assert engine.zero_reduce_bucket_size() == planned_bucket_elements(config.model, job.layout)
    assert DeepSpeedConfig(str(path)).zero_optimization_stage == zero       # DeepSpeed reads the file itself


def test_a_phase_builds_its_engine_from_its_ds_config_json(tmp_path, monkeypatch):
    from orchestrator.phases import supervised
    from orchestrator.phases.pretrain import Pretrain

    config = tiny_run(tmp_path)
    job = written_job(config)
    path = job.directory / DS_CONFIG_FILE
    edited = {**json.loads(path.read_text()), "wall_clock_breakdown": True}   # whatever the file says goes
    path.write_text(ds_config_text(edited))
    seen = {}
    monkeypatch.setattr(supervised, "build_runtime", lambda *args, **kwargs: seen.update(kwargs))
    Pretrain(PhaseContext(phase="pretrain", run_dir=Path(config.run_dir), config=config, rank=0, world=1)).build()
    assert seen["ds_config"] == edited


def test_a_phase_started_without_the_file_writes_what_the_runner_would_have(tmp_path):
    config = tiny_run(tmp_path)
    expected = written_job(config).directory / DS_CONFIG_FILE
    by_hand = PhaseContext(phase="pretrain", run_dir=tmp_path / "by-hand", config=config, rank=0, world=1)
    (by_hand.phase_dir).mkdir(parents=True)
    used = by_hand.ds_config()
    assert (by_hand.phase_dir / DS_CONFIG_FILE).read_text() == expected.read_text() == ds_config_text(used)


def test_the_runner_and_orchestrate_config_write_the_same_json_for_one_layout(tmp_path):
    """The checked-in GPT-3 175B example (``orchestrate config``) is what a run of that layout records."""
    example = DS_CONFIGS / "gpt3-175b-1024xa100-80g.json"
    plan = Plan.load(example.with_suffix(".plan.json"))
    layout = json.loads(example.with_suffix(".plan.json").read_text())["layout"]
    config = load_run_config({"name": "gpt3", "model": "gpt3-175b",
                              "cluster": {"gpu": "a100-80g", "nodes": plan.nodes, "gpus_per_node": plan.gpus_per_node},
                              "pretrain": {"layout": layout}})
    resolved = config.pretrain.layout.resolve(config.cluster.world)
    assert ds_config_text(phase_ds_config(config, phase="pretrain", layout=resolved)) == example.read_text()
