"""The old import path of :mod:`credit_middleware.http.middleware` (kept for users)."""

from __future__ import annotations

from .http.middleware import (
    FINAL_COST_STATE,
    FIXED_LEASE,
    TIER_TTL,
    CreditMiddleware,
)

__all__ = [
    "FINAL_COST_STATE",
    "FIXED_LEASE",
    "TIER_TTL",
    "CreditMiddleware",
]
