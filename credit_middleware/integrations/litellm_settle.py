"""The old import path of :mod:`credit_middleware.integrations.litellm.settle` (kept for users)."""

from __future__ import annotations

from .litellm.settle import (
    ProxySettlement,
    capture_cost,
)

__all__ = [
    "ProxySettlement",
    "capture_cost",
]
