"""SQLite through an app's own ``databases.Database`` (``Ledger(database=db)``), on aiosqlite.

Kept for apps whose own tables live in the same file through ``databases``; the embedded
default (a URL) uses the standard library directly (``_sqlite``: one thread hop per operation
and group commit). aiosqlite runs each statement in its thread, one hop per statement, so this
executor holds a lock across a whole operation, and makes it cancellation-safe twice over:
``run`` executes the operation in a task of its own, which a cancelled caller leaves to
complete (result discarded) or, while still waiting for the lock, drops; and every step that
must not be abandoned (``BEGIN``, ``COMMIT``, ``ROLLBACK``) is awaited to its end even when a
``transaction()`` block's caller is cancelled, so the shared connection is never left inside a
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from ..errors import BackendUnavailable
from ._executor import Conn, Dialect, Dropped, Executor, Row, Ticket
from ._sqlite_core import split_script, sqlite_sql

T = TypeVar("T")


async def _settled(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile; then re-raise the
    cancellation (a statement aiosqlite has queued runs anyway: we must know it has)."""
    task = asyncio.ensure_future(aw)
    interrupted: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError as exc:
            interrupted = exc
    if interrupted is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the caller hears of its cancellation instead
        raise interrupted
    return task.result()


class _DbConn(Conn):
    dialect: Dialect = "sqlite"

    def __init__(self, raw: Any, cache: dict[str, str]) -> None:
        self._raw = raw
        self._cache = cache

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        cursor = await self._raw.execute(sqlite_sql(sql, self._cache), args)
        try:
            rows: Sequence[Sequence[Any]] = await cursor.fetchall()
            names = [d[0] for d in cursor.description or ()]
        finally:
            await cursor.close()
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def execute(self, sql: str, *args: Any) -> None:
        cursor = await self._raw.execute(sqlite_sql(sql, self._cache), args)
        await cursor.close()

    async def executescript(self, sql: str) -> None:
        for statement in split_script(sql):
            await self.execute(statement)


class DatabasesExecutor(Executor):
    """SQLite through ``databases`` + aiosqlite: the app's connection, WAL mode.

    SQLite has one writer at a time, so this process serialises its own work with a lock and
    takes the database's write lock up front (``BEGIN IMMEDIATE``); other processes (the CLI
    next to a running app) wait on ``busy_timeout``.
    """

    dialect: Dialect = "sqlite"

    def __init__(self, database: Any, *, busy_timeout_ms: int = 5000) -> None:
        self._database = database
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: Any = None
        self._raw: Any = None
        self._lock = asyncio.Lock()
        self._cache: dict[str, str] = {}
        self._connected_here = False

    async def _complete(self, fn: Callable[[Conn], Awaitable[T]], write: bool, ticket: Ticket) -> T:
        async with self._use(write, ticket, snapshot=True) as conn:
            return await fn(conn)

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
    async def _use(
        self, write: bool, ticket: Ticket | None = None, *, snapshot: bool = False
    ) -> AsyncIterator[Conn]:
        """A block on the connection: a write transaction, or a read (with ``snapshot``, one
        read transaction, as the embedded default's reads)."""
        async with self._lock:
            if ticket is not None and ticket.dropped:
                raise Dropped  # its caller was cancelled while it waited for the lock
            raw = await self._open()
            conn = _DbConn(raw, self._cache)
            try:
                if write or snapshot:
                    try:
                        await _settled(conn.execute("BEGIN IMMEDIATE" if write else "BEGIN"))
                    except sqlite3.OperationalError as exc:
                        raise BackendUnavailable("database", repr(exc)) from exc
                yield conn
                if write or snapshot:
                    try:
                        await _settled(conn.execute("COMMIT"))
                    except sqlite3.OperationalError as exc:
                        raise BackendUnavailable("database", repr(exc)) from exc
            finally:
                # whatever ended the block (an error, a cancellation, a read that began a
                # snapshot of its own): no transaction outlives it
                if raw.in_transaction:
                    with contextlib.suppress(sqlite3.OperationalError):  # already rolled back
                        await _settled(conn.execute("ROLLBACK"))

    def transaction(self) -> AbstractAsyncContextManager[Conn]:
        return self._use(write=True)

    def read(self) -> AbstractAsyncContextManager[Conn]:
        return self._use(write=False)

    async def close(self) -> None:
        """Wait for the operation in progress, then close. Later operations fail as
        unavailable until ``reopen()``."""
        async with self._lock:
            self._closed = True
            if self._conn is not None:
                conn, self._conn, self._raw = self._conn, None, None
                await conn.__aexit__(None, None, None)
            if self._connected_here and self._database.is_connected:
                # a caller's own, already connected Database stays the caller's to close
                await self._database.disconnect()
