"""Activation bytes of fp32 runs: Korthikanti et al.'s 16-bit activations double, the
cross-entropy's logits are fp32 in every precision and do not."""
import pytest

from orchestrator.config.model import get_model
from orchestrator.plan.activations import stage_activation_bytes
from orchestrator.plan.layout import Layout

S, B = 128, 4


@pytest.mark.parametrize("stage", ["only", "last"])
def test_fp32_doubles_the_activations_but_not_the_fp32_logits(stage):
    model = get_model("gpt-25m")
    layout = Layout(dp=1, micro_batch=B) if stage == "only" else Layout(pp=2, dp=1, micro_batch=B, grad_accum=4)
    args = dict(seq=S, stage=stage, layers=range(model.n_layers // (1 if stage == "only" else 2)))
    half = stage_activation_bytes(model, layout, activation_bytes=2, **args)
    full = stage_activation_bytes(model, layout, activation_bytes=4, **args)
    logits = 4 * S * B * model.vocab
    assert full - logits == pytest.approx(2 * (half - logits))
    assert half > logits


def test_the_first_stage_holds_no_logits():
    model = get_model("gpt-25m")
    layout = Layout(pp=2, dp=1, micro_batch=B, grad_accum=4)
    args = dict(seq=S, stage="first", layers=range(3))
    assert stage_activation_bytes(model, layout, activation_bytes=4, **args) == pytest.approx(
        2 * stage_activation_bytes(model, layout, activation_bytes=2, **args))
