"""The old import path of :mod:`credit_middleware.ops.cli` (kept for users)."""

from __future__ import annotations

from .ops.cli import (
    build_parser,
    entry_id,
    main,
    parse_duration,
    parse_time,
)

__all__ = [
    "build_parser",
    "entry_id",
    "main",
    "parse_duration",
    "parse_time",
]
