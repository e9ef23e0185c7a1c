"""The operator's actions on a large ledger beside live traffic: debits keep within their
timeout while verify, a report and a purge run; the idempotency store is purged in set-based
batches (from the CLI and from the app's lifespan) without waiting on a request in flight;
the admin searches read their indexes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from benchmarks.scale_ledger import (
    DAY_US,
    SPAN_US,
    T0_US,
    Shape,
    build_statements,
    fill_postgres,
    fill_sqlite,
    requests_statements,
)
from credit_middleware import Credits, Ledger
from credit_middleware.cli import main
from credit_middleware.config import Lifecycle
from credit_middleware.ledger import _search
from credit_middleware.ledger._executor import Conn, Row
from credit_middleware.ledger._sqlite import sqlite_path
from credit_middleware.report import build_report

NOW_US = T0_US + SPAN_US + DAY_US  # a day after the bulk-built ledger's last entry


def _clock() -> float:
    return NOW_US / 1e6


async def _bulk(url: str, statements: list[str]) -> None:
    if url.startswith("sqlite"):
        await asyncio.to_thread(fill_sqlite, sqlite_path(url), statements)
    else:
        await fill_postgres(url, statements)


async def _bulk_ledger(url: str, entries: int, expired: int = 0) -> Ledger:
    """A migrated ledger of ``entries`` entries (and ``expired`` expired requests), built in
    bulk; the ledger's clock a day after its last entry."""
    first = Ledger(url, clock=_clock)
    await first.migrate()
    dialect = first.dialect
    await first.close()
    rows = build_statements(dialect, Shape(entries))
    if expired:
        rows += requests_statements(dialect, expired, 50, NOW_US)
    await _bulk(url, rows)
    return Ledger(url, clock=_clock, timeout=TIMEOUT)


async def _expired_requests(ledger: Ledger, expired: int, live: int) -> None:
    async def write(conn: Conn) -> None:
        for sql in requests_statements(conn.dialect, expired, live, ledger.now_us()):
            await conn.execute(sql)

    await ledger._x.run(write)


async def _requests_left(ledger: Ledger) -> int:
    return int(
        await ledger._x.run(
            lambda conn: conn.fetchval("SELECT COUNT(*) FROM credit_requests"), write=False
        )
    )


# ---------------------------------------------------------------------------- live traffic

TIMEOUT = 3.0  # the middleware's default backend timeout


@pytest.mark.slow
@pytest.mark.anyio
async def test_debits_keep_within_their_timeout_while_verify_report_and_purge_run(
    ledger_url: str,
) -> None:
    shape = Shape(200_000)
    ledger = await _bulk_ledger(ledger_url, shape.entries, expired=20_000)
    stop = asyncio.Event()
    failures: list[str] = []
    debits = 0

    async def pay(n: int) -> None:
        nonlocal debits
        i = 0
        while not stop.is_set():
            account = f"user-{20 * ((n * 1000 + i) % 500) + 1}"  # accounts that bought credits
            try:
                await asyncio.wait_for(ledger.debit(account, "0.001", route="/v1/chat"), TIMEOUT)
                debits += 1
            except Exception as exc:  # a timeout is what this test is about
                failures.append(repr(exc))
            i += 1

    async def purge() -> int:
        purged = 0
        while (n := await ledger.purge_requests(limit=5000)) > 0:
            purged += n
        return purged

    try:
        payers = [asyncio.create_task(pay(n)) for n in range(4)]
        try:
            verified, report, purged = await asyncio.gather(
                ledger.verify(), build_report(ledger), purge()
            )
        finally:
            stop.set()
            await asyncio.gather(*payers)
        assert failures == [], failures[:3]
        assert debits > 0 and purged == 20_000
        assert verified.ok, verified.discrepancies[:3]
        assert report.accounts == shape.accounts
        after = await ledger.verify()
        assert after.ok and after.entries == shape.total_entries + debits
        rolled = await ledger.report_rows(-(2**62), 2**62, 10, source="rollups")
        full = await ledger.report_rows(-(2**62), 2**62, 10, source="entries")
        assert sorted(map(repr, rolled.entries)) == sorted(map(repr, full.entries))
        assert sorted(map(repr, rolled.usage)) == sorted(map(repr, full.usage))
    finally:
        await ledger.close()


async def _after(awaitable: Any, name: str, order: list[str]) -> None:
    await awaitable
    order.append(name)


@pytest.mark.anyio
async def test_the_embedded_ledger_serves_a_debit_in_the_middle_of_verify_and_of_a_report(
    sqlite_url: str,
) -> None:
    """SQLite has one thread for everything: an operator's read of the whole ledger in one
    go would hold every debit until it ends. In slices and batches, a debit gets in between."""
    ledger = await _bulk_ledger(sqlite_url, 100_000)
    try:
        for name, action in (("verify", ledger.verify), ("report", lambda: build_report(ledger))):
            order: list[str] = []
            running = asyncio.create_task(_after(action(), name, order))
            await asyncio.sleep(0)  # the operator's first step is submitted first
            await ledger.debit("user-21", "0.001", route="/v1/chat")
            order.append("debit")
            await running
            assert order == ["debit", name]
    finally:
        await ledger.close()


