"""The embedded default's executor: group commit, savepoints, FIFO, and what cancellation does.

To see a batch form deterministically, an operation blocks the database thread on a
``threading.Event`` (operations run synchronously there) while the others queue up behind it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest

from credit_middleware import (
    AccountNotFound,
    BackendUnavailable,
    InsufficientCredits,
    Ledger,
)
from credit_middleware.ledger import _ops
from credit_middleware.ledger._executor import Conn
from credit_middleware.ledger._sqlite import SqliteExecutor
from credit_middleware.ledger._tx import Tag

pytestmark = pytest.mark.anyio


@pytest.fixture
async def led(sqlite_url: str) -> AsyncIterator[Ledger]:
    ledger = Ledger(sqlite_url)
    await ledger.migrate()
    await ledger.open_account("a")
    await ledger.grant("a", "10")
    try:
        yield ledger
        report = await ledger.verify()
        assert report.ok, report.discrepancies
    finally:
        await ledger.close()


def executor(ledger: Ledger) -> SqliteExecutor:
    assert isinstance(ledger._x, SqliteExecutor)
    return ledger._x


class Gate:
    """Holds the database thread inside an operation until opened; records its statements."""

    def __init__(self, ledger: Ledger, *, write: bool = True) -> None:
        self.x = executor(ledger)
        self.write = write
        self.entered = threading.Event()
        self.open = threading.Event()
        self.trace: list[str] = []
        self.task: asyncio.Future[None] | None = None

    async def _hold(self, conn: Conn) -> None:
        conn.raw.set_trace_callback(self.trace.append)  # type: ignore[attr-defined]
        self.entered.set()
        self.open.wait(10)

    async def __aenter__(self) -> Gate:
        self.task = asyncio.ensure_future(self.x.run(self._hold, write=self.write))
        assert await asyncio.to_thread(self.entered.wait, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.open.set()
        assert self.task is not None
        await self.task

    async def release(self) -> None:
        await asyncio.sleep(0)  # let every task created so far queue its operation
        await asyncio.sleep(0)
        self.open.set()

    async def untraced(self) -> None:
        async def untrace(conn: Conn) -> None:
            conn.raw.set_trace_callback(None)  # type: ignore[attr-defined]

        await self.x.run(untrace)


async def test_queued_operations_share_one_commit_and_fail_alone(led: Ledger) -> None:
    replies_at: list[int] = []

    def when_done(_: Any) -> None:  # how many COMMITs had run when a caller heard back
        replies_at.append(gate.trace.count("COMMIT"))

    async def rogue(conn: Conn) -> None:  # writes, then fails: only its savepoint rolls back
        await conn.execute("UPDATE credit_accounts SET balance = balance + 7")
        raise ValueError("rogue")

    async with Gate(led) as gate:
        tasks: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(led.debit("a", "0.01", key=f"k{i}")) for i in range(40)
        ]
        tasks.insert(10, asyncio.ensure_future(led.debit("ghost", "1")))
        tasks.insert(20, asyncio.ensure_future(led.debit("a", "100")))
        tasks.insert(30, asyncio.ensure_future(gate.x.run(rogue)))
        for t in tasks:
            t.add_done_callback(when_done)
        await gate.release()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    trace = list(gate.trace)
    await gate.untraced()
    assert isinstance(results.pop(30), ValueError)
    assert isinstance(results.pop(20), InsufficientCredits)
    assert isinstance(results.pop(10), AccountNotFound)
    assert all(not isinstance(r, BaseException) for r in results)
    # the gate's own batch committed first; then all 43 operations in one transaction
    assert trace.count("BEGIN IMMEDIATE") == 1
    assert trace.count("COMMIT") == 2
    assert trace.count("SAVEPOINT op") == 43
    assert replies_at == [2] * 43  # every reply came after the COMMIT that made it durable
    debits = [e for e in reversed(await led.history("a", limit=100)) if e.kind == "debit"]
    assert [e.key for e in debits] == [f"k{i}" for i in range(40)]  # FIFO
    assert (await led.balance("a")).available == Decimal("9.6")


async def test_a_batch_that_cannot_begin_fails_at_once_not_one_by_one(sqlite_url: str) -> None:
    """Another process holds the write lock past busy_timeout: the whole batch is told the
    database is unavailable after one wait, not one wait per operation."""
    import sqlite3

    led = Ledger(executor=SqliteExecutor(sqlite_url, busy_timeout_ms=100))
    await led.migrate()
    await led.open_account("a")
    await led.grant("a", "10")
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        async with Gate(led, write=False) as gate:
            other.execute("BEGIN IMMEDIATE")  # the other process takes the write lock
            tasks = [asyncio.ensure_future(led.debit("a", "0.01")) for _ in range(20)]
            await gate.release()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        trace = list(gate.trace)
        other.execute("ROLLBACK")
        await gate.untraced()
        assert all(isinstance(r, BackendUnavailable) for r in results), results
        assert not any(r.maybe_applied for r in results if isinstance(r, BackendUnavailable))
        assert trace.count("BEGIN IMMEDIATE") == 1
        assert (await led.debit("a", "1")).available == 9  # served again once the lock is free
        assert (await led.verify()).ok
    finally:
        other.close()
        await led.close()


async def test_an_operation_cancelled_while_queued_never_runs(led: Ledger) -> None:
    async with Gate(led) as gate:
        dropped = asyncio.ensure_future(led.debit("a", "1", key="dropped"))
        kept = asyncio.ensure_future(led.debit("a", "1", key="kept"))
        await asyncio.sleep(0)
        dropped.cancel()
        await gate.release()
        await kept
    assert dropped.cancelled()
    keys = {e.key for e in await led.history("a")}
    assert "kept" in keys and "dropped" not in keys
    assert (await led.balance("a")).available == 9


async def test_an_operation_cancelled_while_running_completes(led: Ledger) -> None:
    entered, release = threading.Event(), threading.Event()
    now = led.now_us()

    async def debit_then_block(conn: Conn) -> _ops.Outcome:
        out = await _ops.debit(conn, now, "a", 1_000_000, Tag(key="running"))
        entered.set()
        release.wait(10)
        return out

    task = asyncio.ensure_future(executor(led).run(debit_then_block))
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()  # the caller is told CancelledError as usual
    release.set()
    await led.debit("a", "1", key="after")  # queued behind it: it has committed by now
    keys = [e.key for e in await led.history("a")]
    assert keys[:2] == ["after", "running"]
    assert (await led.balance("a")).available == 8


async def test_a_lost_transaction_fails_the_batch_so_far_and_only_that(led: Ledger) -> None:
    """SQLite rolls a whole transaction back by itself on some errors (disk full, I/O): the
    operations before it in the batch are told, and nothing of theirs stands."""

    async def takes_the_transaction(conn: Conn) -> None:
        await conn.execute("ROLLBACK")
        raise OSError("disk I/O error (simulated)")

    async with Gate(led) as gate:
        before = asyncio.ensure_future(led.debit("a", "1", key="before"))
        failing = asyncio.ensure_future(gate.x.run(takes_the_transaction))
        after = asyncio.ensure_future(led.debit("a", "1", key="after"))
        await gate.release()
        results = await asyncio.gather(before, failing, after, return_exceptions=True)
    assert isinstance(results[0], BackendUnavailable)
    assert isinstance(results[1], OSError)
    assert not isinstance(results[2], BaseException)
    keys = [e.key for e in await led.history("a")]
    assert keys[0] == "after" and "before" not in keys
    assert (await led.balance("a")).available == 9


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "in-a-batch"])
async def test_an_operation_that_suspends_is_refused_clearly(led: Ledger, batched: bool) -> None:
    async def suspends(conn: Conn) -> None:
        await conn.execute("UPDATE credit_accounts SET balance = balance + 7")
        await asyncio.sleep(0)

    if not batched:
        with pytest.raises(RuntimeError, match="awaited something besides its connection"):
            await executor(led).run(suspends)
    else:
        async with Gate(led) as gate:
            bad = asyncio.ensure_future(gate.x.run(suspends))
            good = asyncio.ensure_future(led.debit("a", "1"))
            await gate.release()
            with pytest.raises(RuntimeError, match="awaited something besides"):
                await bad
            await good
    await led.debit("a", "1")  # the connection is not left in a transaction
    assert (await led.balance("a")).available == (8 if batched else 9)


async def test_a_cancelled_transaction_block_is_rolled_back(led: Ledger) -> None:
    """The older ``transaction()`` block, cancelled mid-way: the thread rolls it back."""
    inside = asyncio.Event()

    async def block() -> None:
        async with executor(led).transaction() as conn:
            await conn.execute("UPDATE credit_accounts SET balance = balance + 7")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(block())
    await inside.wait()
    task.cancel()
    await asyncio.wait([task])
    assert (await led.debit("a", "1")).available == 9  # +7 rolled back, no open transaction


async def test_a_transaction_block_cancelled_while_queued_never_begins(led: Ledger) -> None:
    async def block() -> None:
        async with executor(led).transaction() as conn:
            await conn.execute("UPDATE credit_accounts SET balance = balance + 7")

    async with Gate(led) as gate:
        task = asyncio.ensure_future(block())
        await asyncio.sleep(0)
        task.cancel()
        await gate.release()
    await asyncio.wait([task])
    assert task.cancelled()
    assert (await led.debit("a", "1")).available == 9


async def test_reads_batch_together_and_fail_alone(led: Ledger) -> None:
    async def read(conn: Conn) -> Any:
        return await conn.fetchval("SELECT balance FROM credit_accounts WHERE account_id = $1", "a")

    async def broken(conn: Conn) -> None:
        await conn.fetch("SELECT x FROM nowhere")

    x = executor(led)
    results = await asyncio.gather(
        x.run(read, write=False), x.run(broken, write=False), return_exceptions=True
    )
    assert results[0] == 10_000_000
    assert "no such table" in str(results[1])


async def test_operations_from_another_event_loop_thread(led: Ledger) -> None:
    """Each reply goes back to the loop its caller runs on."""
    x = executor(led)

    async def count(conn: Conn) -> Any:
        return await conn.fetchval("SELECT COUNT(*) FROM credit_entries")

    def elsewhere(run: Callable[..., Any]) -> Any:
        return asyncio.run(run(count, write=False))

    here, there = await asyncio.gather(
        x.run(count, write=False), asyncio.to_thread(elsewhere, x.run)
    )
    assert here == there == 1


async def test_closed_then_reopened(sqlite_url: str) -> None:
    led = Ledger(sqlite_url)
    await led.migrate()
    pending = [asyncio.ensure_future(led.open_account(f"u{i}")) for i in range(20)]
    await asyncio.sleep(0)
    await led.close()  # the queued operations finish first
    assert all(t.done() and not t.exception() for t in pending)
    with pytest.raises(BackendUnavailable, match="closed"):
        await led.get_account("u1")
    led.reopen()
    try:
        assert (await led.verify()).accounts == 20
    finally:
        await led.close()
