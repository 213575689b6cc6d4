"""The language-modelling loss, on full or vocab-parallel logits.

Label convention (nanoGPT's): ``labels[b, t]`` is the target *for position t*, i.e. the batch
arrives already shifted (``input_ids = block[:-1]``, ``labels = block[1:]``); -100 marks a
position that is not scored (SFT uses it for prompt tokens and padding). Without labels, the
next token of ``input_ids`` is the target and the last position is not scored.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def next_token_labels(input_ids: Tensor) -> Tensor:
    """labels[t] = input_ids[t + 1]; the last position has no target."""
    labels = input_ids.roll(-1, dims=-1)
    labels[..., -1] = IGNORE_INDEX
    return labels


def lm_loss(logits: Tensor, labels: Tensor, *, vocab_parallel: bool = False) -> Tensor:
    """Mean cross-entropy over the scored positions (0 when none is scored)."""
    if vocab_parallel:
        from orchestrator.model.tensor_parallel import vocab_parallel_lm_loss

        total, count = vocab_parallel_lm_loss(logits, labels)
    else:
        total = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX,
                                reduction="sum")
        count = (labels != IGNORE_INDEX).sum()
    return total / count.clamp(min=1)
