"""Ledger semantics, the same assertions on SQLite and PostgreSQL (the `ledger` fixture
verifies all four invariants after every test)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from conftest import Clock

from credit_middleware import (
    AccountNotFound,
    BackendUnavailable,
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAccountId,
    InvalidAmount,
    Ledger,
    LedgerError,
)

pytestmark = pytest.mark.anyio
D = Decimal


async def funded(ledger: Ledger, account: str = "acct", amount: str = "5", **kw: object) -> None:
    await ledger.open_account(account, tier="trial")
    await ledger.grant(account, amount, **kw)  # type: ignore[arg-type]


async def test_debit_spends_and_records(ledger: Ledger) -> None:
    await funded(ledger)
    receipt = await ledger.debit("acct", "0.001", route="/v1/echo")
    assert receipt.available == D("4.999")
    assert receipt.entry.kind == "debit"
    assert receipt.entry.amount_micros == 1000
    assert receipt.entry.delta_micros == -1000
    assert receipt.entry.route == "/v1/echo"
    bal = await ledger.balance("acct")
    assert (bal.spendable, bal.held, bal.available) == (D("4.999"), D(0), D("4.999"))


async def test_debit_of_unknown_account_raises_not_found(ledger: Ledger) -> None:
    with pytest.raises(AccountNotFound):
        await ledger.debit("nobody", "1")
    assert await ledger.get_account("nobody") is None


async def test_insufficient_credits_move_nothing(ledger: Ledger) -> None:
    await funded(ledger, amount="1")
    with pytest.raises(InsufficientCredits) as info:
        await ledger.debit("acct", "1.000001")
    assert info.value.required == D("1.000001")
    assert info.value.available == 1
    assert info.value.tier == "trial"
    assert len(await ledger.history("acct")) == 1
    assert (await ledger.balance("acct")).available == 1


async def test_idempotent_debit_moves_money_once(ledger: Ledger) -> None:
    await funded(ledger)
    first = await ledger.debit("acct", "1", key="req-1")
    again = await ledger.debit("acct", "1", key="req-1")
    assert not first.replayed
    assert again.replayed
    assert again.entry.entry_id == first.entry.entry_id
    assert (await ledger.balance("acct")).available == 4
    with pytest.raises(IdempotencyConflict):
        await ledger.debit("acct", "2", key="req-1")  # same key, other amount
    with pytest.raises(IdempotencyConflict):
        await ledger.hold("acct", "1", key="req-1")  # same key, other operation
    assert (await ledger.balance("acct")).available == 4


async def test_idempotent_grant_and_one_trial_ever(ledger: Ledger) -> None:
    await ledger.open_account("acct")
    a = await ledger.grant("acct", "3", key="purchase-9", source="purchase")
    b = await ledger.grant("acct", "3", key="purchase-9", source="purchase")
    assert b.replayed
    assert b.entry.entry_id == a.entry.entry_id
    with pytest.raises(IdempotencyConflict):
        await ledger.grant("acct", "4", key="purchase-9", source="purchase")
    await ledger.grant("acct", "5", source="trial", key="trial")
    with pytest.raises(LedgerError):  # the database allows one trial grant per account
        await ledger.grant("acct", "5", source="trial", key="another-trial")
    assert (await ledger.balance("acct")).available == 8


async def test_consumption_order_priority_then_expiry_then_age(ledger: Ledger) -> None:
    await ledger.open_account("acct")
    late = await ledger.grant("acct", "2", key="late", expires_in=timedelta(days=60))
    soon = await ledger.grant("acct", "2", key="soon", expires_in=timedelta(days=1))
    never = await ledger.grant("acct", "2", key="never")
    first = await ledger.grant("acct", "2", key="prio", priority=-1)
    await ledger.debit("acct", "3")  # all of "prio" (priority first), then 1 of "soon"
    left = {g.key: g.remaining for g in (await ledger.balance("acct")).grants}
    assert left == {"soon": 1, "late": 2, "never": 2}  # "prio" is used up
    await ledger.debit("acct", "2")  # rest of "soon", then "late" (expires) before "never"
    left = {g.key: g.remaining for g in (await ledger.balance("acct")).grants}
    assert left == {"late": 1, "never": 2}
    assert first.grant
    assert soon.grant
    assert late.grant
    assert never.grant
    # two grants alike but for age: the older goes first
    await ledger.open_account("b")
    old = await ledger.grant("b", "1", key="old")
    await ledger.grant("b", "1", key="new")
    await ledger.debit("b", "0.5")
    by_key = {g.key: g.remaining for g in (await ledger.balance("b")).grants}
    assert by_key == {"old": D("0.5"), "new": 1}
    assert old.grant is not None


async def test_expired_grant_is_not_spendable_and_is_swept(ledger: Ledger, clock: Clock) -> None:
    await ledger.open_account("acct")
    await ledger.grant("acct", "5", key="trial", source="trial", expires_in=timedelta(days=30))
    await ledger.grant("acct", "1", key="bought", source="purchase")
    await ledger.debit("acct", "2")  # from the trial (it expires, the purchase does not)
    clock.advance(30 * 86400)
    bal = await ledger.balance("acct")
    assert bal.available == 1  # the trial's 3 left are gone
    with pytest.raises(InsufficientCredits):
        await ledger.debit("acct", "1.5")
    await ledger.debit("acct", "1")  # the sweep ran first: an audited expire entry
    kinds = [e.kind for e in await ledger.history("acct")]
    assert kinds[:2] == ["debit", "expire"]
    expire = (await ledger.history("acct"))[1]
    assert expire.amount == 3
    assert expire.delta_micros == -3_000_000
    assert (await ledger.get_account("acct")).balance_micros == 0  # type: ignore[union-attr]


async def test_sweep_all_accounts(ledger: Ledger, clock: Clock) -> None:
    for name in ("a", "b"):
        await ledger.open_account(name)
        await ledger.grant(name, "1", expires_in=timedelta(hours=1))
    clock.advance(3601)
    assert await ledger.sweep() == 2
    assert await ledger.sweep() == 0
    for name in ("a", "b"):
        assert (await ledger.get_account(name)).balance_micros == 0  # type: ignore[union-attr]


async def test_grant_not_yet_effective_is_not_spendable(ledger: Ledger, clock: Clock) -> None:
    from datetime import datetime, timezone

    await ledger.open_account("acct")
    start = datetime.fromtimestamp(clock() + 60, tz=timezone.utc)
    await ledger.grant("acct", "2", effective_at=start)
    with pytest.raises(InsufficientCredits):
        await ledger.debit("acct", "1")
    clock.advance(61)
    assert (await ledger.debit("acct", "1")).available == 1


async def test_hold_capture_less_returns_the_rest(ledger: Ledger) -> None:
    await funded(ledger)
    hold = await ledger.hold("acct", "2", key="call-1")
    assert hold.available == 3
    assert hold.hold is not None
    assert (await ledger.balance("acct")).held == 2
    cap = await ledger.capture(hold.hold.hold_id, "0.5", model="gpt-4o-mini")
    assert cap.entry.kind == "capture"
    assert cap.entry.amount == D("0.5")
    assert cap.available == D("4.5")
    assert cap.entry.model == "gpt-4o-mini"
    again = await ledger.capture(hold.hold.hold_id, "0.5")
    assert again.replayed
    assert again.entry.entry_id == cap.entry.entry_id
    with pytest.raises(HoldNotActive):
        await ledger.capture(hold.hold.hold_id, "0.7")
    with pytest.raises(HoldNotActive):
        await ledger.release(hold.hold.hold_id)


async def test_capture_more_than_held_takes_what_is_available(ledger: Ledger) -> None:
    await funded(ledger, amount="3")
    hold = await ledger.hold("acct", "1")
    assert hold.hold is not None
    cap = await ledger.capture(hold.hold.hold_id, "2.5")
    assert cap.entry.amount == D("2.5")
    assert cap.available == D("0.5")
    h2 = await ledger.hold("acct", "0.5")
    assert h2.hold is not None
    cap2 = await ledger.capture(h2.hold.hold_id, "7")
    assert cap2.entry.amount == D("0.5")
    assert cap2.available == 0
    assert cap2.entry.metadata["shortfall_micros"] == 6_500_000


async def test_release_and_timeout_release(ledger: Ledger, clock: Clock) -> None:
    await funded(ledger)
    hold = await ledger.hold("acct", "4")
    assert hold.hold is not None
    rel = await ledger.release(hold.hold.hold_id)
    assert rel.available == 5
    assert not rel.replayed
    assert (await ledger.release(hold.hold.hold_id)).replayed
    timed = await ledger.hold("acct", "4", timeout=30)
    assert timed.hold is not None
    assert timed.available == 1
    with pytest.raises(InsufficientCredits):
        await ledger.debit("acct", "2")
    clock.advance(31)
    assert (await ledger.balance("acct")).available == 5  # an expired hold holds nothing
    await ledger.debit("acct", "2")  # sweeps: the hold is released with an entry
    with pytest.raises(HoldNotActive):
        await ledger.capture(timed.hold.hold_id, "1")
    releases = [e for e in await ledger.history("acct") if e.kind == "release"]
    assert releases[0].metadata["reason"] == "timeout"
    assert await ledger.holds("acct") == []


async def test_hold_survives_grant_expiry_until_captured(ledger: Ledger, clock: Clock) -> None:
    await ledger.open_account("acct")
    await ledger.grant("acct", "5", expires_in=timedelta(seconds=60))
    hold = await ledger.hold("acct", "2", timeout=600)
    assert hold.hold is not None
    clock.advance(61)  # the grant expires while the hold is active
    await ledger.sweep()
    assert (await ledger.get_account("acct")).balance_micros == 2_000_000  # type: ignore[union-attr]
    # Live credits arrive: the reserve now only needs to cover what they don't (2 - 1 = 1),
    # so the capture's sweep expires 1 of the reserve, and the capture uses the reserve first.
    await ledger.grant("acct", "1", key="fresh")
    cap = await ledger.capture(hold.hold.hold_id, "1.5")
    assert cap.entry.amount == D("1.5")  # the reservation was honoured
    bal = await ledger.balance("acct")
    assert bal.available == D("0.5")
    assert [g.key for g in bal.grants] == ["fresh"]
    assert (await ledger.get_account("acct")).balance_micros == 500_000  # type: ignore[union-attr]
    assert [e.kind for e in await ledger.history("acct", limit=2)] == ["capture", "expire"]


async def test_refund_against_a_charge(ledger: Ledger) -> None:
    await funded(ledger, amount="5", expires_in=timedelta(days=30))
    charge = await ledger.debit("acct", "2")
    refund = await ledger.refund("acct", "1.5", entry_id=charge.entry.entry_id, key="r1")
    assert refund.entry.kind == "refund"
    assert refund.entry.ref_entry_id == charge.entry.entry_id
    assert refund.grant is not None
    assert refund.grant.source == "refund"
    assert refund.grant.expires_at is not None  # keeps the life of what it replaces
    assert (await ledger.refund("acct", "1.5", entry_id=charge.entry.entry_id, key="r1")).replayed
    with pytest.raises(InvalidAmount):  # 1.5 + 1 > 2
        await ledger.refund("acct", "1", entry_id=charge.entry.entry_id, key="r2")
    with pytest.raises(LedgerError):  # a grant is not a charge
        await ledger.refund("acct", "1", entry_id=1, key="r3")
    assert (await ledger.balance("acct")).available == D("4.5")


async def test_adjust_both_ways(ledger: Ledger) -> None:
    await funded(ledger, amount="1")
    up = await ledger.adjust("acct", "2", key="fix-1", reason="support ticket 7")
    down = await ledger.adjust("acct", "-0.5", key="fix-2", reason="double credit")
    assert up.entry.delta_micros == 2_000_000
    assert down.entry.delta_micros == -500_000
    assert (await ledger.adjust("acct", "-0.5", key="fix-2", reason="x")).replayed
    with pytest.raises(InsufficientCredits):
        await ledger.adjust("acct", "-10", key="fix-3", reason="too much")
    assert (await ledger.balance("acct")).available == D("2.5")


async def test_round_up_costs_keep_the_unrounded_figure(ledger: Ledger) -> None:
    await funded(ledger)
    with pytest.raises(InvalidAmount):
        await ledger.debit("acct", "0.0000001")
    r = await ledger.debit("acct", "0.0000001", round_up=True)
    assert r.entry.amount_micros == 1
    assert r.entry.metadata["unrounded"] == "1E-7"


@pytest.mark.parametrize(
    "amount",
    [D("-1"), 0, D("NaN"), D("Infinity"), "0.0000001", D("1e12"), 0.5, "1" * 40],
)
async def test_bad_amounts_write_nothing(ledger: Ledger, amount: object) -> None:
    await funded(ledger)
    before = len(await ledger.history("acct"))
    bad: Any = amount
    with pytest.raises(InvalidAmount):
        await ledger.debit("acct", bad)
    with pytest.raises(InvalidAmount):
        await ledger.grant("acct", bad)
    with pytest.raises(InvalidAmount):
        await ledger.hold("acct", bad)
    with pytest.raises(InvalidAmount):
        await ledger.refund("acct", bad)
    assert len(await ledger.history("acct")) == before


@pytest.mark.parametrize("account", ["", "x" * 256, "nul\x00byte", "new\nline", 42])
async def test_bad_account_ids_write_nothing(ledger: Ledger, account: object) -> None:
    with pytest.raises(InvalidAccountId):
        await ledger.open_account(account)  # type: ignore[arg-type]
    with pytest.raises(InvalidAccountId):
        await ledger.debit(account, "1")  # type: ignore[arg-type]
    assert (await ledger.verify()).accounts == 0


async def test_bad_keys_metadata_and_holds_are_refused(ledger: Ledger) -> None:
    await funded(ledger)
    with pytest.raises(ValueError, match="idempotency key"):
        await ledger.debit("acct", "1", key="k" * 300)
    with pytest.raises(ValueError, match="metadata"):
        await ledger.debit("acct", "1", metadata={"blob": "x" * 10_000})
    with pytest.raises(ValueError, match="timeout"):
        await ledger.hold("acct", "1", timeout=-5)
    with pytest.raises(HoldNotFound):
        await ledger.capture(99999, "1")
    with pytest.raises(ValueError, match="hold_id"):
        await ledger.release(-1)
    assert len(await ledger.history("acct")) == 1


async def test_history_pages_newest_first(ledger: Ledger) -> None:
    await funded(ledger)
    for _ in range(7):
        await ledger.debit("acct", "0.1")
    page1 = await ledger.history("acct", limit=3)
    page2 = await ledger.history("acct", limit=3, before=page1[-1].entry_id)
    page3 = await ledger.history("acct", limit=3, before=page2[-1].entry_id)
    ids = [e.entry_id for e in page1 + page2 + page3]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 8
    assert page3[-1].kind == "grant"


async def test_entries_are_append_only(ledger: Ledger) -> None:
    await funded(ledger)
    for sql in ("UPDATE credit_entries SET amount = 1", "DELETE FROM credit_entries"):
        with pytest.raises(Exception, match="append-only"):
            async with ledger._x.transaction() as conn:
                await conn.execute(sql)
    assert len(await ledger.history("acct")) == 1


async def test_verify_reports_tampering(ledger: Ledger) -> None:
    await funded(ledger)
    async with ledger._x.transaction() as conn:
        await conn.execute("UPDATE credit_accounts SET balance = balance + 7")
    report = await ledger.verify()
    assert not report.ok
    assert {d.invariant for d in report.discrepancies} == {1}
    assert any("entries sum to" in d.detail for d in report.discrepancies)
    async with ledger._x.transaction() as conn:  # repair so the fixture's check passes
        await conn.execute("UPDATE credit_accounts SET balance = balance - 7")


async def test_migrate_is_idempotent(ledger: Ledger) -> None:
    assert await ledger.migrate() == []
    assert await ledger.schema_version() >= 1


async def test_expiry_boundary_is_exact_and_the_same_for_balance_and_debit(
    ledger: Ledger, clock: Clock
) -> None:
    from datetime import datetime, timezone

    from credit_middleware.ledger.models import dt_to_us

    clock.now = 1_800_000_000.123457  # a time whose float form is not exact in µs
    ends = datetime.fromtimestamp(clock() + 10, tz=timezone.utc)
    assert dt_to_us(ends) == dt_to_us(ends.replace(microsecond=ends.microsecond))
    await ledger.open_account("edge")
    await ledger.grant("edge", "1", expires_at=ends)
    clock.now = dt_to_us(ends) / 1_000_000 - 0.000001  # one µs before: spendable
    assert (await ledger.balance("edge")).available == 1
    clock.now = dt_to_us(ends) / 1_000_000  # at the expiry instant: gone, for both
    assert (await ledger.balance("edge")).available == 0
    with pytest.raises(InsufficientCredits):
        await ledger.debit("edge", "0.5")


@pytest.mark.parametrize("fast_path", [True, False], ids=["server-side", "generic"])
async def test_provision_skips_an_account_whose_trial_key_is_taken(
    ledger_url: str, fast_path: bool
) -> None:
    async with Ledger(ledger_url, fast_path=fast_path) as led:
        await led.migrate()
        await led.open_account("keyed")
        await led.grant("keyed", "2", source="promo", key="trial")
        account, created, receipt = await led.provision("keyed", tier="trial", trial_amount="5")
        assert not created
        assert receipt is None
        assert account.balance_micros == 2_000_000
        assert (await led.verify()).ok


async def test_a_closed_ledger_stays_closed(ledger_url: str) -> None:
    """Work that arrives after close() (a task that outlived its request, say) is refused as
    unavailable; it must not open a new pool or SQLite connection that nobody would close
    (an unclosed aiosqlite worker thread keeps the process from exiting)."""
    import threading

    led = Ledger(ledger_url)
    await led.migrate()
    await funded(led)
    await led.close()
    threads = {t.ident for t in threading.enumerate()}
    with pytest.raises(BackendUnavailable, match="closed"):
        await led.debit("acct", "0.001")
    with pytest.raises(BackendUnavailable, match="closed"):
        await led.balance("acct")
    assert {t.ident for t in threading.enumerate()} <= threads
    await led.close()  # closing twice is harmless
    led.reopen()  # an explicit reopen (a second lifespan) makes it usable again
    try:
        assert (await led.debit("acct", "0.001")).available == D("4.999")
        assert (await led.verify()).ok
    finally:
        await led.close()


async def test_a_callers_asyncpg_pool_is_neither_closed_nor_bypassed(pg_url: str) -> None:
    import asyncpg

    from credit_middleware.ledger._executor import AsyncpgExecutor

    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=2)
    try:
        led = Ledger(executor=AsyncpgExecutor(pool=pool))
        await led.migrate()
        await funded(led)
        await led.close()
        with pytest.raises(BackendUnavailable, match="closed"):
            await led.balance("acct")
        assert await pool.fetchval("SELECT 1") == 1  # still the caller's, still open
        led.reopen()
        assert (await led.debit("acct", "1")).available == 4
        assert (await led.verify()).ok
    finally:
        await pool.close()
