"""Thin executors: the only code that knows which driver runs the SQL core.

Statements are written once with PostgreSQL's ``$1`` placeholders; the SQLite executors rewrite
them to SQLite's numbered ``?1`` form (cached), so both backends run the same text. This module
holds the interface and asyncpg; SQLite is in ``_sqlite`` (the embedded default, stdlib
``sqlite3``) and ``_sqlite_databases`` (an app's own ``databases.Database``).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, TypeVar

from .._aio import bounded
from ..errors import BackendUnavailable, ConfigurationError

log = logging.getLogger("credit_middleware.ledger")

Row = Mapping[str, Any]
Dialect = Literal["postgresql", "sqlite"]
T = TypeVar("T")


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

    async def execute_count(self, sql: str, *args: Any) -> int:
        """Run an ``UPDATE``/``DELETE`` and return how many rows it touched."""
        await self.execute(sql, *args)
        return int(await self.fetchval("SELECT changes()"))  # SQLite's; PostgreSQL overrides


class Dropped(Exception):
    """An operation whose caller was cancelled before it started (nobody hears of it)."""


class Ticket:
    """Set when an operation's caller is gone: a not yet started operation is dropped."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = False


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # its caller was cancelled: nobody else will look


class Executor(abc.ABC):
    """Runs ledger operations: ``run(fn)`` is the way; ``transaction()`` (writes) and
    ``read()`` hand out a connection for a block of statements."""

    dialect: Dialect
    _closed: bool = False
    #: PostgreSQL: the schema the ledger lives in, made by ``migrate`` if missing (None where
    #: the executor does not name one: SQLite, a caller's pool, a ``search_path`` of ``$user``)
    schema: str | None = None
    #: True when the executor chose ``schema`` itself (the URL named no ``search_path``): a
    #: ledger made before the library kept a schema of its own is looked for elsewhere
    chose_schema: bool = False

    async def former_schemas(self) -> list[str]:
        """The schemas of the database's default search_path, in order: where a ledger made
        before it had a schema of its own may be."""
        return []

    async def run(self, fn: Callable[[Conn], Awaitable[T]], *, write: bool = True) -> T:
        """``await fn(conn)`` in one transaction (``write``) or one read; return its result.

        ``fn`` is a whole operation and may await only the ``Conn`` it is given (the SQLite
        executor runs it synchronously in its database thread, batched with its neighbours
        into one commit). A read (``write=False``) is one read transaction on SQLite (a
        consistent snapshot); on PostgreSQL its statements autocommit unless ``fn`` begins.

        Cancelling the caller never cancels the operation half way (that would leave a
        connection inside a transaction, or make asyncpg abort it): one not yet started is
        dropped, one started completes and its result is discarded; the caller gets
        ``CancelledError`` at once, as usual.
        """
        ticket = Ticket()
        task = asyncio.ensure_future(self._complete(fn, write, ticket))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            ticket.dropped = True
            task.add_done_callback(_retrieve)
            raise

    async def _complete(self, fn: Callable[[Conn], Awaitable[T]], write: bool, ticket: Ticket) -> T:
        if ticket.dropped:
            raise Dropped
        block = self.transaction() if write else self.read()
        async with block as conn:
            return await fn(conn)

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Conn]: ...

    @abc.abstractmethod
    def read(self) -> AbstractAsyncContextManager[Conn]: ...

    def held(self, lane: int) -> AbstractAsyncContextManager[Conn]:
        """A connection for statements that autocommit, like :meth:`read`, which the executor
        may keep for ``lane`` from one use to the next (one user at a time per lane: group
        commit's batches). Here: :meth:`read`."""
        return self.read()

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

    async def execute_count(self, sql: str, *args: Any) -> int:
        status: str = await self._conn.execute(sql, *args)  # "DELETE 5000"
        return int(status.rsplit(" ", 1)[-1])

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


def _usable(raw: Any) -> bool:
    """Whether a kept pool connection can still run a statement: not closed, and not taken back
    by its pool (asyncpg does that to a connection that was closed under its user)."""
    try:
        return not raw.is_closed()
    except Exception:  # InterfaceError: "connection has been released back to the pool"
        return False


_KEPT_LANES = 2  # connections an executor keeps out of its pool at most (held())
_FREE_IN_POOL = 2  # connections held() always leaves in the pool


