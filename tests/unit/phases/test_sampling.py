"""The sampler's token choice: nucleus membership as the sorted definition has it, and draws that
follow the renormalised probabilities (Holtzman et al. 2020)."""
import pytest
import torch

from orchestrator.phases.sampling import NUCLEUS_CANDIDATES, draw, next_token, nucleus_sample


def sorted_nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The reference: sort, keep tokens whose preceding mass is at most top_p, renormalise."""
    values, order = probs.sort(dim=-1, descending=True)
    values = values.masked_fill(values.cumsum(-1) - values > top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, values)
    return kept / kept.sum(-1, keepdim=True)


def frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).double() / tokens.numel()


@pytest.mark.parametrize("scale", [8.0, 0.05], ids=["peaked: top-k candidates", "near-uniform: full sort"])
def test_nucleus_draws_follow_the_sorted_definition(scale):
    vocab, draws = 2 * NUCLEUS_CANDIDATES, 40_000
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(vocab, generator=g) * scale, dim=-1)
    expected = sorted_nucleus(probs[None], 0.8)[0].double()
    tokens = nucleus_sample(probs.expand(draws, vocab).contiguous(), 0.8, generator=g)
    seen = frequencies(tokens, vocab)
    assert set(tokens.unique().tolist()) <= set(expected.nonzero().flatten().tolist())
    # each frequency within 5 binomial standard deviations of its probability
    assert ((seen - expected).abs() <= 5 * (expected * (1 - expected) / draws).sqrt() + 1e-9).all()


def test_rows_of_a_batch_take_their_own_nucleus_whichever_path_they_need():
    vocab = 4 * NUCLEUS_CANDIDATES
    logits = torch.zeros(3, vocab)
    logits[0, 7] = 50.0                                   # one certain token
    logits[1, :2] = 40.0                                  # two equal tokens hold all the mass
    logits[2] = torch.linspace(0, 0.01, vocab)            # nearly uniform: needs the sort
    g = torch.Generator().manual_seed(1)
    tokens = torch.stack([next_token(logits, temperature=1.0, top_p=0.9, generator=g) for _ in range(200)])
    assert (tokens[:, 0] == 7).all()
    assert set(tokens[:, 1].tolist()) == {0, 1}
    assert tokens[:, 2].unique().numel() > 100


def test_draw_never_picks_a_zero_weight_entry_and_matches_the_weights():
    weights = torch.tensor([[0.0, 3.0, 0.0, 1.0, 0.0]]).expand(20_000, 5).contiguous()
    seen = frequencies(draw(weights, generator=torch.Generator().manual_seed(2)), 5)
    assert seen[[0, 2, 4]].sum() == 0
    assert abs(seen[1] - 0.75) < 0.02


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert next_token(logits, temperature=0.0, top_p=0.5, generator=torch.Generator()).tolist() == [1, 0]
