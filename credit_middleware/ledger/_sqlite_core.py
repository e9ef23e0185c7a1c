"""What the SQLite thread does on its one connection: a group commit, or a ``transaction()``
block. Everything here runs synchronously in that thread (see ``_sqlite``) and leaves the
connection outside any transaction whatever happens, which is what makes the executor
cancellation-safe: nothing on the event loop's side can interrupt it.
"""

from __future__ import annotations

import asyncio
import queue
import re
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import BackendUnavailable
from ._executor import Conn, Dialect, Row

T = TypeVar("T")
#: (event loop, the caller's future, result, exception): a reply the thread sends back
Reply = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Any, "BaseException | None"]

_PLACEHOLDER = re.compile(r"\$(\d+)")
SESSION_IDLE_S = 30.0  # a transaction() block silent this long is rolled back (abandoned)
QUEUED, RUNNING, DROPPED = 0, 1, 2


def sqlite_sql(sql: str, cache: dict[str, str]) -> str:
    """PostgreSQL's ``$1`` placeholders as SQLite's ``?1`` (cached: the core's text is fixed)."""
    out = cache.get(sql)
    if out is None:
        out = cache[sql] = _PLACEHOLDER.sub(r"?\1", sql)
    return out


def split_script(sql: str) -> list[str]:
    """A script's complete statements. ``sqlite3``'s own ``executescript()`` commits first;
    one by one, a migration stays inside the caller's transaction (triggers hold ``;``)."""
    out: list[str] = []
    buffer = ""
    for piece in sql.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \n;"):
                out.append(buffer)
            buffer = ""
    return out


def drive(aw: Awaitable[T]) -> T:
    """Run an awaitable that never suspends to its end, here and now."""
    steps = aw.__await__()
    try:
        steps.send(None)
    except StopIteration as finished:
        result: T = finished.value
        return result
    close = getattr(steps, "close", None)
    if close is not None:
        close()
    raise RuntimeError(
        "a ledger operation on SQLite awaited something besides its connection; operations"
        " run in the database thread and may only await the Conn they are given"
    )


class Direct(Conn):
    """The thread's connection: async methods that finish without suspending."""

    dialect: Dialect = "sqlite"

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw
        self._cache: dict[str, str] = {}

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        cursor = self.raw.execute(sqlite_sql(sql, self._cache), args)
        try:
            rows = cursor.fetchall()
            names = [d[0] for d in cursor.description or ()]
        finally:
            cursor.close()
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def execute(self, sql: str, *args: Any) -> None:
        self.raw.execute(sqlite_sql(sql, self._cache), args).close()

    async def executescript(self, sql: str) -> None:
        for statement in split_script(sql):
            self.raw.execute(statement).close()


class Item:
    """Work for the thread: an operation (``fn``), a ``transaction()`` block (``inbox``: its
    statements come through there), or neither: stop."""

    __slots__ = ("fn", "future", "inbox", "loop", "state", "write")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[[Conn], Awaitable[Any]] | None = None,
        write: bool = True,
        inbox: queue.SimpleQueue[Any] | None = None,
    ) -> None:
        self.fn = fn
        self.write = write
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.state = QUEUED
        self.inbox = inbox


def _unavailable(what: str, exc: BaseException) -> BackendUnavailable:
    return BackendUnavailable("database", f"{what}: {exc!r}")


def _undo(raw: sqlite3.Connection) -> bool:
    """Roll back to the operation's savepoint; False if the whole transaction is gone (SQLite
    rolls back by itself on some errors: disk full, I/O error)."""
    if not raw.in_transaction:
        return False
    try:
        raw.execute("ROLLBACK TO op")
        raw.execute("RELEASE op")
    except sqlite3.Error:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        return False
    return True


def run_batch(conn: Direct, queued: list[Item], claim: Callable[[Item], bool]) -> list[Reply]:
    """Run queued operations in one transaction, each in its own savepoint, and commit once.

    Each is claimed just before it runs (one whose caller has gone meanwhile is dropped). A
    failing operation rolls back to its savepoint and gets its own exception; the others'
    results count only once the ``COMMIT`` succeeds (otherwise they are told the database
    failed, and nothing of theirs stands). A batch of one needs no savepoint.
    """
    raw = conn.raw
    begin = "BEGIN IMMEDIATE" if any(item.write for item in queued) else "BEGIN"
    alone = len(queued) == 1
    items: list[Item] = []
    outcomes: list[tuple[Any, BaseException | None]] = []
    since = 0  # outcomes[since:] belong to the open transaction

    def lost(why: str, exc: BaseException) -> None:
        for i in range(since, len(outcomes)):
            if outcomes[i][1] is None:
                outcomes[i] = (None, _unavailable(why, exc))

    for n, item in enumerate(queued):
        assert item.fn is not None
        if not claim(item):
            continue
        items.append(item)
        if not raw.in_transaction:  # the first, or a failure took the transaction with it
            try:
                raw.execute(begin)
            except sqlite3.Error as exc:  # locked by another process past busy_timeout, say:
                outcomes.append((None, _unavailable("cannot begin", exc)))
                for rest in queued[n + 1 :]:  # the others would only wait as long again
                    if claim(rest):
                        items.append(rest)
                        outcomes.append((None, _unavailable("cannot begin", exc)))
                break
            since = len(outcomes)
        if not alone:
            raw.execute("SAVEPOINT op")
        try:
            value = drive(item.fn(conn))
            if not alone:
                raw.execute("RELEASE op")
        except BaseException as exc:
            if not isinstance(exc, Exception):  # not for an operation to raise; say so
                exc = RuntimeError(f"a ledger operation raised {exc!r}")
            outcomes.append((None, exc))
            if alone:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
            elif not _undo(raw):
                lost("the transaction was rolled back", exc)
        else:
            outcomes.append((value, None))
    if raw.in_transaction:
        try:
            raw.execute("COMMIT")
        except sqlite3.Error as exc:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            lost("commit failed", exc)
    return [(item.loop, item.future, *out) for item, out in zip(items, outcomes, strict=True)]


def serve_session(conn: Direct, item: Item, reply: Callable[[list[Reply]], None]) -> None:
    """Serve a ``transaction()``/``read()`` block's statements until it ends (or goes silent
    for ``SESSION_IDLE_S``: abandoned), then commit or roll back. A read block that began a
    transaction of its own (a consistent snapshot) and left it open is rolled back."""
    raw, inbox, loop = conn.raw, item.inbox, item.loop
    assert inbox is not None
    if item.write:
        try:
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            reply([(loop, item.future, None, _unavailable("cannot begin", exc))])
            return
    reply([(loop, item.future, None, None)])
    while True:
        try:
            message = inbox.get(timeout=SESSION_IDLE_S)
        except queue.Empty:
            message = ("end", False, None)
        if message[0] != "end":
            method, sql, args, future = message
            try:
                value = drive(getattr(conn, method)(sql, *args))
            except Exception as exc:
                reply([(loop, future, None, exc)])
            else:
                reply([(loop, future, value, None)])
            continue
        _, commit, ended = message
        error: BaseException | None = None
        try:
            if commit and item.write and raw.in_transaction:
                raw.execute("COMMIT")
        except sqlite3.Error as exc:
            error = _unavailable("commit failed", exc)
        finally:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
        if ended is not None:
            reply([(loop, ended, None, error)])
        return
