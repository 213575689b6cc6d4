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


def test_the_report_shows_the_alignment_tax_and_the_sft_level_under_ppo(tmp_path, monkeypatch):
    from orchestrator.commands import report
    from orchestrator.handoff.metrics import append_metrics

    run_dir = tmp_path / "run"
    finish(run_dir, "pretrain", begin(run_dir, "pretrain"), 1, eval_loss=5.0, pretrain_loss=5.0)
    finish(run_dir, "sft", begin(run_dir, "sft"), 1, pretrain_loss=5.25, oracle_score=0.6)
    finish(run_dir, "reward", begin(run_dir, "reward", head="scalar"), 1, pretrain_loss=5.5)
    ppo = begin(run_dir, "ppo")
    train(run_dir, "ppo", range(1, 5), reward=lambda s: 0.1 * s, kl=lambda s: 0.05 * s)
    append_metrics(run_dir / "ppo" / "metrics.jsonl", step=4, kind="final", reward=0.5, sft_reward=0.2,
                   pretrain_loss=5.4, oracle_score=0.7, sft_oracle_score=0.61)
    finish(run_dir, "ppo", ppo, 4, reward=0.5, sft_reward=0.2, pretrain_loss=5.4)
    drawn = []
    real_plot = report.plot_phase
    monkeypatch.setattr(report, "plot_phase", lambda s, out, refs=None: drawn.append((s.phase, refs)) or real_plot(s, out, refs))
    assert main(["report", str(run_dir)]) == 0
    text = (run_dir / "report" / "report.md").read_text()
    assert "## Alignment tax" in text
    assert "| pretrain | 5.0000 | +0.000 |" in text and "| sft | 5.2500 | +0.250 |" in text
    assert "| reward | 5.5000 | +0.500 |" in text and "| ppo | 5.4000 | +0.400 |" in text
    assert dict(drawn)["ppo"] == {"pretrain_loss": 5.25, "oracle_score": 0.61, "reward": 0.2}
    assert dict(drawn)["sft"] is None


def test_an_imported_pretrain_takes_the_loss_sft_measured_on_the_recipes_corpus(tmp_path):
    from orchestrator.commands.report import pretrain_losses
    from orchestrator.runner.summary import summarize

    run_dir = tmp_path / "run"
    finish(run_dir, "pretrain", begin(run_dir, "pretrain"), 0)
    finish(run_dir, "sft", begin(run_dir, "sft"), 3, pretrain_loss=6.0, parent_pretrain_loss=7.5)
    assert pretrain_losses(summarize(run_dir)) == [("pretrain", 7.5, "measured by sft"), ("sft", 6.0, "manifest")]
