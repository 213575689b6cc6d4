"""The pipeline's stage split is the planner's, even when pp does not divide the layers."""
import pytest
from deepspeed.runtime.utils import partition_balanced

from orchestrator.model.pipeline import FIRST_BLOCK, check_stage_bounds, planned_stage_bounds
from orchestrator.plan.partition import layers_per_stage


@pytest.mark.parametrize("n_layers, pp", [(2, 2), (12, 4), (10, 4), (7, 3), (120, 16)])
def test_deepspeeds_type_split_is_the_planners_split(n_layers, pp):
    weights = [0] * FIRST_BLOCK + [1] * n_layers + [0, 0]  # what partition_method="type:PipeBlock" weighs
    deepspeed_parts = [int(p) for p in partition_balanced(weights, pp)]
    assert deepspeed_parts == planned_stage_bounds(n_layers=n_layers, pp=pp)
    check_stage_bounds(deepspeed_parts, n_layers=n_layers, pp=pp)


def test_gpt4_moe_stages_are_eight_of_8_then_eight_of_7():
    assert layers_per_stage(120, 16) == (8,) * 8 + (7,) * 8
    bounds = planned_stage_bounds(n_layers=120, pp=16)
    assert [b - a for a, b in zip(bounds[1:-2], bounds[2:-1])] == [8] * 7 + [7] * 7


def test_a_split_that_differs_from_the_plan_is_refused():
    with pytest.raises(RuntimeError, match=r"planner at \[0, 5, 8, 10, 14\]"):
        check_stage_bounds([0, 4, 7, 10, 14], n_layers=10, pp=4)


def test_an_expert_state_dict_has_no_empty_extra_state_to_clone():
    """DeepSpeed's per-expert checkpoint clones every expert entry; Megatron's TP linears add
    ``_extra_state: None``, which the MoE FFN's state-dict hook drops (and Megatron restores on load)."""
    from torch import nn

    from orchestrator.model.moe import _drop_empty_extra_state

    class MegatronLike(nn.Linear):
        def get_extra_state(self):
            return None

        def set_extra_state(self, state):
            pass

    ffn = nn.Module()
    ffn.experts = nn.ModuleList([MegatronLike(4, 4)])
    assert any(key.endswith("_extra_state") for key in ffn.state_dict())
    ffn.register_state_dict_post_hook(_drop_empty_extra_state)
    state = ffn.state_dict()
    assert sorted(state) == ["experts.0.bias", "experts.0.weight"]
    assert all(value is not None and value.clone() is not None for value in state.values())
