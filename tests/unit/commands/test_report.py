import matplotlib.image

from orchestrator.cli import main
from run_dir_builder import begin, finish, mixed_run, train


def test_report_plots_every_phase_with_metrics_and_summarises_them(tmp_path, capsys):
    run_dir = mixed_run(tmp_path / "run")
    assert main(["report", str(run_dir)]) == 0
    out_dir = run_dir / "report"
    assert sorted(p.name for p in out_dir.glob("*.png")) == ["pretrain.png", "reward.png", "sft.png"]
    width_one = matplotlib.image.imread(out_dir / "pretrain.png").shape[1]
    assert matplotlib.image.imread(out_dir / "reward.png").shape[1] > 1.5 * width_one  # accuracy and loss panels
    report = (out_dir / "report.md").read_text()
    assert "| pretrain | complete | 40 | eval_loss 1.4 | eval_loss 1.4, perplexity 4.06 |" in report
    assert "| ppo | pending | - | - | - | - |" in report
    assert "![reward](reward.png)" in report and "reward failed: loss was NaN 3 times in a row" in report


def test_report_of_a_ppo_run_plots_reward_and_kl(tmp_path):
    run_dir = tmp_path / "run"
    for phase in ("pretrain", "sft"):
        finish(run_dir, phase, begin(run_dir, phase), 1)
    finish(run_dir, "reward", begin(run_dir, "reward", head="scalar"), 1)
    ppo = begin(run_dir, "ppo")
    train(run_dir, "ppo", range(1, 9), reward=lambda s: 0.1 * s, kl=lambda s: 0.05 * s)
    finish(run_dir, "ppo", ppo, 8, reward=0.8, kl=0.4)
    assert main(["report", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == ["ppo.png"]
    assert "| ppo | complete | 8 | reward 0.8 | reward 0.8, kl 0.4 |" in (tmp_path / "out" / "report.md").read_text()


def test_the_final_event_extends_the_eval_curve(tmp_path):
    from orchestrator.commands.report import panel_series
    records = ({"step": 5, "kind": "eval", "eval_loss": 2.0}, {"step": 6, "kind": "train", "loss": 1.9},
               {"step": 10, "kind": "final", "eval_loss": 1.5})
    assert panel_series(records, ("loss", "eval_loss")) == [("loss (train)", [6], [1.9]),
                                                             ("eval_loss (eval)", [5, 10], [2.0, 1.5])]
