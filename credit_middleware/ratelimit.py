"""The old import path of :mod:`credit_middleware.limits.ratelimit` (kept for users)."""

from __future__ import annotations

from .limits.ratelimit import (
    DEFAULT_TIERS,
    LimitState,
    RateLimiter,
    Strategy,
    Verdict,
)

__all__ = [
    "DEFAULT_TIERS",
    "LimitState",
    "RateLimiter",
    "Strategy",
    "Verdict",
]
