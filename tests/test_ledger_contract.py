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
