import pytest

from orchestrator.config.loader import ConfigError
from orchestrator.scaling.config import ScalingConfig, split_recipe


def test_the_scaling_section_and_its_overrides_are_split_from_the_recipe():
    recipe = {"model": "tiny", "scaling": {"points": 6, "lr": 1e-2}}
    scaling, rest, others = split_recipe(recipe, ["scaling.points=7", "pretrain.optim.lr=1e-3"])
    assert (scaling.points, scaling.lr) == (7, 1e-2)
    assert rest == {"model": "tiny"} and others == ["pretrain.optim.lr=1e-3"]


def test_a_recipe_without_a_scaling_section_gets_the_defaults():
    scaling, rest, _ = split_recipe({"model": "tiny"}, [])
    assert scaling == ScalingConfig() and rest == {"model": "tiny"}


@pytest.mark.parametrize("override, message", [
    ("scaling.points=3", "at least 5 runs"),
    ("scaling.max_fraction=2", "must be in \\(0, 1\\)"),
    ("scaling.spacing=1", "must be > 1"),
    ("scaling.form=median", "form"),
    ("scaling.compute=embedding", "compute"),
    ("scaling.min_layers=0", "min_layers"),
    ("scaling.rung_micro_batch=0", "rung_micro_batch"),
    ("scaling.pointz=6", "unknown key 'scaling.pointz'"),
])
def test_bad_scaling_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        split_recipe({}, [override])


def test_the_lr_rule_scales_with_width():
    config = ScalingConfig(lr=6e-3, lr_width=64, lr_exponent=0.5)
    assert config.lr_for(64) == 6e-3 and config.lr_for(16) == pytest.approx(1.2e-2)
