"""Group commit on PostgreSQL: concurrent debits share transactions, each keeps its own answer,
one account's debits keep their order, and two processes' batches never deadlock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from credit_middleware import Ledger
from credit_middleware.errors import InsufficientCredits
from credit_middleware.ledger._batch import DebitItem
from credit_middleware.ledger._executor import _usable

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[Ledger]:
    led = Ledger(pg_url)
    await led.migrate()
    yield led
    report = await led.verify()
    assert report.ok, report.discrepancies
    await led.close()


async def fund(led: Ledger, accounts: list[str], amount: str) -> None:
    for aid in accounts:
        await led.open_account(aid)
        await led.grant(aid, amount, key="fund")


async def test_concurrent_debits_are_grouped_and_exact(pg: Ledger) -> None:
    accounts = [f"a{i}" for i in range(20)]
    await fund(pg, accounts, "1")
    receipts = await asyncio.gather(
        *(pg.debit(accounts[i % 20], "0.01", key=f"d{i}") for i in range(400))
    )
    assert len({r.entry.entry_id for r in receipts}) == 400
    assert pg._batcher.items >= 400 and pg._batcher.batches < pg._batcher.items
    for aid in accounts:
        assert (await pg.balance(aid)).available == Decimal("0.8")
    # each receipt's own figures: the balance after its own debit
    for aid in accounts:
        mine = sorted(
            (r for r in receipts if r.entry.account_id == aid), key=lambda r: r.entry.entry_id
        )
        assert [r.available for r in mine] == [
            Decimal("1") - Decimal("0.01") * (n + 1) for n in range(20)
        ]


async def test_a_refusal_in_a_batch_refuses_only_its_own_request(pg: Ledger) -> None:
    await fund(pg, ["rich", "poor"], "1")
    await pg.debit("poor", "0.95")
    ops = [pg.debit("rich", "0.01", key=f"r{i}") for i in range(30)]
    ops.insert(15, pg.debit("poor", "0.5", key="too-much"))
    results = await asyncio.gather(*ops, return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], InsufficientCredits)
    assert (await pg.balance("rich")).available == Decimal("0.7")
    assert (await pg.balance("poor")).available == Decimal("0.05")


async def test_a_failing_item_does_not_take_the_batch_down(pg: Ledger) -> None:
    await fund(pg, ["x", "y"], "1")
    now = pg.now_us()
    good = [DebitItem("x", 10_000, now, f"g{i}", "t", None, None, "{}") for i in range(10)]
    bad = DebitItem("y", -5, now, "bad", "t", None, None, "{}")  # violates an entry CHECK
    results = await asyncio.gather(
        *(pg._batcher.debit(item) for item in [*good[:5], bad, *good[5:]]),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    assert [r["o_status"] for r in results if not isinstance(r, BaseException)] == ["ok"] * 10
    assert (await pg.balance("x")).available == Decimal("0.9")
    assert (await pg.balance("y")).available == Decimal("1")


async def test_one_accounts_debits_keep_their_order(pg: Ledger) -> None:
    await fund(pg, ["seq", "other"], "100")
    for round_ in range(4):  # two batches in flight never hold the same account's debits
        ops = []
        for i in range(150):
            ops.append(pg.debit("seq", "0.01", key=f"s{round_}-{i}", metadata={"n": i}))
            ops.append(pg.debit("other", "0.01", key=f"o{round_}-{i}"))
        await asyncio.gather(*ops)
        entries = [e for e in reversed(await pg.history("seq", limit=200)) if e.kind == "debit"]
        assert [e.metadata["n"] for e in entries[-150:]] == list(range(150))


async def test_two_processes_batching_over_the_same_accounts_never_deadlock(
    pg: Ledger, pg_url: str
) -> None:
    other = Ledger(pg_url)
    accounts = [f"s{i}" for i in range(6)]
    await fund(pg, accounts, "5")
    try:
        ops = []
        for i in range(300):
            led = pg if i % 2 else other
            # the two ledgers submit the accounts in opposite orders
            aid = accounts[i % 6] if i % 2 else accounts[5 - i % 6]
            ops.append(led.debit(aid, "0.01", key=f"k{i}"))
        results = await asyncio.gather(*ops, return_exceptions=True)
    finally:
        await other.close()
    assert [r for r in results if isinstance(r, BaseException)] == []
    total = sum([(await pg.balance(a)).available for a in accounts], Decimal(0))
    assert total == Decimal("30") - Decimal("3")


# --------------------------------------------------------------------------- kept connections


async def test_debits_one_at_a_time_reuse_the_lanes_connection(pg: Ledger) -> None:
    await fund(pg, ["solo"], "1")
    await pg.debit("solo", "0.01")
    kept = dict(pg._x._held)  # type: ignore[attr-defined]
    assert len(kept) == 1  # one lane's connection, out of the pool between debits
    pool = pg._x._pool  # type: ignore[attr-defined]
    assert pool.get_idle_size() == pool.get_size() - 1
    for i in range(20):
        await pg.debit("solo", "0.01", key=f"s{i}")
    assert pg._x._held == kept  # type: ignore[attr-defined]  # the same connection throughout
    assert (await pg.balance("solo")).available == Decimal("0.79")


async def test_a_kept_connection_that_dies_is_replaced(pg: Ledger) -> None:
    import asyncpg

    await fund(pg, ["k"], "1")
    await pg.debit("k", "0.01")
    held = [raw for _, raw in pg._x._held.values()]  # type: ignore[attr-defined]
    assert held
    pids = [raw.get_server_pid() for raw in held]
    killer = await asyncpg.connect(pg.url)
    try:
        for pid in pids:
            await killer.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await killer.close()
    # asyncpg notices the lost connection and takes it back into the pool (its proxy then
    # refuses every call): the lane must see that and take a new one, not fail the debit
    for _ in range(500):
        if not _usable(held[0]):
            break
        await asyncio.sleep(0.01)
    assert not _usable(held[0])
    receipt = await pg.debit("k", "0.01", key="after-kill")
    assert receipt.entry.key == "after-kill"
    assert (await pg.balance("k")).available == Decimal("0.98")


async def test_a_debit_sent_on_a_connection_just_killed_has_an_unknown_outcome(pg: Ledger) -> None:
    """Killed with the statement on its way: the answer is lost, so the outcome is unknown
    (``maybe_applied``, for the caller to settle by its key), and the retry lands once."""
    import asyncpg

    from credit_middleware.errors import BackendUnavailable

    await fund(pg, ["u"], "1")
    await pg.debit("u", "0.01")
    killer = await asyncpg.connect(pg.url)
    try:
        ((_, raw),) = pg._x._held.values()  # type: ignore[attr-defined]
        pid = raw.get_server_pid()
        debit = asyncio.ensure_future(pg.debit("u", "0.01", key="mid-flight"))
        await asyncio.sleep(0)  # its statement is written to the socket
        await killer.execute("SELECT pg_terminate_backend($1)", pid)
        lost: BackendUnavailable | None = None
        try:
            await debit
        except BackendUnavailable as exc:
            lost = exc
    finally:
        await killer.close()
    assert lost is None or lost.maybe_applied
    receipt = None
    for _ in range(3):  # as a client retries: the dead connection may be noticed only now
        try:
            receipt = await pg.debit("u", "0.01", key="mid-flight")
            break
        except BackendUnavailable:
            await asyncio.sleep(0.05)
    assert receipt is not None and receipt.entry.key == "mid-flight"
    spent = Decimal("0.02")  # the first debit and "mid-flight", exactly once
    assert (await pg.balance("u")).available == Decimal("1") - spent


async def test_closing_with_a_debit_in_flight_gives_every_connection_back(pg_url: str) -> None:
    led = Ledger(pg_url)
    await led.migrate()
    await fund(led, ["c"], "1")
    await led.debit("c", "0.01")
    debit = asyncio.ensure_future(led.debit("c", "0.01", key="in-flight"))
    await asyncio.sleep(0)  # on its way over the kept connection
    await asyncio.wait_for(led.close(), 10)  # no hang waiting for a kept connection
    assert (await debit).entry.key == "in-flight"
    assert led._x._held == {}  # type: ignore[attr-defined]
    led.reopen()
    assert (await led.balance("c")).available == Decimal("0.98")
    assert (await led.verify()).ok
    await led.close()


async def test_a_small_pool_keeps_no_connection_out(pg_url: str) -> None:
    async with Ledger(pg_url, pool_size=2) as led:
        await led.migrate()
        await fund(led, ["p"], "5")
        results = await asyncio.gather(
            *(led.debit("p", "0.01", key=f"p{i}") for i in range(30)),
            *(led.get_account("p") for _ in range(10)),
        )
        assert len(results) == 40
        assert led._x._held == {}  # type: ignore[attr-defined]
        assert (await led.balance("p")).available == Decimal("4.7")


async def test_an_apps_own_pool_keeps_no_connection_out(pg_url: str) -> None:
    import asyncpg

    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=4)
    try:
        from credit_middleware.ledger._executor import AsyncpgExecutor

        async with Ledger(executor=AsyncpgExecutor(pool=pool)) as led:
            await led.migrate()
            await fund(led, ["own"], "1")
            for i in range(5):
                await led.debit("own", "0.01", key=f"o{i}")
            assert led._x._held == {}  # type: ignore[attr-defined]
        assert pool.get_idle_size() == pool.get_size()  # every connection back in the pool
    finally:
        await pool.close()
