"""Thin executors: the only code that knows which driver runs the SQL core.

Statements are written once with PostgreSQL's ``$1`` placeholders; the SQLite executor rewrites
them to SQLite's numbered ``?1`` form (cached), so both backends run the same text.
"""

from __future__ import annotations

import abc
import asyncio
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal

from ..errors import BackendUnavailable, ConfigurationError

Row = Mapping[str, Any]
Dialect = Literal["postgresql", "sqlite"]

_PLACEHOLDER = re.compile(r"\$(\d+)")


class Conn(abc.ABC):
    """One connection inside a transaction (or a read)."""

    dialect: Dialect

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> None: ...

    @abc.abstractmethod
    async def executescript(self, sql: str) -> None:
        """Run several statements without parameters (migrations)."""

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else next(iter(row.values()))


class Executor(abc.ABC):
    """Hands out connections: ``transaction()`` for writes, ``read()`` for reads."""

    dialect: Dialect
    _closed: bool = False

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Conn]: ...

    @abc.abstractmethod
    def read(self) -> AbstractAsyncContextManager[Conn]: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connections; until ``reopen()``, operations raise ``BackendUnavailable``."""

    def reopen(self) -> None:
        """Allow use again after ``close()``; connections open lazily on the next operation."""
        self._closed = False


# --------------------------------------------------------------------------- asyncpg


class _PgConn(Conn):
    dialect: Dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await self._conn.fetchrow(sql, *args)
        return row

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, *args)

    async def executescript(self, sql: str) -> None:
        await self._conn.execute(sql)


def pg_errors() -> tuple[type[BaseException], ...]:
    """Driver exceptions that mean "the database is unreachable or failing", not "bad data"."""
    import asyncpg

    return (
        OSError,
        asyncio.TimeoutError,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.InsufficientResourcesError,
        asyncpg.OperatorInterventionError,
        asyncpg.CannotConnectNowError,
        # raised by a pool or connection torn down under a running operation (a shutdown)
        asyncpg.InternalClientError,
    )


async def _keep_session(conn: Any) -> None:
    """Release a connection to the pool without asyncpg's reset query (``RESET ALL``,
    ``UNLISTEN *``, ...), one extra round trip on every operation. The ledger leaves no
    session state behind (its only lock is transaction-scoped); asyncpg still rolls back a
    transaction left open before this runs."""


def _close_sockets(pool: Any) -> None:
    """Close the sockets of a pool whose event loop is closed (asyncpg needs the loop for it),
    so that they don't linger until garbage collection warns about them."""
    for holder in getattr(pool, "_holders", ()):
        transport: Any = getattr(getattr(holder, "_con", None), "_transport", None)
        sock = getattr(transport, "_sock", None)
        if sock is not None:
            sock.close()
            transport._sock = None


