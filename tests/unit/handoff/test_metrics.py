import pytest

from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.metrics import append_metrics, last_value, read_metrics, series


def test_events_append_and_read_back_with_step_time_and_kind(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, step=1, kind="train", loss=3.0, lr=1e-3)
    append_metrics(path, step=2, kind="train", loss=float("nan"))
    append_metrics(path, step=2, kind="eval", eval_loss=2.5)
    records = read_metrics(path)
    assert [r["kind"] for r in records] == ["train", "train", "eval"] and all("time" in r for r in records)
    assert records[1]["loss"] is None
    assert series(records, "loss") == ([1], [3.0]) and last_value(records, "eval_loss") == 2.5


def test_a_line_cut_short_by_a_kill_is_ignored_but_a_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, step=1, kind="train", loss=1.0)
    with open(path, "a") as f:
        f.write('{"step": 2, "ki')
    assert len(read_metrics(path)) == 1
    with open(path, "a") as f:
        f.write('\n{"step": 3, "kind": "train"}\n')
    with pytest.raises(HandoffError, match="line 2 is not JSON"):
        read_metrics(path)


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(HandoffError, match="choose one of train, eval, final"):
        append_metrics(tmp_path / "m.jsonl", step=0, kind="test")
    assert not (tmp_path / "m.jsonl").exists()
    assert read_metrics(tmp_path / "missing.jsonl") == []
