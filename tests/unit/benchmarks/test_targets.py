"""Every benchmark that trains takes ``--device`` and ``--precision`` (benchmarks.common), refuses a
bad value or a cuda device this process cannot have before anything starts, and hands the chosen
pair to what it launches: the rank workers' arguments, ``build_runtime`` itself, or the
``orchestrate run`` command line. No processes are started."""
import inspect
from pathlib import Path

import pytest

import benchmarks.dp_scaling as dp_scaling
import benchmarks.memory_accuracy as memory_accuracy
import benchmarks.moe_layouts as moe_layouts
import benchmarks.pipeline_bubble as pipeline_bubble
import benchmarks.rlhf_seeds as rlhf_seeds

ALL = [pipeline_bubble, memory_accuracy, dp_scaling, moe_layouts, rlhf_seeds]


def with_gpus(monkeypatch, module, count: int) -> None:
    """Pretend this process sees ``count`` GPUs (rlhf_seeds imports ``common`` as a top-level module,
    so patch the globals its own ``parse_target`` reads)."""
    monkeypatch.setitem(module.parse_target.__globals__, "visible_gpus", lambda: count)


@pytest.mark.parametrize("module", ALL, ids=lambda m: m.__name__.split(".")[-1])
def test_the_defaults_are_cpu_fp32_and_both_flags_are_accepted(module):
    _, target = module.parse_args([])
    assert (target.device, target.precision) == ("cpu", "fp32")
    _, target = module.parse_args(["--device", "cpu", "--precision", "bf16"])
    assert (target.device, target.precision) == ("cpu", "bf16")
    assert target.flags == "--device cpu --precision bf16"


