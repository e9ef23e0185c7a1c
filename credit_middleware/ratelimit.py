"""The old import path of :mod:`credit_middleware.limits.ratelimit` (kept for users)."""

from __future__ import annotations

from .limits.ratelimit import (
    DEFAULT_TIERS,
    TIER_TTL,
    LimitState,
    RateLimiter,
    Strategy,
    Verdict,
    rate_limit_headers,
    rate_limited,
)

__all__ = [
    "DEFAULT_TIERS",
    "TIER_TTL",
    "LimitState",
    "RateLimiter",
    "Strategy",
    "Verdict",
    "rate_limit_headers",
    "rate_limited",
]
