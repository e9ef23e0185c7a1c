"""The old import path of :mod:`credit_middleware.integrations.litellm.outbox` (kept for users)."""

from __future__ import annotations

from .litellm.outbox import (
    Outbox,
    is_backend_fault,
)

__all__ = [
    "Outbox",
    "is_backend_fault",
]
