"""Shards: how a TP / PP / EP piece maps onto the plain GPT tensor, and back."""
import pytest
import torch

from orchestrator.config.model import get_model
from orchestrator.model.params import Shard, canonical_name, initial_value, padded_vocab
from orchestrator.model.pipeline import pipeline_plain_name


def test_fused_qkv_is_split_so_each_rank_holds_q_k_and_v_of_the_same_heads():
    d = 4                                             # d_attn; rows are [q0..q3 | k0..k3 | v0..v3]
    full = torch.arange(3 * d).float()[:, None]
    pieces = [Shard("h.0.attn.c_attn.weight", dim=0, parts=2, index=r, stride=3).take(full) for r in range(2)]
    assert pieces[0].flatten().tolist() == [0, 1, 4, 5, 8, 9]        # q, k, v of heads 0-1
    assert pieces[1].flatten().tolist() == [2, 3, 6, 7, 10, 11]
    assert torch.equal(Shard("x", dim=0, parts=2, stride=3).assemble(pieces), full)


@pytest.mark.parametrize("dim,stride", [(0, 1), (1, 1), (0, 3)])
def test_take_then_assemble_gives_back_the_plain_tensor(dim, stride):
    full = torch.randn(12, 6)
    pieces = [Shard("w", dim=dim, parts=2, index=r, stride=stride).take(full) for r in range(2)]
    assert torch.equal(Shard("w", dim=dim, parts=2, stride=stride).assemble(pieces), full)


def test_a_vocabulary_padded_for_tp_round_trips_without_its_padding():
    vocab, tp = 2047, 4
    full = torch.randn(vocab, 8)
    shards = [Shard("wte.weight", dim=0, parts=tp, index=r, rows=vocab) for r in range(tp)]
    pieces = [shard.take(full) for shard in shards]
    assert padded_vocab(vocab, tp) == 2048 and all(p.shape == (512, 8) for p in pieces)
    assert not pieces[-1][-1].any()                   # the padding row
    assert shards[0].full_shape(pieces[0].shape) == (vocab, 8)
    assert torch.equal(shards[0].assemble(pieces), full)


def test_initial_values_depend_on_the_name_and_seed_only():
    config = get_model("tiny")
    a = initial_value("h.1.attn.c_attn.weight", (192, 64), config=config, seed=5)
    assert torch.equal(a, initial_value("h.1.attn.c_attn.weight", (192, 64), config=config, seed=5))
    assert not torch.equal(a, initial_value("h.0.attn.c_attn.weight", (192, 64), config=config, seed=5))
    assert not torch.equal(a, initial_value("h.1.attn.c_attn.weight", (192, 64), config=config, seed=6))


def test_pipeline_layer_names_map_to_plain_gpt_names():
    names = {"tied_modules.embed.wte.weight": "wte.weight", "1.wpe.weight": "wpe.weight",
             "2.ln_1.weight": "h.0.ln_1.weight", "5.attn.c_attn.bias": "h.3.attn.c_attn.bias",
             "6.ln_f.weight": "ln_f.weight"}
    assert {pipeline_plain_name(k, n_layers=4): v for k, v in names.items()} == {v: v for v in names.values()}


def test_local_experts_are_named_by_their_global_index():
    local = "h.1.mlp.deepspeed_moe.experts.deepspeed_experts.1.c_fc.weight"
    assert canonical_name(local, expert_offset=2) == "h.1.mlp.deepspeed_moe.experts.deepspeed_experts.3.c_fc.weight"
