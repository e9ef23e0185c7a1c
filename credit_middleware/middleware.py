"""The old import path of :mod:`credit_middleware.http.middleware` (kept for users)."""

from __future__ import annotations

from .http.middleware import (
    CreditMiddleware,
    FINAL_COST_STATE,
    FIXED_LEASE,
)

__all__ = [
    "CreditMiddleware",
    "FINAL_COST_STATE",
    "FIXED_LEASE",
]
