"""The old import path of :mod:`credit_middleware.integrations.litellm.sync` (kept for users)."""

from __future__ import annotations

from .litellm.sync import (
    Portal,
    SyncCreditedStream,
)

__all__ = [
    "Portal",
    "SyncCreditedStream",
]
