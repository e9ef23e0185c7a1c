"""Which way a report or a usage page is counted: from the rollups, brought up to date first,
when the period is whole UTC days (the dashboard's and the CLI's dates always are); from the
entries themselves otherwise (a period that starts or ends within a day)."""

from __future__ import annotations

from typing import Literal

from . import _rollups
from ._bulk import snapshot
from ._executor import Conn, Executor
from ._facts import DAY_US
from ._report_rollups import rows_from_rollups, usage_from_rollups
from ._report_sql import ReportRows, rows_from_entries
from ._search import route_usage_from_entries

__all__ = ["OPEN", "Source", "report_rows", "route_usage"]

OPEN = 2**62  # a period's end that is no end
Source = Literal["auto", "rollups", "entries"]


def _whole_days(lo: int, hi: int) -> tuple[int | None, int | None] | None:
    """[lo, hi) as days [d0, d1) (None for an open end), or None if it splits a day."""
    if (lo != -OPEN and lo % DAY_US) or (hi != OPEN and hi % DAY_US):
        return None
    return (None if lo == -OPEN else lo // DAY_US, None if hi == OPEN else hi // DAY_US)


async def report_rows(
    executor: Executor, now_us: int, lo: int, hi: int, top: int, source: Source = "auto"
) -> ReportRows:
    days = _whole_days(lo, hi)
    if source == "rollups" and days is None:
        raise ValueError("the rollups count whole UTC days: since and until must be midnights")
    if source == "entries" or days is None:

        async def full(conn: Conn) -> ReportRows:
            async with snapshot(conn):
                return await rows_from_entries(conn, lo, hi, top)

        return await executor.run(full, write=False)
    await _rollups.refresh(executor, now_us)

    async def rolled(conn: Conn) -> ReportRows:
        async with snapshot(conn):
            return await rows_from_rollups(conn, days[0], days[1], top)

    return await executor.run(rolled, write=False)


async def route_usage(
    executor: Executor, now_us: int, lo: int, hi: int, account_id: str | None
) -> list[tuple[str, int, int, int]]:
    """(route, calls, charged, refunded) per route written in [lo, hi)."""
    days = _whole_days(lo, hi)
    if days is None:
        return await executor.run(
            lambda conn: route_usage_from_entries(conn, lo, hi, account_id), write=False
        )
    await _rollups.refresh(executor, now_us)
    return await executor.run(
        lambda conn: usage_from_rollups(conn, days[0], days[1], account_id), write=False
    )
