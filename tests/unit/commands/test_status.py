import json

import pytest

from orchestrator.cli import main
from run_dir_builder import begin, mixed_run, save, train


def test_status_shows_each_phase_with_status_step_metric_and_checkpoint(tmp_path, capsys):
    run_dir = mixed_run(tmp_path / "run")
    assert main(["status", str(run_dir)]) == 1  # the reward phase failed
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["phase", "status", "step", "key", "metric", "checkpoint", "time"]
    rows = {line.split()[0]: line.split() for line in lines[2:6]}
    assert rows["pretrain"][1:6] == ["complete", "40", "eval_loss", "1.4", "checkpoints/final"]
    assert rows["reward"][1:6] == ["failed", "12", "pairwise_accuracy", "0.86", "checkpoints/step_00000010"]
    assert rows["ppo"][1:] == ["pending", "-", "-", "-", "-"]
    assert "reward: loss was NaN 3 times in a row" in lines


def test_a_running_phase_shows_its_latest_metrics_and_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    begin(run_dir, "pretrain")
    train(run_dir, "pretrain", range(1, 26), loss=lambda s: 5.0 - 0.1 * s)
    save(run_dir, "pretrain", "step_00000020")
    (run_dir / "pretrain" / "checkpoints" / ".step_00000025.staging").mkdir()  # a save in progress
    assert main(["status", str(run_dir), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["status"], row["step"], row["checkpoint"]) == ("running", 25, "checkpoints/step_00000020")
    assert row["metric"] == {"eval_loss": pytest.approx(3.1)}
    assert (run_dir / "pretrain" / "checkpoints" / ".step_00000025.staging").is_dir()  # status only reads


def test_status_of_a_missing_run_directory_says_how_to_make_one(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "run directory" in capsys.readouterr().err
