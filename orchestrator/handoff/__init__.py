"""Handoff between phases: what one phase leaves for the next, and the checks on it.

``checkpoint``  atomic multi-rank checkpoint directories (stage, SHA256SUMS, rename, ``latest``)
``manifest``    the phase's ``manifest.json`` and ``verify_parent`` (hashes, model, tokenizer, head)
``metrics``     the ``metrics.jsonl`` event log every phase appends to
``sharded``     the sharded format every rank writes and any layout reads (checkpoints, handoff)
``final``       what a phase hands on: ``final/shards``, committed from the ranks' own hashes
``export``      the sharded weights streamed into a Hugging Face ``GPT2LMHeadModel`` / ``GPTNeoForCausalLM``
"""
from orchestrator.handoff.errors import HandoffError

__all__ = ["HandoffError"]
