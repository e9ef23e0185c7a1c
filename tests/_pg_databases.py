"""A PostgreSQL database of a test's own, for tests about what a whole database holds (where
the ledger's tables are, what an app's own migrations see); dropped afterwards."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from conftest import PG_BASE, _unavailable, _with_db


async def run_sql(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def own_database(tag: str = "db") -> AsyncIterator[str]:
    """The URL of a new, empty database (no ``search_path`` in it)."""
    import asyncpg

    name = f"cm_{tag}_{secrets.token_hex(4)}"
    try:
        await run_sql(PG_BASE, f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        _unavailable("postgresql", exc)
    try:
        yield _with_db(PG_BASE, name)
    finally:
        await run_sql(PG_BASE, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def objects_by_schema(url: str) -> dict[str, set[str]]:
    """The ledger-looking tables and functions (``credit_*``) of each schema."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT n.nspname AS schema, c.relname AS name FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND c.relname LIKE 'credit%'"
            " UNION ALL SELECT n.nspname, p.proname || '()' FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.proname LIKE 'credit%'"
        )
    finally:
        await conn.close()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["schema"], set()).add(row["name"])
    return found
