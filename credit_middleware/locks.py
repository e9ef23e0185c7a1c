"""The old import path of :mod:`credit_middleware.trials.locks` (kept for users)."""

from __future__ import annotations

from .trials.locks import (
    LocalLocks,
    ProvisionLocks,
    RedisLocks,
)

__all__ = [
    "LocalLocks",
    "ProvisionLocks",
    "RedisLocks",
]
