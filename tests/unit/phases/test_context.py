from pathlib import Path

import pytest

from orchestrator.config.run import RunConfig
from orchestrator.phases.context import PhaseContext, load_run_tokenizer, parent_shards


def context(tmp_path: Path, phase: str) -> PhaseContext:
    return PhaseContext(phase=phase, run_dir=tmp_path, config=RunConfig(), rank=0, world=1)


def test_a_run_without_prepared_data_is_refused_with_the_command_that_prepares_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer at .*data/tokenizer: prepare the run's data with "
                                                r"`orchestrate run RECIPE --run-dir"):
        load_run_tokenizer(context(tmp_path, "sft"))


@pytest.mark.parametrize("phase, parent, head", [("sft", "pretrain", "lm"), ("reward", "sft", "lm"),
                                                 ("ppo", "sft", "lm"), ("ppo", "reward", "scalar")])
def test_a_parent_is_verified_with_the_head_this_phase_expects_of_it(tmp_path, monkeypatch, phase, parent, head):
    from orchestrator.phases import outputs

    seen = {}
    monkeypatch.setattr(outputs, "parent_shards", lambda run_dir, **kwargs: seen.update(kwargs) or run_dir)

    class Tokenizer:
        class info:
            tokenizer_hash = "abc"

    parent_shards(context(tmp_path, phase), parent=parent, tokenizer=Tokenizer())
    assert (seen["parent"], seen["head"], seen["tokenizer_hash"]) == (parent, head, "abc")
