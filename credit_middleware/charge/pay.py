"""Charging an admitted request: one ledger operation under its charge id, which also claims
its ``Idempotency-Key`` when it has one; an outcome the ledger did not answer is resolved by
:class:`.outcomes.Outcomes`, never guessed."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Literal

from ..ledger import ChargeSpec, Receipt, RequestStart
from ..money import from_micros
from .bill import Bill
from .settlement import Settlement

__all__ = ["pay"]


async def pay(s: Settlement, aid: str, bill: Bill) -> None:
    """Charge the bill under its charge id (claiming its idempotency key with it)."""
    amount = from_micros(bill.micros)
    route = bill.route
    cid = bill.owner
    bill.lease = s.leases[0] if bill.price.mode == "fixed" else s.leases[1]
    key = bill.request_key
    if key is not None:
        assert bill.buffered is not None
        spec = None
        if bill.micros > 0 and bill.price.mode != "handler":
            kind: Literal["debit", "hold"] = "hold" if bill.kind == "hold" else "debit"
            spec = ChargeSpec(
                kind, amount, hold_timeout=s.hold_timeout, layer="request", route=route
            )
        op = s.ledger.begin_request(
            aid,
            key,
            bill.buffered.fingerprint,
            owner=cid,
            charge=spec,
            lease=bill.lease,
            ttl=s.idempotency_ttl,
        )

        def resolve(reverse: bool) -> Awaitable[RequestStart | None]:
            return s.ledger.resolve_request(
                aid, key, owner=cid, reverse=reverse, reason="unknown outcome"
            )

        bill.started(await s.outcomes.charge(aid, cid, op, resolve))
        return
    if bill.kind == "hold":
        charge = s.ledger.hold(
            aid, amount, timeout=s.hold_timeout, key=cid, layer="request", route=route
        )
    else:
        charge = s.ledger.debit(aid, amount, key=cid, layer="request", route=route)

    def resolve_charge(reverse: bool) -> Awaitable[Receipt | None]:
        return s.ledger.resolve_charge(aid, cid, reverse=reverse, reason="unknown outcome")

    bill.receipt = await s.outcomes.charge(aid, cid, charge, resolve_charge)
