"""Where the ledger lives in PostgreSQL: a schema of its own, apart from the app's tables.

An app that keeps its own tables in the same database runs its own migrations (Alembic, say),
and their ``check`` and ``--autogenerate`` compare the app's models with what they find in the
app's schema: ledger tables there are reported for removal. So the ledger's connections carry
their own ``search_path``, naming the schema ``credit_middleware`` whatever the database's,
the role's or the app's search_path says, and every statement (and the server-side functions,
which resolve names when they run) finds the ledger there. A URL that names a ``search_path``
itself (``postgresql://...?search_path=billing``) puts the ledger in that schema instead (its
first one), as it always did.

A ledger made before this library kept its own schema lives in the first schema of the
connection's default search_path (``public``, usually). The first migration that finds no
ledger in its schema looks there and moves every object the ledger's migrations made, once,
in the migration's transaction under its advisory lock: ``ALTER ... SET SCHEMA`` moves no row,
and indexes, constraints, triggers and serial sequences go with their tables.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigurationError
from ._executor import Conn

__all__ = [
    "DEFAULT_SCHEMA",
    "PgPlace",
    "ensure_schema",
    "ledger_objects",
    "place",
    "postgres_schema",
    "relocate",
    "settle",
]

log = logging.getLogger("credit_middleware.ledger")

DEFAULT_SCHEMA = "credit_middleware"

_TABLE = re.compile(r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE)
_OPTION = re.compile(r"(?:-c\s*|--)search_path=(\S+)")
_FUNCTION = re.compile(r"\bCREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(\w+)", re.IGNORECASE)


@dataclass(frozen=True)
class PgPlace:
    """The ledger's schema for a URL, and the ``search_path`` its connections set (None when
    the URL sets its own). ``schema`` is None when it can't be named (``"$user"``)."""

    schema: str | None
    search_path: str | None

    @property
    def chosen(self) -> bool:
        """True when the library chose the schema (no ``search_path`` in the URL): a ledger
        from before then may be elsewhere and is moved here."""
        return self.search_path is not None


def place(dsn: str) -> PgPlace:
    """The ledger's place for a PostgreSQL URL."""
    query = parse_qs(urlsplit(dsn).query)
    given = query.get("search_path")
    if not given:  # libpq's way: options=-c search_path=...
        given = _OPTION.findall(" ".join(query.get("options", ())))
    if not given:
        return PgPlace(DEFAULT_SCHEMA, quote(DEFAULT_SCHEMA))
    first = given[-1].split(",")[0].strip()  # the server takes a setting's last value
    if first.startswith('"') and first.endswith('"') and len(first) >= 2:
        first = first[1:-1].replace('""', '"')
    return PgPlace(None if first in ("", "$user") else first, None)


def postgres_schema(url: str) -> str | None:
    """The schema a ``postgresql://`` ledger URL keeps the ledger in (for tools that read its
    tables with a connection of their own: ``SET search_path`` to it)."""
    return place(url).schema


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def ledger_objects(scripts: Iterable[str]) -> tuple[list[str], list[str]]:
    """The tables and functions the migration ``scripts`` create, by name, in order."""
    tables: list[str] = []
    functions: list[str] = []
    for sql in scripts:
        tables += [t for t in _TABLE.findall(sql) if t not in tables]
        functions += [f for f in _FUNCTION.findall(sql) if f not in functions]
    return tables, functions


async def exists(conn: Conn, schema: str, table: str) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relname = $2",
        schema,
        table,
    )
    return found is not None


async def ensure_schema(conn: Conn, schema: str) -> None:
    """Create ``schema`` if it is missing. Looked up first: a role without the database's
    CREATE privilege can use a schema an administrator made for it."""
    if await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema) is not None:
        return
    import asyncpg

    role = await conn.fetchval("SELECT current_user")  # for the message: no query after a refusal
    try:
        await conn.execute(f"CREATE SCHEMA {quote(schema)}")
    except asyncpg.InsufficientPrivilegeError:
        raise ConfigurationError(
            f"the ledger's schema {schema!r} does not exist and the role {role!r} may not create"
            f" it: run CREATE SCHEMA {quote(schema)} AUTHORIZATION {quote(str(role))} as the"
            " database owner, or name a schema the role owns in the URL (?search_path=...)"
        ) from None


async def relocate(
    conn: Conn, schema: str, former: list[str], version_table: str, scripts: Iterable[str]
) -> str | None:
    """Move a ledger made before it had ``schema`` into it; return the schema it came from.

    ``former`` is the default search_path's schemas, in order: the ledger is in the first one
    holding ``version_table`` (where a search for it would have found it). Nothing moves when
    ``schema`` already holds a ledger. Call it inside the migration's transaction, under its
    lock, after :func:`ensure_schema`."""
    if await exists(conn, schema, version_table):
        return None
    source = None
    for candidate in former:
        if candidate != schema and await exists(conn, candidate, version_table):
            source = candidate
            break
    if source is None:
        return None
    tables, functions = ledger_objects(scripts)
    rows = await conn.fetch(
        "SELECT format('ALTER TABLE %I.%I SET SCHEMA %I', n.nspname, c.relname, $2::text) AS sql"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname = ANY($3::text[])"
        " UNION ALL"
        " SELECT format('ALTER FUNCTION %I.%I(%s) SET SCHEMA %I', n.nspname, p.proname,"
        "              pg_get_function_identity_arguments(p.oid), $2::text)"
        " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = $1 AND p.proname = ANY($4::text[])",
        source,
        schema,
        [version_table, *tables],
        functions,
    )
    for row in rows:
        await conn.execute(row["sql"])
    return source


async def settle(
    conn: Conn, schema: str, former: list[str], version_table: str, scripts: Iterable[str]
) -> None:
    """The ledger's schema exists, holding the ledger made before it had one, if any."""
    await ensure_schema(conn, schema)
    if former:
        source = await relocate(conn, schema, former, version_table, scripts)
        if source is not None:
            log.warning("moved the credit ledger from schema %r to its own, %r", source, schema)
