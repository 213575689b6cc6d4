"""Host batches onto the rank's device.

A copy from pageable host memory to a GPU is synchronous whatever ``non_blocking`` says: CUDA
stages it through a pinned buffer first. So a batch bound for CUDA is pinned (page-locked) and
then copied asynchronously, overlapping the copy with the work already queued. On the CPU nothing
is pinned (there is nothing to overlap, and a CPU-only torch cannot pin). Values that are not
tensors (a rollout's ``prompt_len``) pass through unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def needs_pinning(tensor: Tensor, device: torch.device) -> bool:
    """A host tensor bound for a CUDA device, not pinned yet."""
    return device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of ``batch`` on ``device`` (pinned first when that is a GPU), the rest as is."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, Tensor):
            source = value.pin_memory() if needs_pinning(value, device) else value
            value = source.to(device, non_blocking=True)
        moved[key] = value
    return moved
