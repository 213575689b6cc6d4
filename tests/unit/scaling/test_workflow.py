"""``orchestrate scaling`` end to end through the real runner, with a stand-in pretrain phase that
lands on a known law (``law_stand_in.py``), so the ladder's bookkeeping is tested without training."""
import io
import os
import json
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.engine.launch.ports import free_port
from orchestrator.config.loader import ConfigError
from orchestrator.config.run import load_run_config
from orchestrator.scaling.runner import RungNotFinished, check_planned, rung_config, rung_dir
from orchestrator.scaling.analysis import predict
from orchestrator.scaling.workflow import (load_setup, repeat_seeds, run_lr_sweep, run_scaling, sweep_setups,
                                          trust_warnings)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import law_stand_in  # noqa: E402
RUNGS = ["r1-1x4", "r2-1x8", "r3-1x12", "r4-1x16", "r5-1x20"]


def write_recipe(tmp_path, **scaling):
    recipe = {"name": "t", "run_dir": str(tmp_path / "run"), "model": {"preset": "tiny", "n_heads": 16, "d_head": 4},
              "launch": {"launcher": "torchrun", "master_port": free_port(), "env": {"PYTHONPATH": str(HERE)}},
              "phases": ["pretrain"], "pretrain": {"layout": {"micro_batch": 16}, "loop": {"seq_len": 128}},
              "scaling": {"target": "3x64", **scaling}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def scale(recipe, *, overrides=(), train=True, train_target=True):
    out = io.StringIO()
    setup = load_setup(recipe, run_dir=None, overrides=list(overrides))
    code = run_scaling(setup, train=train, train_target=train_target, entry_module="law_stand_in", with_data=False,
                       out=out)
    return code, out.getvalue(), setup.run_dir


def test_a_ladder_trains_each_rung_as_a_pretrain_job_resumes_a_failed_one_and_predicts_the_target(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path)
    monkeypatch.setenv("LAW_STAND_IN_FAIL", "r3-1x12")
    code, out, run_dir = scale(recipe)
    assert code != 0 and "r3-1x12 failed (exit code" in out and f"orchestrate scaling {recipe}" in out
    assert (run_dir / "ladder" / "r2-1x8" / "pretrain" / "manifest.json").is_file()
    with pytest.raises(RungNotFinished, match="r3-1x12 has not finished .*running at step 0.*orchestrate scaling"):
        scale(recipe, train=False)

    code, out, _ = scale(recipe)
    assert code == 0, out
    assert out.count("[pretrain] skip: complete") == 2 and "pretrain: resuming r3-1x12" in out
    record = json.loads((run_dir / "scaling.json").read_text())
    assert [row["name"] for row in record["ladder"]] == RUNGS
    assert all(row["fraction"] <= 1 / 32 for row in record["ladder"])
    target = record["target"]
    assert abs(target["error"]) < 0.02 and target["inside_band"]
    assert target["band"][0] < target["predicted_loss"] < target["band"][1]
    assert {c["form"] for c in record["fit"]["leave_top_out"]} == {"zero", "free"}
    assert record["fit"]["reason"].startswith("auto:") and record["cluster"] is None
    assert (run_dir / "scaling.png").stat().st_size > 10_000

    code, out, _ = scale(recipe)
    assert code == 0 and out.count("[pretrain] skip: complete") == 6
    assert main(["report", str(run_dir)]) == 0
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Scaling" in report and "![scaling](scaling.png)" in report and "| **target-3x64** |" in report

    with pytest.raises(ValueError, match=r"r1-1x4 was planned with other settings \(pretrain.optim.lr"):
        scale(recipe, overrides=["scaling.lr=1e-2"])


def test_fit_only_before_any_run_names_the_first_missing_rung_and_the_command(tmp_path):
    recipe = write_recipe(tmp_path)
    with pytest.raises(RungNotFinished, match="r1-1x4 has not finished .*not started"):
        scale(recipe, train=False)


def test_the_cli_prints_the_ladder_and_a_gpu_clusters_cost_on_a_dry_run(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    code = main(["scaling", recipe, "--target", "gpt3-175b", "--dry-run", "--set", "cluster.gpu=a100-80g",
                 "--set", "cluster.nodes=128", "--set", "cluster.gpus_per_node=8", "--set", "model.ctx=2048",
                 "--set", "pretrain.loop.seq_len=2048", "--set", "pretrain.layout.micro_batch=1"])
    out = capsys.readouterr().out
    assert code == 0 and "ladder of 5 for target gpt3-175b" in out
    assert "target on 1024 × a100-80g" in out and "GPU-days" in out and "days wall clock" in out
    assert not (tmp_path / "run").exists()


def test_the_cli_refuses_too_few_points(tmp_path, capsys):
    assert main(["scaling", write_recipe(tmp_path), "--points", "4", "--dry-run"]) == 2
    assert "at least 5 runs" in capsys.readouterr().err


def test_a_ladder_whose_own_check_errs_beyond_2_percent_is_warned_about():
    compute = [1.02e10, 4.22e10, 9.89e10, 1.83e11, 2.97e11]
    bent = [6.00507, 5.68310, 5.44901, 5.09232, 4.78125]  # recipes/scaling-tiny.yaml's measured ladder
    warnings = trust_warnings(predict(compute, bent, target_compute=1.14e13, form="auto", level=0.95))
    assert len(warnings) == 1 and "erred +5.7% (beyond 2%)" in warnings[0]
    straight = [30.0 * c ** -0.1 for c in compute]
    assert trust_warnings(predict(compute, straight, target_compute=1.14e13, form="auto", level=0.95)) == []


def test_a_rung_may_resume_under_another_layout_but_not_with_another_global_batch(tmp_path):
    def config(**layout):
        return load_run_config({"model": "tiny", "cluster": {"gpus_per_node": 2}, "pretrain": {"layout": layout}})

    check_planned(tmp_path, config(micro_batch=8))            # dp 2 × 8 = 16 sequences a step
    check_planned(tmp_path, config(tp=2, micro_batch=16))     # tp 2, dp 1 × 16: the same batch
    with pytest.raises(ValueError, match="pretrain.global_batch 16 → 8"):
        check_planned(tmp_path, config(micro_batch=4))


def test_a_rung_micro_batch_is_the_rungs_layout_and_plan_and_not_the_targets(tmp_path):
    setup = load_setup(write_recipe(tmp_path, rung_micro_batch=4), run_dir=None, overrides=[])
    assert setup.ladder.rung_tokens_per_step == 4 * 128 and setup.ladder.tokens_per_step == 16 * 128
    rung = rung_config(setup.base, setup.ladder.rungs[0], family=setup.target, run_dir=setup.run_dir, eval_batches=64)
    target = rung_config(setup.base, setup.ladder.target, family=setup.target, run_dir=setup.run_dir, eval_batches=64)
    assert rung.pretrain.layout.micro_batch == 4 and target.pretrain.layout.micro_batch == 16
    check_planned(tmp_path / "r1", rung)
    assert json.loads((tmp_path / "r1" / "rung.json").read_text())["pretrain"]["global_batch"] == 4


def finish_ladder(setup, *, target=False):
    """Every rung (and the target) complete, in-process: the stand-in's result without a launcher."""
    runs = [(rung, seed) for rung in setup.ladder.rungs for seed in repeat_seeds(setup)]
    for rung, seed in runs + ([(setup.ladder.target, None)] if target else []):
        config = rung_config(setup.base, rung, family=setup.target, run_dir=setup.run_dir,
                             eval_batches=setup.scaling.eval_batches, seed=seed)
        law_stand_in.finish(rung_dir(setup.run_dir, rung, seed), config, {"micro_batch": 16, "grad_accum": 1, "dp": 1})


def test_scaling_compute_non_embedding_fits_the_ladder_on_its_non_embedding_flops(tmp_path):
    recipe = write_recipe(tmp_path)
    finish_ladder(load_setup(recipe, run_dir=None, overrides=[]), target=True)
    code, out, run_dir = scale(recipe, overrides=["scaling.compute=non_embedding"], train=False)
    assert code == 0, out
    record = json.loads((run_dir / "scaling.json").read_text())
    rows, target = record["ladder"], record["target"]
    assert record["fit_compute"] == "flops_non_embedding"
    assert record["fit"]["target_compute"] == target["flops_non_embedding"] < target["flops"]
    expected = predict([r["flops_non_embedding"] for r in rows], [r["eval_loss"] for r in rows],
                       target_compute=target["flops_non_embedding"], form="auto", level=0.95)
    assert target["predicted_loss"] == pytest.approx(expected.loss)


SWEEP = [0.35, 0.7, 1.4]


def test_an_lr_sweep_of_the_ladder_fits_the_rule_its_runs_are_best_at(tmp_path):
    recipe = write_recipe(tmp_path)
    swept = ["scaling.lr=6e-3", "scaling.lr_exponent=0.75"]  # the stand-in is best at 6e-3 · (64 / d)^½
    base, setups = sweep_setups(recipe, run_dir=None, overrides=swept, multipliers=SWEEP)
    assert [str(s.run_dir) for _, s in setups] == [str(base.run_dir / f"lr-x{m:g}") for m in SWEEP]
    assert [s.ladder.rungs[0].lr for _, s in setups] == pytest.approx([m * 6e-3 * 16 ** 0.75 for m in SWEEP])
    for _, setup in setups:
        finish_ladder(setup)
    out = io.StringIO()
    assert run_lr_sweep(recipe, run_dir=None, overrides=swept, multipliers=SWEEP, train=False, out=out) == 0
    record = json.loads((base.run_dir / "lr_sweep.json").read_text())
    rule = record["fitted_rule"]
    assert rule["lr"] == pytest.approx(6e-3, rel=1e-6) and rule["lr_exponent"] == pytest.approx(0.5, rel=1e-6)
    assert [row["name"] for row in rule["rungs"]] == RUNGS and record["multipliers"] == SWEEP
    assert record["use"] == "--set scaling.lr=0.006 --set scaling.lr_exponent=0.50" and record["use"] in out.getvalue()


def test_an_lr_sweep_with_unfinished_runs_or_too_few_multipliers_is_refused(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    with pytest.raises(RungNotFinished, match="r1-1x4 has not finished"):
        run_lr_sweep(recipe, run_dir=None, overrides=[], multipliers=SWEEP, train=False, out=io.StringIO())
    assert main(["scaling", recipe, "--lr-sweep", "1,2", "--dry-run"]) == 2
    assert "at least 3 distinct positive LR multipliers" in capsys.readouterr().err


def test_a_target_that_repeats_its_corpus_more_than_max_epochs_is_warned_about_in_the_record(tmp_path):
    recipe = write_recipe(tmp_path)
    setup = load_setup(recipe, run_dir=None, overrides=[])
    finish_ladder(setup, target=True)
    (setup.run_dir / "data").mkdir()
    corpus = setup.ladder.target.tokens // 5  # the target reads it 5 times, the largest rung under 4
    (setup.run_dir / "data" / "data.json").write_text(json.dumps({"corpus": {"train_tokens": corpus}}))
    code, out, _ = scale(recipe, train=False)
    warnings = json.loads((setup.run_dir / "scaling.json").read_text())["warnings"]
    assert code == 0 and len(warnings) == 1 and f"warning: {warnings[0]}" in out
    assert warnings[0].startswith(f"target-3x64 repeats its {corpus:,} training tokens 5.0 times (> 4 epochs")
    (setup.run_dir / "data" / "data.json").write_text(json.dumps({"corpus": {"train_tokens": corpus * 2}}))
    assert scale(recipe, train=False)[0] == 0
    assert json.loads((setup.run_dir / "scaling.json").read_text())["warnings"] == []


def test_with_seeds_each_rung_repeats_at_the_next_seeds_and_the_fit_takes_their_mean(tmp_path):
    recipe = write_recipe(tmp_path, seeds=3)
    setup = load_setup(recipe, run_dir=None, overrides=[])
    assert repeat_seeds(setup) == [None, 1235, 1236]
    config = rung_config(setup.base, setup.ladder.rungs[0], family=setup.target, run_dir=setup.run_dir,
                         eval_batches=64, seed=1236)
    assert config.seed == 1236 and config.run_dir == str(setup.run_dir / "ladder" / "r1-1x4-seed1236")
    with pytest.raises(RungNotFinished, match="r1-1x4-seed1235 has not finished"):
        finish_ladder(load_setup(recipe, run_dir=None, overrides=["scaling.seeds=1"]), target=True)
        scale(recipe, train=False)
    finish_ladder(setup, target=True)
    code, out, run_dir = scale(recipe, train=False)
    assert code == 0, out
    for row in json.loads((run_dir / "scaling.json").read_text())["ladder"]:
        low, middle, high = sorted(row["seed_losses"])
        assert low < middle < high and row["eval_loss"] == pytest.approx((low + middle + high) / 3)
        assert row["seed_spread"] == pytest.approx((high - low) / row["eval_loss"]) and row["seed_spread"] > 0
        assert middle == pytest.approx(row["eval_loss"], rel=1e-12)  # the stand-in's seeds scatter ±0.4 % about it


def test_scaling_jobs_trains_runs_side_by_side_on_a_share_of_the_cores_each(tmp_path):
    recipe = write_recipe(tmp_path, jobs=2)
    code, out, run_dir = scale(recipe)
    assert code == 0, out
    assert "6 runs, 2 side by side" in out
    assert "[target-3x64] [scaling] target-3x64:" in out and "[r1-1x4] [scaling] r1-1x4:" in out
    setup = load_setup(recipe, run_dir=None, overrides=[])
    threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
    for rung in [*setup.ladder.rungs, setup.ladder.target]:
        config = load_run_config(yaml.safe_load((rung_dir(run_dir, rung) / "run_config.yaml").read_text()))
        assert config.launch.env["OMP_NUM_THREADS"] == threads and config.launch.master_port is None
    record = json.loads((run_dir / "scaling.json").read_text())
    for row, rung in zip(record["ladder"], setup.ladder.rungs):   # the same runs as one at a time would train
        assert row["eval_loss"] == pytest.approx(law_stand_in.law(rung.flops, n_layers=rung.n_layers,
                                                                  d_model=rung.d_model, lr=rung.lr, seed=1234))


def test_scaling_jobs_is_refused_for_runs_of_more_than_one_rank(tmp_path):
    recipe = write_recipe(tmp_path, jobs=2)
    with pytest.raises(ConfigError, match=r"scaling.jobs=2 .* use 2 ranks .* set scaling.jobs=1"):
        load_setup(recipe, run_dir=None, overrides=["cluster.gpus_per_node=2"])
    with pytest.raises(ConfigError, match="scaling.jobs=0 must be >= 1"):
        load_setup(recipe, run_dir=None, overrides=["scaling.jobs=0"])
