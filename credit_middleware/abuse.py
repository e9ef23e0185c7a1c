"""The old import path of :mod:`credit_middleware.trials.abuse` (kept for users)."""

from __future__ import annotations

from .trials.abuse import (
    IP_TRIAL_LIMIT,
    TrialIpCap,
)

__all__ = [
    "IP_TRIAL_LIMIT",
    "TrialIpCap",
]
