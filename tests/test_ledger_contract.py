"""The ledger's side of the charge contract, on both backends: idempotent requests stored with
their charge, and charges resolved (or fenced) by id."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from conftest import Clock

from credit_middleware import Ledger
from credit_middleware.errors import (
    ChargeVoided,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InsufficientCredits,
)
from credit_middleware.ledger import ChargeSpec, StoredResponse

pytestmark = pytest.mark.anyio

DEBIT = ChargeSpec("debit", "0.5", route="/v1/x")
OK = StoredResponse(200, (("content-type", "application/json"),), b'{"n":1}', 7)


async def funded(ledger: Ledger, aid: str = "acct", amount: str = "2") -> str:
    await ledger.open_account(aid)
    await ledger.grant(aid, amount, key="fund")
    return aid


async def available(ledger: Ledger, aid: str) -> Decimal:
    return (await ledger.balance(aid)).available


async def test_exact_retry_replays_the_stored_response_without_a_new_charge(
    ledger: Ledger,
) -> None:
    aid = await funded(ledger)
    start = await ledger.begin_request(aid, "k1", "fp-a", owner="c1", charge=DEBIT)
    assert start.state == "new" and start.receipt is not None
    assert start.receipt.entry.key == "c1" and start.receipt.entry.amount == Decimal("0.5")
    with pytest.raises(IdempotencyInFlight):
        await ledger.begin_request(aid, "k1", "fp-a", owner="c2", charge=DEBIT)
    with pytest.raises(IdempotencyMismatch):
        await ledger.begin_request(aid, "k1", "fp-b", owner="c3", charge=DEBIT)
    await ledger.finish_request(aid, "k1", owner="c1", response=OK)
    for owner in ("c4", "c5"):
        again = await ledger.begin_request(aid, "k1", "fp-a", owner=owner, charge=DEBIT)
        assert again.state == "replay" and again.response == OK and again.receipt is None
        assert again.charge_key == "c1"
    with pytest.raises(IdempotencyMismatch):
        await ledger.begin_request(aid, "k1", "fp-b", owner="c6", charge=DEBIT)
    assert await available(ledger, aid) == Decimal("1.5")


async def test_an_unbilled_first_attempt_frees_the_key_and_its_retry_bills_normally(
    ledger: Ledger,
) -> None:
    aid = await funded(ledger)
    first = await ledger.begin_request(aid, "k", "fp", owner="a1", charge=DEBIT)
    assert first.receipt is not None
    refund = await ledger.finish_request(aid, "k", owner="a1", response=None, refund=first.receipt)
    assert refund is not None and refund.entry.kind == "refund"
    assert await available(ledger, aid) == Decimal("2")
    retry = await ledger.begin_request(aid, "k", "fp", owner="a2", charge=DEBIT)
    assert retry.state == "new" and retry.receipt is not None and not retry.receipt.replayed
    await ledger.finish_request(aid, "k", owner="a2", response=OK)
    assert await available(ledger, aid) == Decimal("1.5")


async def test_insufficient_credits_claim_nothing(ledger: Ledger) -> None:
    aid = await funded(ledger, amount="0.2")
    with pytest.raises(InsufficientCredits):
        await ledger.begin_request(aid, "k", "fp", owner="a1", charge=DEBIT)
    await ledger.grant(aid, "1", key="more")
    start = await ledger.begin_request(aid, "k", "fp", owner="a2", charge=DEBIT)
    assert start.state == "new"
    await ledger.finish_request(aid, "k", owner="a2", response=OK)


async def test_an_attempt_that_never_finished_is_resumed_under_its_charge(
    ledger: Ledger, clock: Clock
) -> None:
    aid = await funded(ledger)
    await ledger.begin_request(aid, "k", "fp", owner="dead", charge=DEBIT, lease=30)
    clock.advance(31)
    resumed = await ledger.begin_request(aid, "k", "fp", owner="alive", charge=DEBIT, lease=30)
    assert resumed.state == "resumed" and resumed.charge_key == "dead"
    assert resumed.receipt is not None and resumed.receipt.entry.key == "dead"
    # the dead attempt, should it ever answer, moves nothing: the charge is the retry's now
    assert (
        await ledger.finish_request(aid, "k", owner="dead", response=None, refund=resumed.receipt)
        is None
    )
    await ledger.finish_request(aid, "k", owner="alive", response=OK)
    assert await available(ledger, aid) == Decimal("1.5")


async def test_a_key_is_new_again_after_its_time(ledger: Ledger, clock: Clock) -> None:
    aid = await funded(ledger)
    await ledger.begin_request(aid, "k", "fp", owner="a1", charge=DEBIT, ttl=60)
    await ledger.finish_request(aid, "k", owner="a1", response=OK, ttl=60)
    clock.advance(61)
    fresh = await ledger.begin_request(aid, "k", "other", owner="a2", charge=DEBIT)
    assert fresh.state == "new"
    await ledger.finish_request(aid, "k", owner="a2", response=OK)
    assert await available(ledger, aid) == Decimal("1")
    assert await ledger.purge_requests() == 0


async def test_purge_forgets_expired_requests(ledger: Ledger, clock: Clock) -> None:
    aid = await funded(ledger)
    for i in range(3):
        await ledger.begin_request(aid, f"k{i}", "fp", owner=f"o{i}", ttl=10)
    clock.advance(11)
    assert await ledger.purge_requests() == 3


async def test_hold_requests_capture_and_store_together(ledger: Ledger) -> None:
    aid = await funded(ledger)
    spec = ChargeSpec("hold", "1", hold_timeout=60)
    start = await ledger.begin_request(aid, "k", "fp", owner="h1", charge=spec)
    assert start.receipt is not None and start.receipt.hold is not None
    captured = await ledger.finish_request(
        aid, "k", owner="h1", response=OK, capture=(start.receipt.hold.hold_id, "0.25")
    )
    assert captured is not None and captured.entry.kind == "capture"
    assert await available(ledger, aid) == Decimal("1.75")
    again = await ledger.begin_request(aid, "k", "fp", owner="h2", charge=spec)
    assert again.state == "replay"
    assert await available(ledger, aid) == Decimal("1.75")


async def test_an_uncharged_id_is_fenced_for_good(ledger: Ledger) -> None:
    aid = await funded(ledger)
    assert await ledger.resolve_charge(aid, "lost-1") is None
    with pytest.raises(ChargeVoided):
        await ledger.debit(aid, "0.5", key="lost-1")
    with pytest.raises(ChargeVoided):
        await ledger.hold(aid, "0.5", key="lost-1")
    assert await available(ledger, aid) == Decimal("2")
    # an account that does not exist yet: fenced too
    assert await ledger.resolve_charge("nobody", "lost-2") is None


async def test_a_standing_charge_is_found_or_reversed(ledger: Ledger) -> None:
    aid = await funded(ledger)
    await ledger.debit(aid, "0.5", key="c-ok")
    found = await ledger.resolve_charge(aid, "c-ok")
    assert found is not None and found.entry.kind == "debit" and found.replayed
    reversed_ = await ledger.resolve_charge(aid, "c-ok", reverse=True, reason="timeout")
    assert reversed_ is not None and reversed_.entry.kind == "refund"
    assert await available(ledger, aid) == Decimal("2")
    # reversing twice moves nothing more
    again = await ledger.resolve_charge(aid, "c-ok", reverse=True)
    assert again is not None and again.entry.kind == "debit"
    assert await available(ledger, aid) == Decimal("2")


async def test_reversing_a_keyed_request_charge_frees_its_key(ledger: Ledger) -> None:
    aid = await funded(ledger)
    hold = ChargeSpec("hold", "1", hold_timeout=60)
    await ledger.begin_request(aid, "k", "fp", owner="x1", charge=hold)
    out = await ledger.resolve_charge(aid, "x1", reverse=True)
    assert out is not None and out.entry.kind == "release"
    retry = await ledger.begin_request(aid, "k", "fp", owner="x2", charge=hold)
    assert retry.state == "new"
    assert retry.receipt is not None and retry.receipt.hold is not None
    hold_id = retry.receipt.hold.hold_id
    await ledger.finish_request(aid, "k", owner="x2", response=None, release=hold_id)
    assert await available(ledger, aid) == Decimal("2")


@pytest.mark.parametrize(
    ("field", "value"),
    [("key", ""), ("key", "x" * 300), ("fingerprint", ""), ("fingerprint", "f" * 200)],
)
async def test_bad_input_is_refused_and_moves_nothing(
    ledger: Ledger, field: str, value: str
) -> None:
    aid = await funded(ledger)
    args = {"key": "k", "fingerprint": "fp", field: value}
    with pytest.raises(ValueError, match=r"key|fingerprint"):
        await ledger.begin_request(aid, args["key"], args["fingerprint"], owner="o", charge=DEBIT)
    with pytest.raises(ValueError, match="lease"):
        await ledger.begin_request(aid, "k", "fp", owner="o", charge=DEBIT, lease=0)
    assert await available(ledger, aid) == Decimal("2")


async def test_an_internal_client_error_counts_as_unavailable() -> None:
    """asyncpg raises InternalClientError from a pool torn down under an operation (seen at
    shutdown): it must become BackendUnavailable (a 503), never escape as a 500."""
    import asyncpg

    from credit_middleware.errors import BackendUnavailable
    from credit_middleware.ledger._executor import AsyncpgExecutor

    class TornDown:
        def acquire(self, timeout: float | None = None) -> Any:
            raise asyncpg.InternalClientError("pool torn down")

    executor = AsyncpgExecutor(pool=TornDown())
    with pytest.raises(BackendUnavailable, match="pool torn down"):
        async with executor.read():
            pass


@pytest.mark.parametrize("first", ["1", "-1"])
async def test_an_adjustment_key_reused_the_other_way_is_a_conflict(
    ledger: Ledger, first: str
) -> None:
    from credit_middleware.errors import IdempotencyConflict

    aid = await funded(ledger)
    await ledger.adjust(aid, first, key="adj", reason="correction")
    before = await available(ledger, aid)
    other = "-1" if first == "1" else "1"
    with pytest.raises(IdempotencyConflict, match="already used for"):
        await ledger.adjust(aid, other, key="adj", reason="correction")
    again = await ledger.adjust(aid, first, key="adj", reason="correction")
    assert again.replayed
    assert await available(ledger, aid) == before


async def test_fencing_an_attempt_frees_the_key_it_claimed_without_a_charge(
    ledger: Ledger,
) -> None:
    """A handler-billed route claims its key with no charge; if that claim's outcome was
    unknown and the attempt got a 503, its retry must run, not wait out the lease (409)."""
    aid = await funded(ledger)
    await ledger.begin_request(aid, "k", "fp", owner="lost", lease=300)
    assert await ledger.resolve_charge(aid, "lost") is None
    retry = await ledger.begin_request(aid, "k", "fp", owner="next", lease=300)
    assert retry.state == "new"
    await ledger.begin_request("newcomer", "k", "fp", owner="lost2", lease=300)
    assert await ledger.resolve_charge("newcomer", "lost2") is None  # no account yet
    assert (await ledger.begin_request("newcomer", "k", "fp", owner="n2")).state == "new"


# --------------------------------------------------------------------------- issue 18


async def test_a_takeover_keeps_the_first_charge_when_its_own_outcome_is_lost(
    ledger: Ledger, clock: Clock
) -> None:
    """The retry that took a crashed attempt's charge over, its answer lost: resolving it
    finds what it took over; fencing it (never applied) hands the charge back to the key."""
    aid = await funded(ledger)
    await ledger.begin_request(aid, "k", "fp", owner="dead", charge=DEBIT, lease=30)
    clock.advance(31)
    taken = await ledger.begin_request(aid, "k", "fp", owner="b", charge=DEBIT, lease=30)
    assert taken.state == "resumed" and taken.charge_key == "dead"
    found = await ledger.resolve_request(aid, "k", owner="b")
    assert found is not None and found.state == "resumed" and found.charge_key == "dead"
    assert found.receipt is not None and found.receipt.entry.key == "dead"
    # the retry is told 503 after all (say the resolution came too late): nothing stands of
    # it, and the key's charge serves the next retry at once, never charged again
    assert await ledger.resolve_request(aid, "k", owner="b", reverse=True) is None
    with pytest.raises(ChargeVoided):
        await ledger.begin_request(aid, "k", "fp", owner="b", charge=DEBIT)
    again = await ledger.begin_request(aid, "k", "fp", owner="c", charge=DEBIT, lease=30)
    assert again.state == "resumed" and again.charge_key == "dead"
    await ledger.finish_request(aid, "k", owner="c", response=OK)
    assert await available(ledger, aid) == Decimal("1.5")


async def test_a_begin_that_never_applied_is_fenced_by_its_resolution(ledger: Ledger) -> None:
    aid = await funded(ledger)
    assert await ledger.resolve_request(aid, "k", owner="late") is None
    with pytest.raises(ChargeVoided):  # the begin that was on its way arrives: refused
        await ledger.begin_request(aid, "k", "fp", owner="late", charge=DEBIT)
    fresh = await ledger.begin_request(aid, "k", "fp", owner="next", charge=DEBIT)
    assert fresh.state == "new"
    await ledger.finish_request(aid, "k", owner="next", response=OK)
    assert await available(ledger, aid) == Decimal("1.5")


async def test_a_reversal_leaves_a_charge_a_retry_took_over(ledger: Ledger, clock: Clock) -> None:
    aid = await funded(ledger)
    await ledger.begin_request(aid, "k", "fp", owner="a", charge=DEBIT, lease=30)
    clock.advance(31)
    await ledger.begin_request(aid, "k", "fp", owner="b", charge=DEBIT, lease=30)
    # a's reversal, pending since it answered 503, lands now: the charge is b's to settle
    assert await ledger.resolve_request(aid, "k", owner="a", reverse=True) is None
    found = await ledger.resolve_charge(aid, "a", reverse=True)
    assert found is not None and found.entry.kind == "debit"
    await ledger.finish_request(aid, "k", owner="b", response=OK)
    assert await available(ledger, aid) == Decimal("1.5")


async def test_an_unfinished_attempt_outlives_the_ttl_with_its_charge(
    ledger: Ledger, clock: Clock
) -> None:
    """A key forgotten after ``ttl`` is new again, but not the charge of an attempt that
    never finished: its retry takes that over instead of paying twice."""
    aid = await funded(ledger)
    await ledger.begin_request(aid, "k", "fp", owner="a", charge=DEBIT, lease=30, ttl=60)
    clock.advance(61)
    retry = await ledger.begin_request(aid, "k", "fp", owner="b", charge=DEBIT, lease=30, ttl=60)
    assert retry.state == "resumed" and retry.charge_key == "a"
    assert await available(ledger, aid) == Decimal("1.5")


async def test_a_live_request_is_kept_alive(ledger: Ledger, clock: Clock) -> None:
    aid = await funded(ledger)
    spec = ChargeSpec("hold", "1", hold_timeout=60)
    start = await ledger.begin_request(aid, "k", "fp", owner="a", charge=spec, lease=30)
    assert start.receipt is not None and start.receipt.hold is not None
    hold_id = start.receipt.hold.hold_id
    for _ in range(6):  # 120 s: four leases, two holds
        clock.advance(20)
        kept = await ledger.extend_request(
            aid, "k", owner="a", lease=30, hold_id=hold_id, hold_timeout=60
        )
        assert kept
    with pytest.raises(IdempotencyInFlight):
        await ledger.begin_request(aid, "k", "fp", owner="b", charge=spec, lease=30)
    done = await ledger.finish_request(aid, "k", owner="a", response=OK, capture=(hold_id, "0.5"))
    assert done is not None and done.entry.kind == "capture"
    assert await available(ledger, aid) == Decimal("1.5")
    # nothing left to keep alive: the request is done, the hold captured
    assert not await ledger.extend_request(aid, "k", owner="a", lease=30)
    assert not await ledger.extend_request(aid, None, owner="a", hold_id=hold_id)


async def test_a_taken_over_request_is_no_longer_kept_alive(ledger: Ledger, clock: Clock) -> None:
    aid = await funded(ledger)
    await ledger.begin_request(aid, "k", "fp", owner="a", charge=DEBIT, lease=30)
    clock.advance(31)
    await ledger.begin_request(aid, "k", "fp", owner="b", charge=DEBIT, lease=30)
    assert not await ledger.extend_request(aid, "k", owner="a", lease=30)
    assert await ledger.extend_request(aid, "k", owner="b", lease=30)


async def test_extend_hold_keeps_a_hold_reserved(ledger: Ledger, clock: Clock) -> None:
    from credit_middleware.errors import HoldNotActive

    aid = await funded(ledger)
    hold = (await ledger.hold(aid, "1", timeout=60)).hold
    assert hold is not None
    clock.advance(50)
    extended = await ledger.extend_hold(hold.hold_id, timeout=60)
    assert extended.status == "active"
    clock.advance(50)  # 100 s after it was placed, 50 after its extension
    assert await available(ledger, aid) == Decimal("1")
    captured = await ledger.capture(hold.hold_id, "0.5")
    assert captured.entry.amount == Decimal("0.5")
    with pytest.raises(HoldNotActive):
        await ledger.extend_hold(hold.hold_id, timeout=60)
    with pytest.raises(ValueError, match="timeout"):
        await ledger.extend_hold(hold.hold_id, timeout=0)


async def test_a_hold_that_timed_out_is_billed_late_only_when_asked(
    ledger: Ledger, clock: Clock
) -> None:
    from credit_middleware.errors import HoldNotActive

    aid = await funded(ledger)
    hold = (await ledger.hold(aid, "1", timeout=60)).hold
    assert hold is not None
    clock.advance(61)
    with pytest.raises(HoldNotActive, match="expired"):
        await ledger.capture(hold.hold_id, "0.5")
    late = await ledger.capture(hold.hold_id, "1.5", late=True)
    assert late.entry.kind == "debit" and late.entry.hold_id == hold.hold_id
    assert late.entry.amount == Decimal("1")  # at most the hold
    assert late.entry.metadata["late"] is True
    assert late.entry.metadata["shortfall_micros"] == 500_000
    again = await ledger.capture(hold.hold_id, "1.5", late=True)
    assert again.replayed and again.entry.entry_id == late.entry.entry_id
    with pytest.raises(HoldNotActive, match="captured"):
        await ledger.capture(hold.hold_id, "0.2", late=True)
    assert await available(ledger, aid) == Decimal("1")
    # a released hold is not billed, late or not
    other = (await ledger.hold(aid, "0.5", timeout=60)).hold
    assert other is not None
    await ledger.release(other.hold_id)
    with pytest.raises(HoldNotActive, match="released"):
        await ledger.capture(other.hold_id, "0.5", late=True)


async def test_a_resolved_hold_comes_with_its_hold(ledger: Ledger) -> None:
    aid = await funded(ledger)
    await ledger.hold(aid, "1", key="c-h", timeout=60)
    found = await ledger.resolve_charge(aid, "c-h")
    assert found is not None and found.hold is not None and found.hold.status == "active"
