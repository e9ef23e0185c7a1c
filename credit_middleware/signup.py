"""The old import path of :mod:`credit_middleware.trials.signup` (kept for users)."""

from __future__ import annotations

from .trials.signup import (
    SignupProvisioning,
    default_account_id,
    identity_for,
    provision,
    provision_credits,
)

__all__ = [
    "SignupProvisioning",
    "default_account_id",
    "identity_for",
    "provision",
    "provision_credits",
]
