"""The old import path of :mod:`credit_middleware.integrations.litellm.refusals` (kept)."""

from __future__ import annotations

from .litellm.refusals import (
    CreditRefusal,
    Identify,
    end_user,
    in_proxy,
    key_owner,
)

__all__ = [
    "CreditRefusal",
    "Identify",
    "end_user",
    "in_proxy",
    "key_owner",
]
