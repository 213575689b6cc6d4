"""Activation bytes of fp32 runs: Korthikanti et al.'s 16-bit activations double, the
cross-entropy's logits are fp32 in every precision and do not, and dropout masks take the
device's mask width (bool on CUDA, the activations' dtype on a CPU)."""
import pytest

from orchestrator.config.model import get_model
from orchestrator.plan.activations import (dropout_mask_bytes, layer_bytes, layer_mask_elements,
                                           stage_activation_bytes)
from orchestrator.plan.layout import Layout

S, B = 128, 4


def masks_of(model, layout, *, seq, stage, layers):
    """Mask elements of a stage: every layer's, and the embedding's s·b·h without a pipeline."""
    per_layer = layer_mask_elements(model, seq=seq, micro_batch=B, tp=1, sequence_parallel=False, recompute="none")
    in_flight = 1 if stage != "first" else min(layout.pp, layout.grad_accum)
    return (per_layer * len(layers) + (seq * B * model.d_model if stage in ("only", "first") else 0)) * in_flight


@pytest.mark.parametrize("stage", ["only", "last"])
def test_fp32_doubles_the_activations_but_not_the_fp32_logits_nor_cudas_bool_masks(stage):
    model = get_model("gpt-25m")
    layout = Layout(dp=1, micro_batch=B) if stage == "only" else Layout(pp=2, dp=1, micro_batch=B, grad_accum=4)
    args = dict(seq=S, stage=stage, layers=range(model.n_layers // (1 if stage == "only" else 2)))
    half = stage_activation_bytes(model, layout, activation_bytes=2, **args)
    full = stage_activation_bytes(model, layout, activation_bytes=4, **args)
    logits, masks = 4 * S * B * model.vocab, masks_of(model, layout, **args)
    assert full - logits - masks == pytest.approx(2 * (half - logits - masks))
    assert half > logits


def test_cpu_masks_take_the_activation_width_and_cuda_masks_one_byte():
    """gpt-25m, s = 128, b = 4: per layer 2·s·b·h + a·s²·b = 524,288 + 524,288 mask elements
    (a·s/h = 2); fp32 on a CPU keeps them as 4-byte floats, 2 bytes more each than the
    formula's fp32 count."""
    model = get_model("gpt-25m")
    per_layer = layer_mask_elements(model, seq=S, micro_batch=B, tp=1, sequence_parallel=False, recompute="none")
    assert per_layer == 2 * S * B * model.d_model + model.n_heads * S * S * B == 1_048_576
    assert (dropout_mask_bytes("cpu", 4), dropout_mask_bytes("cpu", 2), dropout_mask_bytes("gpu", 4)) == (4, 2, 1)
    layout, args = Layout(dp=1, micro_batch=B), dict(seq=S, stage="only", layers=range(model.n_layers))
    cpu = stage_activation_bytes(model, layout, activation_bytes=4, mask_bytes=4, **args)
    legacy = stage_activation_bytes(model, layout, activation_bytes=4, mask_bytes=2, **args)  # masks scaled like the rest
    assert cpu - legacy == pytest.approx(2 * masks_of(model, layout, **args))


def test_bf16_on_gpus_is_korthikantis_count_unchanged():
    """16-bit activations with CUDA's 1-byte masks are the formula's own count: two gpt3-175b
    layers (tp 8) are 2 · sbh·(10 + 24/8 + 5as/(8h)), plus the embedding mask s·b·h, the final
    LayerNorm and LM-head inputs 4·s·b·h and the fp32 logits 4·s·b·V/8."""
    model = get_model("gpt3-175b")
    s, h, a = 2048, 12288, 96
    sbh = s * h
    layout = Layout(tp=8, pp=1, dp=1, micro_batch=1)
    total = stage_activation_bytes(model, layout, seq=s, stage="only", layers=range(2), activation_bytes=2,
                                   mask_bytes=dropout_mask_bytes("gpu", 2))
    layers = 2 * sbh * (10 + 24 / 8 + 5 * a * s / (h * 8))
    assert total == pytest.approx(layers + sbh + 4 * sbh + 4 * s * 50264 / 8)
