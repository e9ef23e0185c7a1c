"""LiteLLM: ``CreditedLLM`` meters calls made in Python; the proxy hook is in ``.proxy``."""

from __future__ import annotations

from .llm import (
    CreditedLLM,
    CreditedStream,
    SyncCreditedStream,
    UnknownModelPrice,
)

__all__ = [
    "CreditedLLM",
    "CreditedStream",
    "SyncCreditedStream",
    "UnknownModelPrice",
]
