"""The old import path of :mod:`credit_middleware.integrations.litellm.proxy` (kept for users)."""

from __future__ import annotations

from .litellm.proxy import (
    CreditProxyHook,
    CreditRefusal,
    end_user,
    key_owner,
)

__all__ = [
    "CreditProxyHook",
    "CreditRefusal",
    "end_user",
    "key_owner",
]
