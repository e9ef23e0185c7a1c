"""The old import path of :mod:`credit_middleware.identity.jwt` (kept for users)."""

from __future__ import annotations

from .identity.jwt import (
    JWTResolver,
)

__all__ = [
    "JWTResolver",
]
