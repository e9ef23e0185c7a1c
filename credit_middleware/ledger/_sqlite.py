"""The embedded default: SQLite through the standard library's ``sqlite3``, on one thread.

Why not aiosqlite (through ``databases``), which served SQLite before: it hops to its thread
once per *statement* (a debit is ~8), holding the process's lock across every hop; a caller
cancelled between ``BEGIN IMMEDIATE`` and ``COMMIT`` left the one shared connection inside a
transaction, and every later write failed until a restart (issue 10); and its worker thread is
not a daemon, so a ledger nobody closed kept the process from exiting.

Here one daemon thread owns the connection and runs *whole operations*: ``run(fn)`` queues
``fn``; the thread calls ``fn(conn)`` and drives the coroutine to its end synchronously (the
connection's async methods complete without suspending), so the SQL core, written once for both
backends, runs unchanged with one thread hop per operation. Operations that queue up while one
runs are executed together (group commit): one ``BEGIN IMMEDIATE ... COMMIT``, so one fsync
(``synchronous=FULL`` and WAL kept: money), each operation inside its own ``SAVEPOINT`` so a
failing one rolls back alone and gets its own exception. Every caller's result is delivered only
after the ``COMMIT`` that made it durable; the order is first come, first served.

Cancellation never reaches the connection: an operation cancelled while still queued is dropped
without running; one already running completes and its result is discarded (its caller gets
``CancelledError`` as usual). Other processes sharing the file (the CLI beside a running app)
wait on ``busy_timeout``. ``Ledger(database=databases.Database(...))`` still uses ``databases``
(``_sqlite_databases``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from ..errors import BackendUnavailable, ConfigurationError
from ._executor import Conn, Dialect, Executor, Row
from ._sqlite_core import DROPPED, QUEUED, RUNNING, Direct, Item, Reply, run_batch, serve_session

T = TypeVar("T")
log = logging.getLogger("credit_middleware.ledger")

MAX_BATCH = 256  # operations per group commit: bounds how long one batch holds the write lock


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///path`` URL (``sqlite:////abs/path``, ``sqlite:///:memory:``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("sqlite", "sqlite+aiosqlite") or parts.netloc:
        raise ConfigurationError(f"a SQLite URL looks like sqlite:///path.db, not {url!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"SQLite URLs take no options: {url!r}")
    path = unquote(parts.path[1:])
    if not path:
        raise ConfigurationError(f"no file in the SQLite URL {url!r}: use sqlite:///path.db")
    return path


def _settle(replies: list[Reply]) -> None:
    for _, future, result, error in replies:
        if future.done():  # its caller was cancelled: the result is discarded
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _send(replies: list[Reply]) -> None:
    """Hand results back to their event loops (one wake-up per loop and batch)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Reply]] = {}
    for reply in replies:
        by_loop.setdefault(reply[0], []).append(reply)
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, batch)


def _again(exc: BackendUnavailable) -> BackendUnavailable:
    """One exception instance per caller (each raise gets its own traceback)."""
    return BackendUnavailable(exc.backend, exc.detail)


