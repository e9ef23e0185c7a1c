"""The old import path of :mod:`credit_middleware.trials.webhook` (kept for users)."""

from __future__ import annotations

from ..trials.webhook import (
    WebhookReceiver,
    parse_event,
    sign,
)

__all__ = [
    "WebhookReceiver",
    "parse_event",
    "sign",
]