# ---------------------------------------------------------------------------- purge


@pytest.mark.anyio
async def test_purge_deletes_expired_requests_in_batches_and_skips_one_in_flight(
    pg_url: str,
) -> None:
    import asyncpg

    ledger = Ledger(pg_url, clock=_clock)
    await ledger.migrate()
    try:
        await _expired_requests(ledger, 25, 5)
        holder = await asyncpg.connect(pg_url)
        try:
            tx = holder.transaction()
            await tx.start()  # a request claiming an expired key holds its row
            await holder.execute(
                "SELECT 1 FROM credit_requests WHERE request_key = 'req-3' FOR UPDATE"
            )
            first = await asyncio.wait_for(ledger.purge_requests(limit=10), 10)
            rest = 0
            while (n := await asyncio.wait_for(ledger.purge_requests(limit=10), 10)) > 0:
                rest += n
            assert first == 10 and first + rest == 24  # all but the locked one, never waiting
            await tx.rollback()
        finally:
            await holder.close()
        assert await ledger.purge_requests() == 1
        assert await _requests_left(ledger) == 5  # the live ones stay
    finally:
        await ledger.close()


def test_the_purge_command_forgets_expired_requests(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed() -> None:
        ledger = Ledger(ledger_url)  # the wall clock, as the CLI's
        await ledger.migrate()
        try:
            await _expired_requests(ledger, 7, 3)
        finally:
            await ledger.close()

    asyncio.run(seed())
    db = ("--database-url", ledger_url, "--json")
    assert main(["purge", "--batch", "2", *db]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["purged"], out["batches"], out["done"]) == (7, 4, True)
    assert main(["purge", *db]) == 0
    assert json.loads(capsys.readouterr().out)["purged"] == 0


@pytest.mark.anyio
async def test_the_lifespan_purges_and_rolls_up_on_its_schedule(sqlite_url: str) -> None:
    credits = Credits(database_url=sqlite_url, lifecycle=Lifecycle(maintenance_interval=0.05))
    assert credits.maintenance is not None
    async with credits:
        ledger = credits.ledger
        await _expired_requests(ledger, 12, 2)
        await ledger.provision("m", tier="trial", trial_amount="5", layer="signup")
        await ledger.debit("m", "0.5", route="/v1/chat")
        deadline = asyncio.get_running_loop().time() + 30
        while credits.maintenance.rounds < 2:  # a round that began after the writes
            assert asyncio.get_running_loop().time() < deadline, "no maintenance round ran"
            await asyncio.sleep(0.02)
        assert await _requests_left(ledger) == 2
        state = await ledger._x.run(
            lambda conn: conn.fetchrow("SELECT entry_mark FROM credit_rollup_state"),
            write=False,
        )
        assert state is not None and int(state["entry_mark"]) >= 2
    assert credits.maintenance._task is None  # stopped with the lifespan
    assert Credits(lifecycle=Lifecycle(maintenance_interval=None)).maintenance is None


# ---------------------------------------------------------------------------- searches


class _Spy(Conn):
    """Records the statements a search runs (to ask the database how it runs them)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.dialect = conn.dialect
        self.seen: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        self.seen.append((sql, args))
        return await self.conn.fetch(sql, *args)

    async def execute(self, sql: str, *args: Any) -> None:
        await self.conn.execute(sql, *args)

    async def executescript(self, sql: str) -> None:
        await self.conn.executescript(sql)


@pytest.mark.anyio
async def test_every_search_reads_an_index(ledger: Ledger) -> None:
    await ledger.open_account("org-1|alice", tier="t", metadata={"email": "Alice@Example.com"})
    await ledger.open_account("org-1|bob", tier="t", metadata={"email_domain": "corp.test"})
    expected = {
        "": "credit_accounts_created",
        "@corp.test": "credit_accounts_domain",
        "alice@example.com": "credit_accounts_email",
        "org-1|": "credit_accounts_id_prefix"
        if ledger.dialect == "postgresql"
        else "sqlite_autoindex",
    }
    for query, index in expected.items():

        async def plan(conn: Conn, query: str = query) -> str:
            spy = _Spy(conn)
            found = await _search.search_accounts(spy, query, 10)
            assert found
            sql, args = spy.seen[-1]
            if conn.dialect == "sqlite":
                rows = await conn.fetch("EXPLAIN QUERY PLAN " + sql, *args)
                return " ".join(str(r["detail"]) for r in rows)
            await conn.execute("BEGIN")
            try:
                await conn.execute("SET LOCAL enable_seqscan = off")  # tiny tables: scans win
                rows = await conn.fetch("EXPLAIN " + sql, *args)
            finally:
                await conn.execute("ROLLBACK")
            return " ".join(str(r["QUERY PLAN"]) for r in rows)

        text = await ledger._x.run(plan, write=False)
        assert index in text, (query, text)
