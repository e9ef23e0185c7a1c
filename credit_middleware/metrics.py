"""The old import path of :mod:`credit_middleware.ops.metrics` (kept for users)."""

from __future__ import annotations

from .ops.metrics import (
    MetricsApp,
    PrometheusObserver,
    RecentRefusals,
    Refusal,
    metrics_app,
)

__all__ = [
    "MetricsApp",
    "PrometheusObserver",
    "RecentRefusals",
    "Refusal",
    "metrics_app",
]
