import pytest

from orchestrator.config.loader import ConfigError
from orchestrator.config.run import SamplingConfig, load_run_config


def test_precedence_is_defaults_then_recipe_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tiny\nseed: 7\npretrain:\n  optim: {lr: 1.0e-3}\n")
    config = load_run_config(recipe, ["pretrain.optim.lr=2e-3"])
    assert config.seed == 7                         # recipe beats default
    assert config.pretrain.optim.lr == 2e-3         # override beats recipe
    assert config.pretrain.optim.beta2 == 0.95      # default kept


def test_model_overrides_change_a_preset():
    config = load_run_config({"model": "tiny"}, ["model.n_layers=6"])
    assert config.model.n_layers == 6 and config.model.d_model == 64


def test_model_from_a_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("preset: gpt3-small\nn_layers: 2\n")
    assert load_run_config({"model": str(path)}).model.n_layers == 2


@pytest.mark.parametrize("override,message", [
    ("pretrain.optim.lrr=1", "unknown key 'pretrain.optim.lrr': valid keys are lr"),
    ("pretrain.layout.tp=two", "pretrain.layout.tp='two' must be int"),
    ("pretrain.layout.recompute=half", "choose one of none, selective, full"),
    ("model=gpt5", "unknown model 'gpt5'"),
    ("launch.launcher=mpirun", "choose one of deepspeed, torchrun, accelerate"),
    ("sft.loop.steps=true", "must be an integer"),
    ("nonsense=1", "unknown key 'nonsense'"),
])
def test_a_wrong_override_is_refused_with_the_key_and_choices(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_run_config({}, [override])


def test_reward_candidates_sample_with_their_own_settings_whose_defaults_are_ppos():
    config = load_run_config({}, ["reward.sampling.temperature=0.7", "ppo.top_p=0.9"])
    assert config.reward.sampling == SamplingConfig(temperature=0.7, top_p=1.0, max_new_tokens=16)
    assert config.ppo.sampling == SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=16)
    assert load_run_config({}).reward.sampling == load_run_config({}).ppo.sampling


def test_shipped_tiny_recipe_loads():
    config = load_run_config("recipes/tiny.yaml")
    assert config.model.name == "tiny" and config.phases == ["pretrain", "sft", "reward", "ppo"]


def test_the_labeller_defaults_to_wordlist_for_the_shipped_task_and_none_for_your_data():
    from orchestrator.config.run import load_run_config
    assert load_run_config({}).data.labeller_spec == "wordlist"
    own = load_run_config({"data": {"ppo": {"path": "p.jsonl"}}, "reward": {"candidates": "file"}})
    assert own.data.labeller_spec == "none"
    assert load_run_config({"data": {"ppo": {"path": "p.jsonl"}, "labeller": "wordlist"}}).data.labeller_spec == "wordlist"


@pytest.mark.parametrize("data", [{"labeller": "none"}, {"sft": {"path": "s.jsonl"}}, {"task_dir": "mine"}])
def test_policy_candidates_without_a_labeller_are_refused_naming_the_fix(data):
    from orchestrator.config.loader import FieldError
    from orchestrator.config.run import load_run_config
    with pytest.raises(FieldError, match="reward.candidates='policy'.*set reward.candidates: file"):
        load_run_config({"data": data})
    load_run_config({"data": data, "phases": ["pretrain", "sft"]})           # no reward phase: nothing to rank


@pytest.mark.parametrize("mix, micro_batch, message", [(0.01, 32, "rounds to 0"), (0.99, 8, "rounds to 8"),
                                                       (1.0, 8, r"must be in \[0, 1\)")])
def test_a_pretrain_mix_must_leave_room_for_both_kinds_of_row(mix, micro_batch, message):
    from orchestrator.config.loader import FieldError
    from orchestrator.config.run import load_run_config
    with pytest.raises(FieldError, match=f"sft.pretrain_mix.*{message}"):
        load_run_config({"sft": {"pretrain_mix": mix, "layout": {"micro_batch": micro_batch}}})
    assert load_run_config({"sft": {"pretrain_mix": 0.25, "layout": {"micro_batch": 16}}}).sft.pretrain_rows == 4


def test_the_shipped_byod_recipe_validates_and_its_data_passes_the_pre_launch_check():
    from pathlib import Path
    from orchestrator.config.run import load_run_config
    from orchestrator.runner.prepare import check_data
    repo = Path(__file__).resolve().parents[3]
    config = load_run_config(repo / "recipes" / "byod-example.yaml")
    assert config.data.labeller_spec == "none" and config.reward.candidates == "file"
    assert config.data.reward.format == "pairwise" and config.sft.pretrain_mix > 0
    import os
    cwd = os.getcwd()
    try:
        os.chdir(repo)                      # the recipe's paths are relative to the repository
        check_data(config)
    finally:
        os.chdir(cwd)