class AsyncpgExecutor(Executor):
    """PostgreSQL through an asyncpg pool, created lazily and re-created after failures."""

    dialect: Dialect = "postgresql"

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: Any = None,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._owns_pool = pool is None
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._errors = pg_errors()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the pool lives on

    def _follow_loop(self) -> None:
        """An asyncpg pool belongs to the event loop that made it. On another loop (a second
        ``asyncio.run()``, a sync wrapper's loop) a pool whose loop has stopped is dropped and
        made anew; a pool whose loop still runs elsewhere is refused, clearly."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        old, pool = self._loop, self._pool
        if pool is not None and old is not None:
            if old.is_running():
                raise ConfigurationError(
                    "this PostgreSQL ledger is in use on another running event loop; give each"
                    " event loop (thread) its own Ledger"
                )
            if not self._owns_pool:
                raise ConfigurationError(
                    "the asyncpg pool given to this ledger belongs to an event loop that has"
                    " stopped; pass a pool made on the current loop"
                )
            try:
                pool.terminate()  # its loop has stopped: close its sockets without it
            except RuntimeError:  # the loop is closed and asyncpg can't: close them here
                _close_sockets(pool)
            self._pool = None
        self._lock = asyncio.Lock()
        self._loop = loop

    async def _get_pool(self) -> Any:
        self._follow_loop()
        if self._pool is not None and not self._closed:
            return self._pool
        async with self._lock:
            if self._closed:
                raise BackendUnavailable("database", "the ledger is closed")
            if self._pool is None:
                import asyncpg

                try:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=self._min_size,
                        max_size=self._max_size,
                        timeout=self._timeout,
                        command_timeout=self._timeout,
                        reset=_keep_session,
                    )
                except self._errors as exc:
                    raise BackendUnavailable("database", repr(exc)) from exc
        return self._pool

    @asynccontextmanager
    async def _acquire(self, write: bool) -> AsyncIterator[Conn]:
        pool = await self._get_pool()
        reached = False  # once a statement may have reached the server, a failure is ambiguous
        try:
            async with pool.acquire(timeout=self._timeout) as raw:
                reached = True
                if write:
                    async with raw.transaction():
                        yield _PgConn(raw)
                else:
                    yield _PgConn(raw)
        except self._errors as exc:
            raise BackendUnavailable("database", repr(exc), maybe_applied=reached) from exc

    def transaction(self) -> AbstractAsyncContextManager[Conn]:
        return self._acquire(write=True)

    def read(self) -> AbstractAsyncContextManager[Conn]:
        return self._acquire(write=False)

    async def close(self) -> None:
        """Close the pool (if this executor made it); later operations fail as unavailable
        instead of opening a new pool that nobody would close."""
        if self._pool is not None and self._owns_pool:
            self._follow_loop()  # a pool left on a stopped loop is terminated here
        async with self._lock:
            self._closed = True
            if self._pool is not None and self._owns_pool:
                pool, self._pool = self._pool, None
                await pool.close()
            # a caller's pool stays the caller's: kept (for reopen()) and never closed here


# --------------------------------------------------------------------------- databases / SQLite


class _SqliteConn(Conn):
    dialect: Dialect = "sqlite"

    def __init__(self, raw: Any, cache: dict[str, str]) -> None:
        self._raw = raw
        self._cache = cache

    def _sql(self, sql: str) -> str:
        out = self._cache.get(sql)
        if out is None:
            out = self._cache[sql] = _PLACEHOLDER.sub(r"?\1", sql)
        return out

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        cursor = await self._raw.execute(self._sql(sql), args)
        try:
            rows: Sequence[Sequence[Any]] = await cursor.fetchall()
            names = [d[0] for d in cursor.description or ()]
        finally:
            await cursor.close()
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def execute(self, sql: str, *args: Any) -> None:
        cursor = await self._raw.execute(self._sql(sql), args)
        await cursor.close()

    async def executescript(self, sql: str) -> None:
        # sqlite3's own executescript() commits first; run complete statements one by one so a
        # migration stays inside our transaction (triggers hold ';' inside BEGIN ... END).
        buffer = ""
        for piece in sql.split(";"):
            buffer += piece + ";"
            if sqlite3.complete_statement(buffer):
                if buffer.strip(" \n;"):
                    await self.execute(buffer)
                buffer = ""


class SqliteExecutor(Executor):
    """SQLite through ``databases`` + aiosqlite: one dedicated connection, WAL mode.

    SQLite has one writer at a time, so this process serialises its own work with a lock and
    takes the database's write lock up front (``BEGIN IMMEDIATE``); other processes (the CLI
    next to a running app) wait on ``busy_timeout``.
    """

    dialect: Dialect = "sqlite"

    def __init__(
        self, url: str | None = None, *, database: Any = None, busy_timeout_ms: int = 5000
    ) -> None:
        if database is None:
            if url is None:
                raise ValueError("SqliteExecutor needs a URL or a databases.Database")
            import databases

            database = databases.Database(url)
        self._database = database
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: Any = None
        self._raw: Any = None
        self._lock = asyncio.Lock()
        self._cache: dict[str, str] = {}
        self._connected_here = False

    async def _open(self) -> Any:
        if self._closed:
            raise BackendUnavailable("database", "the ledger is closed")
        if self._raw is None:
            path = str(getattr(self._database.url, "database", "") or "")
            folder = os.path.dirname(path) or "."
            if path and path != ":memory:" and not await asyncio.to_thread(os.path.isdir, folder):
                raise BackendUnavailable("database", f"no directory for the SQLite file {path!r}")
            try:
                if not self._database.is_connected:
                    await self._database.connect()
                    self._connected_here = True
                conn = self._database.connection()
                await conn.__aenter__()
                raw = conn.raw_connection
                for pragma in (
                    "PRAGMA journal_mode=WAL",
                    f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}",
                    "PRAGMA foreign_keys=ON",
                    "PRAGMA synchronous=FULL",
                ):
                    await (await raw.execute(pragma)).close()
            except (OSError, sqlite3.Error) as exc:
                # aiosqlite stops its worker thread without waiting for it after a failed
                # connect; give the thread a moment so it doesn't outlive the event loop
                await asyncio.sleep(0.05)
                raise BackendUnavailable("database", repr(exc)) from exc
            self._conn, self._raw = conn, raw
        return self._raw

    @asynccontextmanager
    async def _use(self, write: bool) -> AsyncIterator[Conn]:
        async with self._lock:
            raw = await self._open()
            conn = _SqliteConn(raw, self._cache)
            if not write:
                yield conn
                return
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise BackendUnavailable("database", repr(exc)) from exc
            try:
                yield conn
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            else:
                try:
                    await conn.execute("COMMIT")
                except sqlite3.OperationalError as exc:
                    await conn.execute("ROLLBACK")
                    raise BackendUnavailable("database", repr(exc)) from exc

    def transaction(self) -> AbstractAsyncContextManager[Conn]:
        return self._use(write=True)

    def read(self) -> AbstractAsyncContextManager[Conn]:
        return self._use(write=False)

    async def close(self) -> None:
        """Wait for the operation in progress, then close. Later operations fail as unavailable:
        reopening would start an aiosqlite worker thread that nobody closes, and that
        non-daemon thread keeps the process from exiting."""
        async with self._lock:
            self._closed = True
            if self._conn is not None:
                conn, self._conn, self._raw = self._conn, None, None
                await conn.__aexit__(None, None, None)
            if self._connected_here and self._database.is_connected:
                # a caller's own, already connected Database stays the caller's to close
                await self._database.disconnect()
