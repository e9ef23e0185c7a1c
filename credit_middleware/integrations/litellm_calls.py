"""The old import path of :mod:`credit_middleware.integrations.litellm.calls` (kept for users)."""

from __future__ import annotations

from .litellm.calls import (
    KINDS,
    Kind,
    Worst,
    kind_of,
    per_second,
    unit_prices,
    worst_case,
)

__all__ = [
    "KINDS",
    "Kind",
    "Worst",
    "kind_of",
    "per_second",
    "unit_prices",
    "worst_case",
]