class SqliteExecutor(Executor):
    """The embedded default's executor (see the module docstring). The thread starts on the
    first operation and ends at ``close()``; a daemon, it never keeps the process alive."""

    dialect: Dialect = "sqlite"

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000) -> None:
        self._path = sqlite_path(url)
        self._busy_timeout_ms = busy_timeout_ms
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[Any] | None = None
        self._claims = threading.Lock()  # a caller dropping an item vs the thread starting it

    # ------------------------------------------------------------------ the event loop's side

    async def run(self, fn: Callable[[Conn], Awaitable[T]], *, write: bool = True) -> T:
        item = Item(asyncio.get_running_loop(), fn, write)
        self._submit(item)
        try:
            result: T = await item.future
        except asyncio.CancelledError:
            self._drop(item)
            raise
        return result

    def transaction(self) -> AbstractAsyncContextManager[Conn]:
        return self._session(write=True)

    def read(self) -> AbstractAsyncContextManager[Conn]:
        return self._session(write=False)

    @asynccontextmanager
    async def _session(self, write: bool) -> AsyncIterator[Conn]:
        """A block of statements sent from the event loop, one hop each (for callers that
        still use ``transaction()``/``read()``; ``run`` is the fast way). The thread serves
        nothing else meanwhile and ends the block with ``COMMIT`` or ``ROLLBACK`` even when
        the caller is cancelled, so no transaction outlives it."""
        loop = asyncio.get_running_loop()
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        item = Item(loop, write=write, inbox=inbox)
        self._submit(item)
        try:
            await item.future
        except asyncio.CancelledError:
            if not self._drop(item):  # already begun: end it
                inbox.put(("end", False, None))
            raise
        commit = False
        try:
            yield _SessionConn(loop, inbox)
            commit = True
        finally:
            ended = loop.create_future()
            inbox.put(("end", commit, ended))
            # if cancelled here, the thread still ends the block; only the outcome goes unheard
            await ended

    def _submit(self, item: Item) -> None:
        if self._closed:
            raise BackendUnavailable("database", "the ledger is closed")
        if self._thread is None:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(
                target=self._work, args=(self._queue,), name="credit-ledger-sqlite", daemon=True
            )
            self._thread.start()
        self._queue.put(item)

    def _drop(self, item: Item) -> bool:
        """Drop a still-queued item; False when the thread has already started it."""
        with self._claims:
            if item.state == QUEUED:
                item.state = DROPPED
                return True
            return False

    async def close(self) -> None:
        """Let the queued operations finish, then close the connection and end the thread.
        Until ``reopen()``, operations raise ``BackendUnavailable``: a stray task outliving
        its app must not open a connection that nothing would close."""
        self._closed = True
        if self._thread is not None:
            stop = Item(asyncio.get_running_loop())
            self._queue.put(stop)
            self._thread, self._stopped = None, stop.future
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            self._stopped = None  # a later close(), on another event loop, waits for nothing

    # ------------------------------------------------------------------ the thread's side

    def _work(self, inbox: queue.SimpleQueue[Item]) -> None:
        conn: Direct | None = None  # this thread's alone (a reopened executor has another)
        carry: Item | None = None
        while True:
            item = carry if carry is not None else inbox.get()
            carry = None
            if item.fn is None and item.inbox is None:  # stop
                if conn is not None:
                    _disconnect(conn)
                _send([(item.loop, item.future, None, None)])
                return
            batch = [item]
            while item.inbox is None and len(batch) < MAX_BATCH:
                try:
                    nxt = inbox.get_nowait()
                except queue.Empty:
                    break
                if nxt.fn is None:  # a stop or a block: after this batch
                    carry = nxt
                    break
                batch.append(nxt)
            batch = [it for it in batch if it.state == QUEUED]  # not dropped yet
            if not batch:
                continue
            try:
                conn = conn or self._connect()
                if item.inbox is not None:
                    if self._claim(item):
                        serve_session(conn, item, _send)
                else:
                    _send(run_batch(conn, batch, self._claim))
            except BackendUnavailable as exc:  # the connection cannot be opened
                _send([(it.loop, it.future, None, _again(exc)) for it in batch])
            except BaseException as exc:  # pragma: no cover - a bug; the thread must outlive it
                log.exception("the SQLite ledger thread failed")
                if conn is not None:  # no transaction may stay open: start afresh
                    _disconnect(conn)
                    conn = None
                failed = BackendUnavailable("database", f"the ledger thread failed: {exc!r}")
                _send([(it.loop, it.future, None, _again(failed)) for it in batch])

    def _claim(self, item: Item) -> bool:
        with self._claims:
            if item.state == QUEUED:
                item.state = RUNNING
                return True
            return False

    def _connect(self) -> Direct:
        folder = os.path.dirname(self._path) or "."
        if self._path != ":memory:" and not os.path.isdir(folder):
            raise BackendUnavailable("database", f"no directory for the SQLite file {self._path!r}")
        raw: sqlite3.Connection | None = None
        try:
            raw = sqlite3.connect(
                self._path, timeout=self._busy_timeout_ms / 1000, isolation_level=None
            )
            for pragma in (
                "PRAGMA journal_mode=WAL",
                f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}",
                "PRAGMA foreign_keys=ON",
                "PRAGMA synchronous=FULL",
            ):
                raw.execute(pragma).close()
        except (OSError, sqlite3.Error) as exc:
            if raw is not None:
                raw.close()
            raise BackendUnavailable("database", repr(exc)) from exc
        return Direct(raw)


def _disconnect(conn: Direct) -> None:
    with contextlib.suppress(sqlite3.Error):
        if conn.raw.in_transaction:
            conn.raw.execute("ROLLBACK")
    conn.raw.close()


class _SessionConn(Conn):
    """A ``transaction()`` block's connection: each statement a hop to the thread."""

    dialect: Dialect = "sqlite"

    def __init__(self, loop: asyncio.AbstractEventLoop, inbox: queue.SimpleQueue[Any]) -> None:
        self._loop = loop
        self._inbox = inbox

    async def _ask(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        future = self._loop.create_future()
        self._inbox.put((method, sql, args, future))
        return await future

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        rows: list[Row] = await self._ask("fetch", sql, args)
        return rows

    async def execute(self, sql: str, *args: Any) -> None:
        await self._ask("execute", sql, args)

    async def executescript(self, sql: str) -> None:
        await self._ask("executescript", sql, ())
