"""The one error type of the handoff: a parent or checkpoint that must not be used."""
from __future__ import annotations


class HandoffError(ValueError):
    """A missing, incomplete, mismatched or corrupted artifact; the message names it and the fix."""
