"""The old import path of :mod:`credit_middleware.ops.report` (kept for users)."""

from __future__ import annotations

from .ops.report import (
    CohortStats,
    Report,
    build_report,
    render_text,
)

__all__ = [
    "CohortStats",
    "Report",
    "build_report",
    "render_text",
]
