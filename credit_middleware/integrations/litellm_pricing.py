"""The old import path of :mod:`credit_middleware.integrations.litellm.pricing` (kept for users)."""

from __future__ import annotations

from .litellm.pricing import (
    Pricer,
    UnknownModelPrice,
    load_litellm,
    usd,
)

__all__ = [
    "Pricer",
    "UnknownModelPrice",
    "load_litellm",
    "usd",
]
