"""The DeepSpeed JSON: DeepSpeed itself accepts every config the planner writes, and the checked-in
examples are exactly what their commands regenerate."""
import json
import os
import shlex
import socket
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.engine.ds_config import build_ds_config
from orchestrator.plan.artifact import Plan
from orchestrator.plan.layout import Layout

DS_CONFIGS = Path(__file__).resolve().parents[3] / "ds_configs"
EXAMPLES = sorted(p for p in DS_CONFIGS.glob("*.json") if not p.name.endswith((".plan.json", ".launch.json")))


def regenerate_commands() -> list[list[str]]:
    lines = (DS_CONFIGS / "README.md").read_text().splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith("orchestrate config ")]


class DataParallelSizes:
    """What DeepSpeedConfig asks of an mpu: the data-parallel world size of the plan's grid."""

    def __init__(self, dp: int):
        self.dp = dp

    def get_data_parallel_world_size(self) -> int:
        return self.dp


@pytest.fixture(scope="module")
def one_rank_process_group():
    """DeepSpeedConfig reads the rank from deepspeed.comm; a real one-process gloo group provides it."""
    import deepspeed
    import torch.distributed as dist

    started = not dist.is_initialized()
    saved = dict(os.environ)
    if started:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        deepspeed.init_distributed(dist_backend="gloo")
    yield
    if started:
        dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


def test_the_examples_cover_pipeline_moe_zero3_and_offload():
    plans = [Plan.load(p.with_suffix(".plan.json")) for p in EXAMPLES]
    assert any(p.layout.pp > 1 for p in plans) and any(p.layout.ep > 1 for p in plans)
    assert any(p.layout.zero_stage == 3 and p.layout.offload_optimizer for p in plans)
    assert len(EXAMPLES) == len(regenerate_commands())


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_deepspeed_accepts_every_generated_config(path, one_rank_process_group):
    from deepspeed.runtime.config import DeepSpeedConfig

    plan = Plan.load(path.with_suffix(".plan.json"))
    config = DeepSpeedConfig(json.loads(path.read_text()), mpu=DataParallelSizes(plan.layout.dp))
    assert config.world_size == plan.layout.dp
    assert config.train_batch_size == plan.layout.micro_batch * plan.layout.grad_accum * plan.layout.dp
    assert config.zero_optimization_stage == plan.layout.zero_stage
    assert config.bfloat16_config.enabled


@pytest.mark.parametrize("argv", regenerate_commands(), ids=lambda argv: Path(argv[argv.index("-o") + 1]).stem)
def test_regenerating_an_example_gives_the_checked_in_files(argv, tmp_path, capsys):
    target = Path(argv[argv.index("-o") + 1]).name
    argv = [*argv[:argv.index("-o")], "-o", str(tmp_path / target), *argv[argv.index("-o") + 2:]]
    assert main(argv) == 0
    for written in tmp_path.iterdir():
        assert written.read_text() == (DS_CONFIGS / written.name).read_text(), written.name
    assert len(list(tmp_path.iterdir())) == 3


def test_batch_triple_uses_the_data_parallel_size_not_the_world():
    config = build_ds_config(Layout(tp=2, pp=2, dp=3, micro_batch=4, grad_accum=5))
    assert config["train_batch_size"] == 4 * 5 * 3


def test_buckets_and_overlap_are_written_only_when_asked():
    layout = Layout(dp=4, zero_stage=3)
    default = build_ds_config(layout)["zero_optimization"]
    planned = build_ds_config(layout, bucket_elements=1000, overlap_comm=True)["zero_optimization"]
    assert "reduce_bucket_size" not in default and default["overlap_comm"] is False
    assert planned["reduce_bucket_size"] == planned["stage3_prefetch_bucket_size"] == 1000
    assert planned["overlap_comm"] is True


def test_monitors_and_activation_checkpointing_sections():
    layout = Layout(tp=2, dp=2, recompute="full", sequence_parallel=False)
    config = build_ds_config(layout, tensorboard_dir="tb", wandb_project="p", csv_dir="csv", job_name="j")
    assert config["tensorboard"]["output_path"] == "tb" and config["wandb"]["project"] == "p"
    assert config["csv_monitor"]["output_path"] == "csv"
    assert config["activation_checkpointing"]["partition_activations"] is True
    sequence_parallel = build_ds_config(Layout(tp=2, dp=2, recompute="full", sequence_parallel=True))
    assert sequence_parallel["activation_checkpointing"]["partition_activations"] is False
