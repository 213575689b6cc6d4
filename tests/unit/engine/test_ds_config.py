"""The DeepSpeed JSON: DeepSpeed itself accepts every config the planner writes, and the checked-in
examples are exactly what their commands regenerate."""
import json
import os
import shlex
import socket
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config.model import get_model
from orchestrator.engine.ds_config import build_ds_config, optimizer_clips, zero_section
from orchestrator.plan.artifact import Plan
from orchestrator.plan.layout import Layout
from orchestrator.plan.memory import planned_bucket_elements

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


TINY = get_model("tiny")


def test_batch_triple_uses_the_data_parallel_size_not_the_world():
    config = build_ds_config(Layout(tp=2, pp=2, dp=3, micro_batch=4, grad_accum=5), model=TINY)
    assert config["train_batch_size"] == 4 * 5 * 3


def test_buckets_are_the_memory_plans_and_overlap_is_on_for_gpus_only():
    layout = Layout(dp=4, zero_stage=3)
    cpu = build_ds_config(layout, model=TINY)["zero_optimization"]
    gpu = build_ds_config(layout, model=TINY, precision="bf16", gpu=True)["zero_optimization"]
    bucket = planned_bucket_elements(TINY, layout)
    assert cpu["reduce_bucket_size"] == cpu["stage3_prefetch_bucket_size"] == cpu["stage3_max_live_parameters"] == bucket
    assert cpu["overlap_comm"] is False and gpu["overlap_comm"] is True
    assert "reduce_bucket_size" not in zero_section(layout)   # DeepSpeed's defaults when no bucket is given


@pytest.mark.parametrize("zero,precision,clipping", [(0, "fp32", 0.0), (0, "bf16", 0.5), (1, "fp32", 0.5),
                                                     (2, "bf16", 0.5)])
def test_deepspeed_clips_except_where_our_optimizer_does(zero, precision, clipping):
    """ZeRO 0 in fp32: DeepSpeed hands AdamW the model's own parameters and our optimizer clips."""
    config = build_ds_config(Layout(zero_stage=zero), model=TINY, precision=precision, grad_clip=0.5)
    assert config["gradient_clipping"] == clipping
    assert optimizer_clips(Layout(zero_stage=zero), precision) is (clipping == 0.0)
    assert config["zero_allow_untested_optimizer"] is True


def test_monitors_and_activation_checkpointing_sections():
    layout = Layout(tp=2, dp=2, recompute="full", sequence_parallel=False)
    config = build_ds_config(layout, model=TINY, tensorboard_dir="tb", wandb_project="p", csv_dir="csv",
                             job_name="j")
    assert config["tensorboard"]["output_path"] == "tb" and config["wandb"]["project"] == "p"
    assert config["csv_monitor"]["output_path"] == "csv"
    assert config["activation_checkpointing"]["partition_activations"] is True
    sequence_parallel = build_ds_config(Layout(tp=2, dp=2, recompute="full", sequence_parallel=True), model=TINY)
    assert sequence_parallel["activation_checkpointing"]["partition_activations"] is False
