"""The old import path of :mod:`credit_middleware.integrations.litellm.stream` (kept for users)."""

from __future__ import annotations

from .litellm.stream import (
    CreditedStream,
)

__all__ = [
    "CreditedStream",
]
