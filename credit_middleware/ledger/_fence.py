"""The fence: the highest id below which every row of an append-only table is final.

Ids come from a sequence, and on PostgreSQL transactions commit out of order: a reader that saw
id 120 may later see 117 appear, committed by a transaction that took its id first and finished
last. A job that keeps a watermark ("everything up to the last id I saw") would skip 117 for
good. So the watermark only ever moves to a fence: a brief ``SHARE`` lock on the table waits
for the transactions that are writing to it (those holding ids not yet committed) and lets no
new one start; the largest id then visible is final, along with every id below it. The lock
is released at once (it is held for one index lookup), and it is taken with a short
``lock_timeout``: a writer waits at most that long behind it, and a fence that cannot be taken
then is tried again a little later.

SQLite has one writer at a time and a reader sees every committed transaction: an id a running
writer holds is above every committed one, so the largest visible id is a fence as it is.
"""

from __future__ import annotations

import asyncio
import time

from ..errors import BackendUnavailable
from ._executor import Conn, Executor

__all__ = ["LOCK_TIMEOUT_MS", "fence"]

#: How long a writer may wait behind a fence (and a fence behind the writers), at most.
LOCK_TIMEOUT_MS = 100
#: How long a fence is tried for (a try each ``LOCK_TIMEOUT_MS``, a short pause between).
PATIENCE = 5.0

# table -> (the id column on PostgreSQL, on SQLite)
_IDS = {
    "credit_entries": ("entry_id", "entry_id"),
    # accounts are keyed by text: a sequence column of their own (migration 10), SQLite's rowid
    "credit_accounts": ("rollup_seq", "rowid"),
}


async def fence(executor: Executor, table: str, *, patience: float | None = None) -> int:
    """The largest id of ``table`` below which (inclusive) every row is committed or never will
    be. Raises :class:`BackendUnavailable` when a transaction writing to the table stays open
    for ``patience`` seconds (nothing is rolled up past it meanwhile)."""
    pg_column, sqlite_column = _IDS[table]
    if executor.dialect == "sqlite":

        async def highest(conn: Conn) -> int:
            sql = f"SELECT COALESCE(MAX({sqlite_column}), 0) FROM {table}"
            return int(await conn.fetchval(sql))

        return await executor.run(highest, write=False)

    async def fenced(conn: Conn) -> int:
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
        await conn.execute(f"LOCK TABLE {table} IN SHARE MODE")
        return int(await conn.fetchval(f"SELECT COALESCE(MAX({pg_column}), 0) FROM {table}"))

    deadline = time.monotonic() + (PATIENCE if patience is None else patience)
    while True:
        try:
            return await executor.run(fenced)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != "55P03":  # lock_not_available
                raise
        if time.monotonic() >= deadline:
            raise BackendUnavailable("database", f"{table} stayed too busy to fence")
        await asyncio.sleep(0.02)  # the writers that queued behind the try go first