@pytest.mark.parametrize("module", ALL, ids=lambda m: m.__name__.split(".")[-1])
@pytest.mark.parametrize("flags", [["--precision", "fp16"], ["--device", "tpu"], ["--device", "cuda:1"]])
def test_a_value_outside_the_choices_is_refused(module, flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        module.parse_args(flags)
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("module", ALL, ids=lambda m: m.__name__.split(".")[-1])
def test_cuda_without_a_visible_gpu_is_refused_with_the_reason(module, monkeypatch, capsys):
    with_gpus(monkeypatch, module, 0)
    with pytest.raises(SystemExit) as exit_:
        module.parse_args(["--device", "cuda"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda, but torch sees no GPU" in err and "--device cpu" in err


@pytest.mark.parametrize("module,flags,ranks", [(pipeline_bubble, ["--pp", "2", "4"], 4),
                                                (dp_scaling, ["--ranks", "1", "2"], 2),
                                                (memory_accuracy, [], 2), (moe_layouts, [], 8)],
                         ids=["pipeline_bubble", "dp_scaling", "memory_accuracy", "moe_layouts"])
def test_cuda_needs_a_gpu_for_every_rank(module, flags, ranks, monkeypatch, capsys):
    with_gpus(monkeypatch, module, ranks - 1)
    with pytest.raises(SystemExit):
        module.parse_args(flags + ["--device", "cuda"])
    assert f"{ranks} ranks asked for but {ranks - 1} GPU(s) visible" in capsys.readouterr().err
    with_gpus(monkeypatch, module, ranks)
    _, target = module.parse_args(flags + ["--device", "cuda", "--precision", "bf16"])
    assert (target.device, target.precision) == ("cuda", "bf16")


def bound(worker, worker_args: tuple) -> dict:
    """The worker's parameters as its launch arguments fill them (the call ``run_ranks`` makes)."""
    return inspect.signature(worker).bind(*worker_args).arguments


@pytest.mark.parametrize("device,precision", [("cpu", "bf16"), ("cuda", "fp32")])
def test_every_rank_worker_is_launched_with_the_chosen_target(device, precision, monkeypatch):
    for module in (pipeline_bubble, dp_scaling, memory_accuracy, moe_layouts):
        with_gpus(monkeypatch, module, 8)
    argv = ["--device", device, "--precision", precision]

    args, target = pipeline_bubble.parse_args(["--pp", "2", "4"] + argv)
    for pp in (2, 4):
        assert bound(pipeline_bubble.stage_worker, pipeline_bubble.stage_args(pp, args, target)) == dict(
            pp=pp, counts=[4, 8, 16], steps=3, warmup=1, device=device, precision=precision)

    args, target = dp_scaling.parse_args(["--ranks", "1", "2"] + argv)
    assert bound(dp_scaling.rank_worker, dp_scaling.worker_args(2, args, target)) == dict(
        ranks=2, steps=4, warmup=1, device=device, precision=precision)

    args, target = memory_accuracy.parse_args(["--models", "tiny"] + argv)
    jobs = memory_accuracy.launches(args, target)
    assert [world for world, _ in jobs] == [1, 2]
    for _, worker_args in jobs:
        arguments = bound(memory_accuracy.memory_worker, worker_args)
        assert (arguments["device"], arguments["precision"]) == (device, precision)

    _, target = moe_layouts.parse_args(argv)
    assert bound(moe_layouts.all_layouts_worker, moe_layouts.worker_args(target)) == dict(
        device=device, precision=precision)


class Built(Exception):
    """Raised by the stand-in ``build_runtime``: what the benchmark asked to build, and nothing built."""


def record_build(monkeypatch) -> None:
    import orchestrator.engine.build as build

    def build_runtime(*args, **kwargs):
        raise Built(kwargs)

    monkeypatch.setattr(build, "build_runtime", build_runtime)
    monkeypatch.setattr(build, "init_distributed", lambda **kwargs: None)


@pytest.mark.parametrize("device,precision", [("cpu", "bf16"), ("cuda", "fp32")])
def test_each_worker_asks_build_runtime_for_the_chosen_device_and_precision(device, precision, monkeypatch):
    record_build(monkeypatch)
    target = pipeline_bubble.Target(device, precision)
    calls = [lambda: pipeline_bubble.stage_worker(2, [4], 1, 0, device, precision),
             lambda: memory_accuracy.measure_case("tiny", 1, device=device, precision=precision),
             lambda: dp_scaling.ours(0, 1, target)]      # the moe worker: the next test
    for call in calls:
        with pytest.raises(Built) as built:
            call()
        kwargs = built.value.args[0]
        assert (kwargs["device_type"], kwargs["precision"]) == (device, precision)


def test_the_moe_worker_joins_and_builds_on_the_chosen_target(monkeypatch):
    import torch.distributed as dist

    record_build(monkeypatch)
    monkeypatch.setattr(dist, "get_world_size", lambda: 8)
    joined = {}
    import orchestrator.engine.build as build

    monkeypatch.setattr(build, "init_distributed", lambda **kwargs: joined.update(kwargs))
    with pytest.raises(Built) as built:
        moe_layouts.layout_worker({"ep": 2, "zero_stage": 1}, moe_layouts.Target("cuda", "bf16"))
    assert joined["device_type"] == "cuda"
    assert (built.value.args[0]["device_type"], built.value.args[0]["precision"]) == ("cuda", "bf16")


@pytest.mark.parametrize("device,precision,gpu", [("cpu", "fp32", "cpu"), ("cpu", "bf16", "cpu"),
                                                  ("cuda", "bf16", "h200")])
def test_rlhf_seeds_runs_every_phase_on_the_chosen_target(device, precision, gpu, monkeypatch):
    with_gpus(monkeypatch, rlhf_seeds, 1)
    args, target = rlhf_seeds.parse_args(["--seeds", "2", "--device", device, "--precision", precision,
                                          "--gpu-preset", "h200"])
    argv = rlhf_seeds.seed_command(2, Path(args.root), target, gpu_preset=args.gpu_preset)
    sets = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    assert f"cluster.precision={precision}" in sets and f"cluster.gpu={gpu}" in sets
    run_dir = Path(argv[argv.index("--run-dir") + 1])
    assert run_dir.name == ("seed2" if (device, precision) == ("cpu", "fp32") else f"seed2-{device}-{precision}")


def test_rlhf_seeds_refuses_a_gpu_preset_that_is_not_a_gpu(capsys):
    with pytest.raises(SystemExit):
        rlhf_seeds.parse_args(["--gpu-preset", "cpu"])
    assert "--gpu-preset 'cpu'" in capsys.readouterr().err


def test_a_section_for_another_target_has_its_own_heading():
    from benchmarks.common import CPU_FP32, Target

    assert CPU_FP32.heading("## X") == "## X"
    assert Target("cpu", "bf16").heading("## X") == "## X (cpu, bf16)"
    assert Target("cuda", "fp32").heading("## X") == "## X (cuda, fp32)"


def rlhf_result(seed, *, sft, ppo, ptx, rm=0.93, kl=1.5, losses=(4.7, 4.8, 4.69)):
    pipeline = {"pretrain": {"started": "2026-01-01T00:00:00", "metrics": {}},
                "sft": {"metrics": {"oracle_score": sft, "pretrain_loss": losses[0]}},
                "reward": {"metrics": {"pairwise_accuracy": rm}},
                "ppo": {"finished": "2026-01-01T00:03:00", "metrics": {"oracle_score": ppo, "kl": kl,
                                                                       "pretrain_loss": losses[1]}}}
    return rlhf_seeds.seed_metrics(seed, pipeline, {"metrics": {"oracle_score": ptx, "kl": kl,
                                                                "pretrain_loss": losses[2]}})


def test_rlhf_section_checks_every_goal_per_seed_and_gives_mean_and_sd():
    good = rlhf_result(1, sft=0.6, ppo=0.82, ptx=0.80)               # gain 0.22 ≥ 0.2; ptx keeps 91 %
    short = rlhf_result(2, sft=0.6, ppo=0.75, ptx=0.74, rm=0.89)     # gain 0.15 < 0.2; RM below 0.90
    assert rlhf_seeds.goals_met(good) == ["RM", "PPO", "ptx"]
    assert rlhf_seeds.goals_met(short) == ["ptx"]
    assert rlhf_seeds.goals_met(rlhf_result(3, sft=0.6, ppo=0.82, ptx=0.80, kl=2.5)) == ["RM", "ptx"]
    text = rlhf_seeds.section([good, short], "cmd")
    assert "| mean ± sd | 0.600 ± 0.000 | 0.910 ± 0.028 | 0.785 ± 0.049 | +0.185 ± 0.049 |" in text
    assert "RM 1/2, PPO 1/2, PPO-ptx 2/2" in text


def test_rlhf_seeds_never_rereads_an_old_root(tmp_path, capsys):
    (tmp_path / "seed1").mkdir()
    with pytest.raises(SystemExit):
        rlhf_seeds.parse_args(["--root", str(tmp_path)])
    assert "is not empty" in capsys.readouterr().err
    args, _ = rlhf_seeds.parse_args([])
    assert args.root.startswith("runs/bench-rlhf/") and not Path(args.root).exists()
