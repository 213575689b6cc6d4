"""The plain GPT: Hugging Face GPT-2 names and numbers, heads, init, recompute."""
import dataclasses

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from orchestrator.config.model import get_model
from orchestrator.model.gpt import GPT
from orchestrator.model.params import init_parameters, param_shards

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt(preset="tiny", head="lm", **fields) -> GPT:
    config = dataclasses.replace(get_model(preset), **fields)
    model = GPT(config, head=head)
    init_parameters(param_shards(model), config=config, seed=11)
    return model


def test_state_dict_loads_into_hf_gpt2_by_prefix_and_transpose_and_gives_the_same_logits():
    model = gpt().eval()
    c = model.config
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab, n_positions=c.ctx, n_embd=c.d_model, n_layer=c.n_layers,
                                    n_head=c.n_heads, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                                    layer_norm_epsilon=c.layer_norm_eps, bos_token_id=0, eos_token_id=0)).eval()
    state = {f"transformer.{k}": (v.t() if k.endswith(CONV1D) else v) for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []          # lm_head is tied to wte
    ids = torch.randint(0, c.vocab, (2, 20))
    assert torch.allclose(hf(ids).logits, model(ids).logits, atol=1e-5)


def test_scalar_head_gives_one_value_per_position_and_no_lm_logits():
    model = gpt(head="scalar")
    out = model(torch.randint(0, 2048, (3, 9)))
    assert out.logits.shape == (3, 9)
    assert "value_head.weight" in dict(model.named_parameters())


def test_init_scales_residual_projections_by_one_over_sqrt_two_layers():
    model = gpt("tiny", n_layers=8)
    std = model.config.init_std
    assert model.h[0].attn.c_attn.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.h[0].mlp.c_proj.weight.std().item() == pytest.approx(std / 4, rel=0.05)   # 1/sqrt(16)
    assert torch.equal(model.h[3].ln_1.weight, torch.ones(64)) and not model.h[3].attn.c_attn.bias.any()


def test_full_and_selective_recompute_give_the_gradients_of_no_recompute():
    grads = {}
    ids = torch.randint(0, 2048, (2, 16))
    for mode in ("none", "full", "selective"):
        model = gpt("tiny-local")
        model.recompute_blocks = mode == "full"
        for block in model.h:
            block.attn.recompute_core = mode == "selective"
        calls = []
        model.h[0].ln_1.register_forward_hook(lambda *_: calls.append(1))
        model(ids).logits.logsumexp(-1).mean().backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert len(calls) == (2 if mode == "full" else 1)          # full recompute re-runs the block (ln_1 again)
    assert torch.allclose(grads["full"], grads["none"], atol=1e-6)
    assert torch.allclose(grads["selective"], grads["none"], atol=1e-6)


def test_input_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="exceed the context of 128"):
        gpt()(torch.zeros(1, 129, dtype=torch.long))


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="choose one of lm, scalar"):
        GPT(get_model("tiny"), head="value")
