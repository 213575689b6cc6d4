"""Masks: local band, left padding, KV cache — each against a reference computed another way."""
import dataclasses

import pytest
import torch

from orchestrator.config.model import get_model
from orchestrator.model.attention import AttentionMasks, CausalSelfAttention, KVCache, visible_keys
from orchestrator.model.gpt import GPT
from orchestrator.model.params import init_parameters, param_shards


def model(preset: str = "tiny", **fields) -> GPT:
    config = dataclasses.replace(get_model(preset), dropout=0.0, **fields)
    gpt = GPT(config)
    init_parameters(param_shards(gpt), config=config, seed=3)
    return gpt.eval()


def test_a_token_in_a_local_layer_cannot_see_outside_its_window():
    config = dataclasses.replace(get_model("tiny-local"), local_window=4)
    attention = CausalSelfAttention(config, layer_index=1).eval()        # odd layers are local
    assert attention.is_local
    x = torch.randn(1, 12, config.d_model)
    masks = AttentionMasks.build(q_len=12, past=0, attention_mask=None, window=4, device=x.device)
    base = attention(x, masks=masks)
    query = 10                                   # sees keys 7, 8, 9, 10
    for key in range(12):
        moved = x.clone()
        moved[0, key] += 1.0
        changed = not torch.allclose(attention(moved, masks=masks)[0, query], base[0, query])
        assert changed == (7 <= key <= 10), key


def test_window_at_least_the_context_equals_dense_attention():
    dense = model("tiny", n_layers=4)
    local = model("tiny", n_layers=4, attention="alternating", local_window=128)   # ctx 128
    ids = torch.randint(0, 2048, (2, 128))
    assert torch.equal(dense(ids).logits, local(ids).logits)


def test_the_band_changes_the_output_when_the_window_is_short():
    dense, local = model("tiny", n_layers=4), model("tiny", n_layers=4, attention="alternating", local_window=8)
    ids = torch.randint(0, 2048, (1, 32))
    assert torch.allclose(dense(ids).logits[:, :8], local(ids).logits[:, :8], atol=1e-6)
    assert not torch.allclose(dense(ids).logits[:, 8:], local(ids).logits[:, 8:], atol=1e-3)


@pytest.mark.parametrize("preset", ["tiny", "tiny-local"])
def test_a_left_padded_row_gives_the_logits_of_the_unpadded_row(preset):
    gpt = model(preset)
    row = torch.randint(1, 2048, (1, 10))
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), row], dim=1)
    mask = torch.cat([torch.zeros(1, 6), torch.ones(1, 10)], dim=1).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = gpt(padded, attention_mask=mask, position_ids=positions).logits
    assert torch.allclose(out[:, 6:], gpt(row).logits, atol=1e-5)
    assert torch.isfinite(out).all()                  # padded queries attend to themselves, no NaN


@pytest.mark.parametrize("preset", ["tiny", "tiny-local"])
def test_decoding_with_the_kv_cache_gives_the_full_forward_logits(preset):
    gpt = model(preset, local_window=5) if preset == "tiny-local" else model(preset)
    ids = torch.randint(1, 2048, (2, 14))
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, :3] = 0                                   # row 1 is left-padded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    full = gpt(ids, attention_mask=mask, position_ids=positions).logits
    out = gpt(ids[:, :8], attention_mask=mask[:, :8], position_ids=positions[:, :8], kv_cache=KVCache.empty())
    steps = [out.logits]
    for t in range(8, 14):
        out = gpt(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=positions[:, t:t + 1],
                  kv_cache=out.kv_cache)
        steps.append(out.logits)
    assert out.kv_cache.length == 14
    cached = torch.cat(steps, dim=1)
    assert torch.allclose(cached[0], full[0], atol=1e-5)
    assert torch.allclose(cached[1, 3:], full[1, 3:], atol=1e-5)


