"""The old import path of :mod:`credit_middleware.integrations.litellm.meter` (kept for users)."""

from __future__ import annotations

from .litellm.meter import (
    Meter,
    MeteredCall,
)

__all__ = [
    "Meter",
    "MeteredCall",
]
