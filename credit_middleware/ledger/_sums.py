"""Exact sums of money columns on both backends.

SQLite's ``SUM`` of integers raises ``integer overflow`` once a total passes 2**63 (a few large
grants do it) and ``TOTAL`` is a float; PostgreSQL's ``SUM(bigint)`` is exact. So every sum in
a report path is taken as two, on both backends alike: the sum of each value's high bits and the
sum of its low 32 bits, each far from overflowing, joined exactly in Python. Rollup cells keep
their totals the same way (``*_hi``, ``*_lo`` columns).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["LOW_BITS", "exact_sum", "join", "split", "total"]

LOW_BITS = 32
_MASK = (1 << LOW_BITS) - 1


def exact_sum(expr: str, name: str) -> str:
    """Two select-list columns, ``{name}_hi`` and ``{name}_lo``, that :func:`total` joins."""
    return (
        f"COALESCE(SUM(({expr}) >> {LOW_BITS}), 0) AS {name}_hi,"
        f" COALESCE(SUM(({expr}) & {_MASK}), 0) AS {name}_lo"
    )


def total(row: Mapping[str, Any], name: str) -> int:
    """The exact sum that :func:`exact_sum` (or a rollup cell) left in ``row``."""
    return join(row[f"{name}_hi"], row[f"{name}_lo"])


def join(hi: Any, lo: Any) -> int:
    return (int(hi or 0) << LOW_BITS) + int(lo or 0)


def split(value: int) -> tuple[int, int]:
    """``value`` as (high, low) parts: ``join(*split(v)) == v``, the low part in [0, 2**32)."""
    return value >> LOW_BITS, value & _MASK
