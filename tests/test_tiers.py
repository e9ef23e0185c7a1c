"""Tiers: an audited, idempotent ``set_tier``, a purchase that grants and upgrades in one
transaction, and running middleware picking the new tier's limits up within ``TIER_TTL``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from _middleware_helpers import bearer, build_app, client

from credit_middleware import Ledger, Provisioner
from credit_middleware.errors import AccountNotFound, IdempotencyConflict, LedgerError
from credit_middleware.http import middleware as middleware_module

pytestmark = pytest.mark.anyio


@pytest.fixture
def ledger_clock() -> Callable[[], float]:
    return time.time  # the middleware test below reads the wall clock too (tokens, windows)


async def _state(ledger: Ledger, account_id: str = "alice") -> tuple[Any, ...]:
    """Everything a tier change or purchase could have written for the account."""
    account = await ledger.get_account(account_id)
    events = await ledger.tier_history(account_id, limit=1000) if account else []
    entries = await ledger.history(account_id, limit=1000) if account else []
    return (
        account.tier if account else None,
        account.balance_micros if account else None,
        [e.event_id for e in events],
        [e.entry_id for e in entries],
    )


async def test_set_tier_is_audited_and_shown(ledger: Ledger) -> None:
    await ledger.open_account("alice", tier="trial")
    change = await ledger.set_tier("alice", "pro", key="upgrade-1", reason="paid", layer="cli")
    assert (change.old_tier, change.new_tier, change.replayed) == ("trial", "pro", False)
    assert (change.reason, change.layer, change.key) == ("paid", "cli", "upgrade-1")
    assert (await ledger.balance("alice")).tier == "pro"
    assert (await ledger.get_account("alice")).tier == "pro"  # type: ignore[union-attr]
    await ledger.set_tier("alice", "team")  # no key: a fresh one, always applied
    history = await ledger.tier_history("alice")
    assert [(h.old_tier, h.new_tier) for h in history] == [("pro", "team"), ("trial", "pro")]
    assert history[0].key.startswith("tier:")


async def test_a_repeated_key_changes_nothing_even_after_a_later_change(ledger: Ledger) -> None:
    await ledger.open_account("alice", tier="trial")
    first = await ledger.set_tier("alice", "pro", key="k1")
    await ledger.set_tier("alice", "team", key="k2")
    again = await ledger.set_tier("alice", "pro", key="k1")  # a late retry of the first
    assert again.replayed and again.event_id == first.event_id
    assert (await ledger.get_account("alice")).tier == "team"  # type: ignore[union-attr]
    before = await _state(ledger)
    with pytest.raises(IdempotencyConflict):
        await ledger.set_tier("alice", "enterprise", key="k1")
    assert await _state(ledger) == before


@pytest.mark.parametrize(
    ("account_id", "tier", "extra"),
    [
        ("nobody", "pro", {}),
        ("alice", "", {}),
        ("alice", " pro", {}),
        ("alice", "p" * 65, {}),
        ("alice", "pro\x00", {}),
        ("alice", "pro\nx", {}),
        ("alice", 7, {}),
        ("alice", None, {}),
        ("alice", "pro", {"reason": "why\x00"}),
        ("alice", "pro", {"reason": "x" * 501}),
        ("alice", "pro", {"key": ""}),
        ("alice", "pro", {"key": "k\x00"}),
        ("alice", "pro", {"layer": "l\x00"}),
        ("bad\x00id", "pro", {}),
    ],
)
async def test_bad_tier_input_is_refused_and_writes_nothing(
    ledger: Ledger, account_id: str, tier: Any, extra: dict[str, Any]
) -> None:
    await ledger.open_account("alice", tier="trial")
    before = await _state(ledger)
    with pytest.raises((ValueError, AccountNotFound)) as info:
        await ledger.set_tier(account_id, tier, **extra)
    assert str(info.value)
    assert await _state(ledger) == before


async def test_account_events_are_append_only(ledger: Ledger) -> None:
    await ledger.open_account("alice", tier="trial")
    await ledger.set_tier("alice", "pro", key="k")
    for sql in (
        "UPDATE credit_account_events SET new_value = 'free'",
        "DELETE FROM credit_account_events",
    ):
        with pytest.raises(Exception, match="append-only"):
            async with ledger._x.transaction() as conn:
                await conn.execute(sql)
    assert [h.new_tier for h in await ledger.tier_history("alice")] == ["pro"]


async def test_purchase_grants_and_upgrades_in_one_idempotent_step(ledger: Ledger) -> None:
    await ledger.open_account("alice", tier="trial")
    bought = await ledger.purchase("alice", "20", tier="pro", key="order-1", reason="stripe")
    assert not bought.replayed and bought.tier_change is not None
    assert bought.receipt.entry.kind == "grant" and bought.receipt.grant is not None
    assert bought.receipt.grant.source == "purchase"
    assert bought.tier_change.entry_id == bought.receipt.entry.entry_id
    bal = await ledger.balance("alice")
    assert (bal.tier, bal.available) == ("pro", Decimal(20))
    again = await ledger.purchase("alice", "20", tier="pro", key="order-1")
    assert again.replayed and again.tier_change is not None and again.tier_change.replayed
    assert again.receipt.entry.entry_id == bought.receipt.entry.entry_id
    assert (await ledger.balance("alice")).available == Decimal(20)
    plain = await ledger.purchase("alice", "5", key="order-2")  # credits only, tier kept
    assert plain.tier_change is None and (await ledger.balance("alice")).tier == "pro"
    assert (await ledger.purchase("alice", "5", key="order-2")).replayed


@pytest.mark.parametrize(
    "retry",
    [
        {"amount": "21", "tier": "pro"},  # another amount under the same order id
        {"amount": "20", "tier": "team"},  # another tier
        {"amount": "20", "tier": None},  # the tier left out
    ],
)
async def test_a_purchase_key_reused_differently_conflicts_and_moves_nothing(
    ledger: Ledger, retry: dict[str, Any]
) -> None:
    await ledger.open_account("alice", tier="trial")
    await ledger.purchase("alice", "20", tier="pro", key="order-1")
    before = await _state(ledger)
    with pytest.raises((IdempotencyConflict, LedgerError)):
        await ledger.purchase("alice", retry["amount"], tier=retry["tier"], key="order-1")
    assert await _state(ledger) == before


async def test_a_purchase_is_all_or_nothing(ledger: Ledger) -> None:
    """The tier half failing (its key already named a plain tier change) undoes the grant."""
    await ledger.open_account("alice", tier="trial")
    await ledger.set_tier("alice", "free", key="order-9")
    await ledger.grant("alice", "3", source="purchase", key="order-8")
    before = await _state(ledger)
    with pytest.raises(IdempotencyConflict):
        await ledger.purchase("alice", "20", tier="pro", key="order-9")
    with pytest.raises(IdempotencyConflict):  # its key named a plain grant: no tier half
        await ledger.purchase("alice", "3", tier="pro", key="order-8")
    assert await _state(ledger) == before


@pytest.mark.parametrize(
    ("account_id", "amount", "extra"),
    [
        ("nobody", "10", {"tier": "pro"}),
        ("alice", "-1", {"tier": "pro"}),
        ("alice", "NaN", {"tier": "pro"}),
        ("alice", "10", {"tier": ""}),
        ("alice", "10", {"tier": "x" * 65}),
        ("alice", "10", {"tier": "p\x00"}),
        ("alice", "10", {"key": None}),
        ("alice", "10", {"key": "k\x00"}),
        ("alice", "10", {"reason": "r\x00"}),
    ],
)
async def test_bad_purchase_input_moves_nothing(
    ledger: Ledger, account_id: str, amount: str, extra: dict[str, Any]
) -> None:
    await ledger.open_account("alice", tier="trial")
    before = await _state(ledger)
    options: dict[str, Any] = {"key": "order-1", **extra}
    with pytest.raises((ValueError, AccountNotFound)):
        await ledger.purchase(account_id, amount, **options)
    assert await _state(ledger) == before


async def test_concurrent_retries_of_one_purchase_apply_once(ledger: Ledger) -> None:
    await ledger.open_account("alice", tier="trial")
    results = await asyncio.gather(
        *(ledger.purchase("alice", "7", tier="pro", key="order-1") for _ in range(20))
    )
    assert sum(not r.replayed for r in results) == 1
    assert (await ledger.balance("alice")).available == Decimal(7)
    assert len(await ledger.tier_history("alice")) == 1


class _Monotonic:
    """Stands in for the ``time`` module inside middleware.py: a hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self.perf_counter = time.perf_counter

    def monotonic(self) -> float:
        return self.now


async def test_running_middleware_applies_a_new_tier_within_tier_ttl(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _Monotonic()
    monkeypatch.setattr(middleware_module, "time", fake)
    app = build_app(
        provisioner=Provisioner(ledger), tiers={"trial": "2/minute", "pro": "100/minute"}
    )
    async with client(app) as c:
        codes = [(await c.get("/v1/echo", headers=bearer("buyer"))).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        await ledger.purchase("buyer", "10", tier="pro", key="order-1")
        fake.now += middleware_module.TIER_TTL - 1  # still cached: the trial limit holds
        assert (await c.get("/v1/echo", headers=bearer("buyer"))).status_code == 429
        fake.now += 2  # past TIER_TTL since the tier was read: pro's limits apply
        ok = await c.get("/v1/echo", headers=bearer("buyer"))
        assert ok.status_code == 200, ok.text
        assert ok.json()["tier"] == "pro"
        assert ok.headers["ratelimit-policy"].startswith('"100-per-minute"')