class AsyncpgExecutor(Executor):
    """PostgreSQL through an asyncpg pool, created lazily and re-created after failures.

    ``schema`` is where the ledger lives; with ``search_path`` every connection of the pool
    sets it (sent with the connection's startup, no round trip). A caller's ``pool`` keeps
    the search_path it was made with."""

    dialect: Dialect = "postgresql"

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: Any = None,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 5.0,
        schema: str | None = None,
        search_path: str | None = None,
    ) -> None:
        self._dsn = dsn
        self.schema = schema
        self.chose_schema = search_path is not None
        self._settings = {"search_path": search_path} if search_path is not None else None
        self._pool = pool
        self._owns_pool = pool is None
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._errors = pg_errors()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the pool lives on
        # lane -> (pool, connection) kept for it (see held()); lanes in use right now
        self._held: dict[int, tuple[Any, Any]] = {}
        self._using: set[int] = set()
        self._giving_back: set[asyncio.Task[None]] = set()

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
        self._held.clear()  # they belonged to the old loop's pool
        self._using.clear()
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
                        server_settings=self._settings,
                    )
                except self._errors as exc:
                    raise BackendUnavailable("database", repr(exc)) from exc
        return self._pool

    @asynccontextmanager
    async def _acquire(self, write: bool) -> AsyncIterator[Conn]:
        pool = await self._get_pool()
        reached = False  # once a statement may have reached the server, a failure is ambiguous
        try:
            # bounded here, not ``acquire(timeout=)``: asyncpg runs a bounded acquire in a task
            # of its own (``wait_for``), a task per ledger operation on the hot path
            raw = await bounded(pool.acquire(), self._timeout)
            try:
                reached = True
                if write:
                    async with raw.transaction():
                        yield _PgConn(raw)
                else:
                    yield _PgConn(raw)
            finally:
                await pool.release(raw, timeout=self._timeout)
        except self._errors as exc:
            raise BackendUnavailable("database", repr(exc), maybe_applied=reached) from exc

    @asynccontextmanager
    async def _held_conn(self, lane: int) -> AsyncIterator[Conn]:
        kept = self._held.get(lane)
        reached = False
        self._using.add(lane)
        try:
            if kept is None or not _usable(kept[1]):
                self._give_back(lane)
                pool = await self._get_pool()
                kept = (pool, await bounded(pool.acquire(), self._timeout))
                self._held[lane] = kept
            raw = kept[1]
            reached = True
            yield _PgConn(raw)
        except BaseException as exc:
            # whatever went wrong (a lost connection, a cancelled statement, a refused one),
            # the connection goes back to the pool, which checks or replaces it
            self._give_back(lane)
            if isinstance(exc, self._errors):
                raise BackendUnavailable("database", repr(exc), maybe_applied=reached) from exc
            raise
        finally:
            self._using.discard(lane)
            if self._closed:
                self._give_back(lane)

    def held(self, lane: int) -> AbstractAsyncContextManager[Conn]:
        """The connection kept for ``lane``: a hot path's statement without a pool round
        (acquire, reset, release: a task and three timers) each time. Kept connections are out
        of the pool for good, so only on a pool of the executor's own, for the first
        ``_KEPT_LANES`` lanes, and never more than leave ``_FREE_IN_POOL`` connections to
        everything else; other lanes use :meth:`read`."""
        if not self._owns_pool or lane >= min(_KEPT_LANES, self._max_size - _FREE_IN_POOL):
            return self.read()
        return self._held_conn(lane)

    def _give_back(self, lane: int) -> None:
        kept = self._held.pop(lane, None)
        if kept is None:
            return
        task = asyncio.get_running_loop().create_task(self._release(*kept))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _release(self, pool: Any, raw: Any) -> None:
        try:
            await pool.release(raw, timeout=self._timeout)
        except Exception as exc:  # asyncpg terminates a connection it could not reset
            log.debug("a kept connection went back to the pool with an error: %r", exc)

    async def former_schemas(self) -> list[str]:
        if not self.chose_schema:
            return []
        import asyncpg

        try:  # a connection without the ledger's search_path: the database's default one
            conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
            try:
                found = await conn.fetchval("SELECT current_schemas(false)")
            finally:
                await conn.close()
        except self._errors as exc:
            raise BackendUnavailable("database", repr(exc)) from exc
        return [str(name) for name in found or ()]

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
            for lane in list(self._held):
                if lane not in self._using:  # one in use is given back when its use ends
                    self._give_back(lane)
            if self._giving_back:
                await asyncio.wait(list(self._giving_back))
            if self._pool is not None and self._owns_pool:
                pool, self._pool = self._pool, None
                await pool.close()
            # a caller's pool stays the caller's: kept (for reopen()) and never closed here
