import torch
import torch.nn.functional as F

from orchestrator.model.loss import lm_loss, next_token_labels


def test_without_labels_the_next_token_is_the_target_and_the_last_position_is_not_scored():
    ids = torch.tensor([[5, 6, 7, 8]])
    assert next_token_labels(ids).tolist() == [[6, 7, 8, -100]]


def test_positions_labelled_minus_100_do_not_count():
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, :3] = -100                              # e.g. SFT prompt tokens
    kept = labels != -100
    expected = F.cross_entropy(logits[kept], labels[kept])
    assert torch.allclose(lm_loss(logits, labels), expected)
