"""The old import path of :mod:`credit_middleware.trials.policy` (kept for users)."""

from __future__ import annotations

from .trials.policy import (
    TrialDecision,
    TrialPolicy,
)

__all__ = [
    "TrialDecision",
    "TrialPolicy",
]
