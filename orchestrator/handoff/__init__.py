"""Handoff between phases: what one phase leaves for the next, and the checks on it.

``checkpoint``  atomic multi-rank checkpoint directories (stage, SHA256SUMS, rename, ``latest``)
``manifest``    the phase's ``manifest.json`` and ``verify_parent`` (hashes, model, tokenizer, head)
``metrics``     the ``metrics.jsonl`` event log every phase appends to
``export``      the consolidated weights as a Hugging Face ``GPT2LMHeadModel`` / ``GPTNeoForCausalLM``
"""
from orchestrator.handoff.errors import HandoffError

__all__ = ["HandoffError"]
