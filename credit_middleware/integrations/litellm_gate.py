"""The old import path of :mod:`credit_middleware.integrations.litellm.gate` (kept for users)."""

from __future__ import annotations

from .litellm.gate import (
    dearest,
    gate,
    twins,
)

__all__ = [
    "dearest",
    "gate",
    "twins",
]
