"""Set-at-a-time SQL that reads the same on both backends: a list of values as one parameter
(PostgreSQL arrays, SQLite's ``json_each``), many rows upserted in one statement, and one
consistent snapshot for a read of several statements."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from ._executor import Conn, Dialect

__all__ = ["in_set", "set_arg", "snapshot", "upsert"]

_SET = {
    "postgresql": "{col} = ANY(${n}::{type}[])",
    "sqlite": "{col} IN (SELECT value FROM json_each(${n}))",
}


def in_set(dialect: Dialect, col: str, n: int = 1, type: str = "text") -> str:
    """``col`` is one of the values of parameter ``$n`` (given as :func:`set_arg`)."""
    return _SET[dialect].format(col=col, n=n, type=type)


def set_arg(dialect: Dialect, values: Iterable[Any]) -> Any:
    return list(values) if dialect == "postgresql" else json.dumps(list(values))


async def upsert(
    conn: Conn,
    table: str,
    columns: Sequence[tuple[str, str]],
    key: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    add: Sequence[str] = (),
) -> None:
    """Insert ``rows`` (values in ``columns`` order; (name, PostgreSQL type) each) in one
    statement; on a conflict of ``key``, the ``add`` columns are added to the row there and
    the others replace it. Keys must be unique within ``rows``."""
    if not rows:
        return
    names = [c for c, _ in columns]
    sets = ", ".join(
        f"{c} = {table}.{c} + excluded.{c}" if c in add else f"{c} = excluded.{c}"
        for c in names
        if c not in key
    )
    conflict = f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"
    if conn.dialect == "postgresql":
        arrays = ", ".join(f"${i + 1}::{t}[]" for i, (_, t) in enumerate(columns))
        sql = f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest({arrays}) {conflict}"
        await conn.execute(sql, *([r[i] for r in rows] for i in range(len(names))))
        return
    picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(names)))
    sql = (
        f"INSERT INTO {table} ({', '.join(names)}) SELECT {picks} FROM json_each($1) WHERE true"
        f" {conflict}"
    )
    await conn.execute(sql, json.dumps([list(r) for r in rows]))


class snapshot:
    """One consistent read for several statements: PostgreSQL, a repeatable-read read-only
    transaction without JIT (it costs more than it saves on these reads); SQLite's read
    already is one. ``by_index`` keeps PostgreSQL's plans to index lookups: a read of some
    thousand rows found by index is never a scan of a whole table to hash (the planner's
    guess for a list of values is off by several times, and a table grows) nor a parallel
    one (workers cost more than they save)."""

    def __init__(self, conn: Conn, *, by_index: bool = False) -> None:
        self.conn = conn
        self.by_index = by_index

    async def __aenter__(self) -> Conn:
        if self.conn.dialect == "postgresql":
            await self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            settings = ["jit = off"]
            if self.by_index:
                settings += [
                    "enable_hashjoin = off",
                    "enable_mergejoin = off",
                    "max_parallel_workers_per_gather = 0",
                ]
            for setting in settings:
                await self.conn.execute(f"SET LOCAL {setting}")
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        if self.conn.dialect == "postgresql":
            await self.conn.execute("COMMIT")  # read only: nothing to keep or lose
