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