def test_a_preallocated_cache_is_written_in_place_and_decodes_like_a_growing_one():
    gpt = model("tiny")
    ids = torch.randint(1, 2048, (2, 12))
    logits, caches = {}, {}
    for capacity in (None, 12):
        cache = KVCache.empty(capacity=capacity)
        out = gpt(ids[:, :6], kv_cache=cache, last_only=True)
        assert out.logits.shape == (2, 1, 2048) and out.kv_cache is cache
        buffer = cache.update(0, *(torch.zeros(2, 4, 0, 16) for _ in range(2)))[0]   # a zero-token write
        steps = [out.logits]
        for t in range(6, 12):
            steps.append(gpt(ids[:, t:t + 1], kv_cache=cache).logits)
        logits[capacity], caches[capacity] = torch.cat(steps, dim=1), cache
        if capacity:                    # no reallocation: the first step's buffer holds every token
            assert cache.update(0, *(torch.zeros(2, 4, 0, 16) for _ in range(2)))[0].data_ptr() == buffer.data_ptr()
    assert caches[12].length == caches[None].length == 12
    full = gpt(ids).logits
    assert torch.allclose(logits[12], full[:, 5:], atol=1e-5)
    assert torch.allclose(logits[None], logits[12], atol=1e-6)


def test_a_mask_that_does_not_cover_cache_and_input_is_refused():
    with pytest.raises(ValueError, match="covers 5 tokens but the cache holds 4 and the input 2"):
        AttentionMasks.build(q_len=2, past=4, attention_mask=torch.ones(1, 5), window=None, device=torch.device("cpu"))


def forward_with_masks(gpt: GPT, ids: torch.Tensor, masks: AttentionMasks, positions=None) -> torch.Tensor:
    """GPT.forward with the masks given instead of built (the logits, no cache)."""
    x = gpt.embed(ids, position_ids=positions, past=0)
    for block in gpt.h:
        x, _ = block(x, masks=masks)
    return gpt.wte.logits(gpt.ln_f(x))


def padding_mask(kind: str, batch: int = 3, seq: int = 20) -> torch.Tensor:
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row, pad in enumerate((0, 4, 9)[:batch]):
        if pad and kind == "right":
            mask[row, seq - pad:] = 0
        elif pad and kind == "left":
            mask[row, :pad] = 0
    return mask


@pytest.mark.parametrize("preset", ["tiny", "tiny-local"])
@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_the_shared_additive_masks_give_the_boolean_mask_outputs_on_every_real_token(preset, padding):
    gpt = model(preset, local_window=5) if preset == "tiny-local" else model(preset)
    ids, mask = torch.randint(1, 2048, (3, 20)), padding_mask(padding)
    positions = (mask.cumsum(-1) - 1).clamp(min=0) if padding == "left" else None
    window = gpt.config.local_window if gpt.config.attention == "alternating" else None
    boolean = AttentionMasks(*visible_keys(q_len=20, past=0, attention_mask=mask, window=window,
                                           device=ids.device))                # the path before: bool per layer
    expected = forward_with_masks(gpt, ids, boolean, positions)
    got = gpt(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert torch.allclose(got[real], expected[real], atol=1e-5, rtol=0)


def test_no_padding_and_right_padding_take_the_is_causal_path_and_left_padding_one_additive_mask():
    build = lambda mask, window=None, dtype=torch.float32: AttentionMasks.build(   # noqa: E731
        q_len=20, past=0, attention_mask=mask, window=window, device=torch.device("cpu"), dtype=dtype)
    assert build(None).dense is None and build(padding_mask("right")).dense is None
    left = build(padding_mask("left"), window=5, dtype=torch.bfloat16)
    assert left.dense.dtype == left.local.dtype == torch.bfloat16         # no bool → float per layer
    assert left.dense.shape == (3, 1, 20, 20)
    boolean, band = visible_keys(q_len=20, past=0, attention_mask=padding_mask("left"), window=5,
                                 device=torch.device("cpu"))
    assert torch.equal(left.dense == 0, boolean) and torch.equal(left.local == 0, band)
    assert torch.isinf(left.dense[~boolean]).all()
    right_local = build(padding_mask("right"), window=5).local           # windows still need the band
    assert right_local is not None and right_local.shape == (3, 1, 20, 20)
