import pytest

from orchestrator.config.model import PRESETS, GPTConfig, get_model

# Brown et al. 2020, Table 2.1
GPT3_PAPER = {
    "gpt3-small": 125e6, "gpt3-medium": 350e6, "gpt3-large": 760e6, "gpt3-xl": 1.3e9,
    "gpt3-2.7b": 2.7e9, "gpt3-6.7b": 6.7e9, "gpt3-13b": 13.0e9, "gpt3-175b": 175.0e9,
}
# Modern counts of the GPT-2 checkpoints (tied embedding counted once)
GPT2_MODERN = {"gpt2-small": 124e6, "gpt2-medium": 355e6, "gpt2-large": 774e6, "gpt2-xl": 1558e6}


@pytest.mark.parametrize("name,paper", GPT3_PAPER.items())
def test_gpt3_presets_within_2_percent_of_paper(name, paper):
    assert get_model(name).params() == pytest.approx(paper, rel=0.02)


@pytest.mark.parametrize("name,count", GPT2_MODERN.items())
def test_gpt2_presets_within_1_percent_of_modern_counts(name, count):
    assert get_model(name).params() == pytest.approx(count, rel=0.01)


def test_gpt3_paper_batch_and_lr_are_in_the_catalog():
    rows = [(get_model(n).paper_batch_tokens, get_model(n).paper_lr) for n in GPT3_PAPER]
    assert rows == [(500_000, 6.0e-4), (500_000, 3.0e-4), (500_000, 2.5e-4), (1_000_000, 2.0e-4),
                    (1_000_000, 1.6e-4), (2_000_000, 1.2e-4), (2_000_000, 1.0e-4), (3_200_000, 0.6e-4)]


def test_gpt4_moe_totals_match_the_rumour():
    moe = get_model("gpt4-moe")
    assert moe.params() == pytest.approx(1.8e12, rel=0.05)
    attention = moe.n_layers * moe.attention_params()
    assert attention == pytest.approx(55e9, rel=0.05)
    assert moe.expert_params() / moe.n_experts == pytest.approx(110e9, rel=0.05)
    assert moe.active_params() == pytest.approx(280e9, rel=0.05)


def test_dense_active_params_equal_total():
    model = get_model("gpt3-175b")
    assert model.active_params() == model.params()


def test_moe_counts_only_top_k_experts_as_active():
    moe = get_model("tiny-moe")
    one_expert = moe.ffn_params()
    assert moe.params() - moe.active_params() == moe.n_moe_layers * (moe.n_experts - moe.top_k) * one_expert


def test_flops_per_token_matches_narayanan_closed_form():
    # Narayanan et al. 2021: 72·B·s·l·h²·(1 + s/6h + V/12lh) without recompute, 96·…·(… V/16lh) with
    m = get_model("gpt3-175b")
    l, h, s, v = m.n_layers, m.d_model, m.ctx, m.vocab
    assert m.flops_per_token() == pytest.approx(72 * l * h * h * (1 + s / (6 * h) + v / (12 * l * h)), rel=1e-3)
    assert m.flops_per_token(recompute=True) == pytest.approx(
        96 * l * h * h * (1 + s / (6 * h) + v / (16 * l * h)), rel=1e-3)


def test_every_preset_builds_and_variants_keep_their_base():
    for name, preset in PRESETS.items():
        assert preset().name == name
    assert get_model("gpt2-xl").ctx == get_model("gpt2-small").ctx


def test_unknown_preset_lists_the_catalog():
    with pytest.raises(ValueError, match="gpt3-175b"):
        get_model("gpt5")


@pytest.mark.parametrize("bad", [dict(n_layers=0), dict(n_experts=1), dict(n_experts=4, top_k=5),
                                 dict(dropout=1.0)])
def test_impossible_shapes_are_refused(bad):
    with pytest.raises(ValueError):
        GPTConfig(**bad)


def test_gpt4_moe_heads_let_the_rumoured_tp_8_split_them():
    moe = get_model("gpt4-moe")
    assert (moe.n_heads, moe.d_head, moe.d_attn) == (96, 112, 10752)
    assert moe.n_heads % 8 == 0 and moe.d_attn == moe.d_model
