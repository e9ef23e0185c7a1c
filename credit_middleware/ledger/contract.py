"""The ledger's side of the charge contract: idempotent requests and charges resolved by id.

- :meth:`begin_request` claims a client's ``Idempotency-Key`` for one request fingerprint and,
  in the same transaction, takes the charge that pays for it (a debit or a hold keyed by the
  attempt's charge id): the key and the money commit together or not at all.
- :meth:`finish_request` stores the response for exact retries (or frees the key when the
  request was not billed), in the same transaction as the refund, release or capture.
- :meth:`resolve_charge` answers "did charge id X apply?" when a caller lost track of an
  operation (a timeout, a lost connection). Under the account's lock it either finds the
  charge's entry (and, asked to, reverses it with an audited refund or release) or fences the
  id, so that an operation still on its way can never apply it afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..errors import AccountNotFound
from ..money import check_account_id, check_key
from . import _ops, _requests
from ._executor import Conn
from ._requests import StoredResponse
from ._tx import ENTRY_COLS, HOLD_COLS, Tag, lock
from .models import Entry, Hold, Receipt

T = TypeVar("T")

__all__ = ["ChargeSpec", "RequestStart", "RequestStore", "StoredResponse"]

_MAX_FINGERPRINT = 128


@dataclass(frozen=True, slots=True)
class ChargeSpec:
    """What a request pays up front: a ``debit`` or a ``hold`` (with its timeout, seconds)."""

    kind: Literal["debit", "hold"]
    amount: Decimal | int | str
    hold_timeout: float = 300.0
    layer: str | None = None
    route: str | None = None
    model: str | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RequestStart:
    """``state``: ``new`` (serve it; ``receipt`` is its charge, if any), ``resumed`` (an attempt
    that never finished left its charge standing: serve it under that charge, no new one),
    ``replay`` (served already: answer ``response``, nothing charged)."""

    state: Literal["new", "resumed", "replay"]
    receipt: Receipt | None = None
    response: StoredResponse | None = None
    charge_key: str | None = None


class RequestStore:
    """Mixed into :class:`~credit_middleware.ledger.Ledger`."""

    if TYPE_CHECKING:

        async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, write: bool = True) -> T: ...

        def now_us(self) -> int: ...

        @staticmethod
        def _charge(
            amount: object,
            round_up: bool,
            metadata: Mapping[str, Any] | None,
            allow_zero: bool = False,
        ) -> tuple[int, Mapping[str, Any] | None]: ...

        @staticmethod
        def _tag(
            key: str | None,
            layer: str | None,
            route: str | None,
            model: str | None,
            metadata: Mapping[str, Any] | None,
        ) -> Tag: ...

        @staticmethod
        def _receipt(out: _ops.Outcome) -> Receipt: ...

    async def begin_request(
        self,
        account_id: str,
        key: str,
        fingerprint: str,
        *,
        owner: str,
        charge: ChargeSpec | None = None,
        lease: float = 300.0,
        ttl: float = 86400.0,
    ) -> RequestStart:
        """Claim ``key`` for this request and take its charge, atomically.

        Raises ``IdempotencyMismatch`` (another request used the key), ``IdempotencyInFlight``
        (its first attempt is still being served), ``InsufficientCredits`` or
        ``AccountNotFound``; then nothing is written.
        """
        account_id = check_account_id(account_id)
        key, owner = check_key(key), check_key(owner)
        if not isinstance(fingerprint, str) or not 0 < len(fingerprint) <= _MAX_FINGERPRINT:
            raise ValueError(f"fingerprint must be 1-{_MAX_FINGERPRINT} characters")
        lease_us, ttl_us = _seconds(lease, "lease"), _seconds(ttl, "ttl")
        micros = meta = None
        if charge is not None:
            micros, meta = self._charge(charge.amount, True, charge.metadata)
            hold_us = _seconds(charge.hold_timeout, "hold_timeout")
        now = self.now_us()

        async def begin(conn: Conn) -> RequestStart:
            if charge is not None:  # the account first: the lock order of every operation
                await lock(conn, account_id, now)
            found = await _requests.claim(
                conn, now, account_id, key, fingerprint, owner, now + lease_us, now + ttl_us
            )
            if found.state == "replay":
                return RequestStart("replay", response=found.response, charge_key=found.charge_key)
            if charge is None or micros is None:
                return RequestStart(found.state, charge_key=found.charge_key)  # type: ignore[arg-type]
            if found.state == "resumed" and found.charge_key is not None:
                standing = await _standing(conn, now, account_id, found.charge_key)
                if standing is not None:
                    return RequestStart("resumed", standing, charge_key=found.charge_key)
            # new, or resumed with nothing standing (a hold that timed out): charge this attempt
            tag = self._tag(owner, charge.layer, charge.route, charge.model, meta)
            if charge.kind == "hold":
                out = await _ops.hold(conn, now, account_id, micros, now + hold_us, tag)
            else:
                out = await _ops.debit(conn, now, account_id, micros, tag)
            await _requests.set_charge(conn, account_id, key, owner)
            return RequestStart(found.state, self._receipt(out), charge_key=owner)  # type: ignore[arg-type]

        return await self._run(begin)

    async def finish_request(
        self,
        account_id: str,
        key: str,
        *,
        owner: str,
        response: StoredResponse | None,
        refund: Receipt | None = None,
        release: int | None = None,
        capture: tuple[int, Decimal | int | str] | None = None,
        ttl: float = 86400.0,
        layer: str | None = "request",
    ) -> Receipt | None:
        """End the request ``owner`` served: store ``response`` for retries (``None`` frees the
        key: the request was not billed), with at most one money move in the same transaction
        (``refund`` a debit's receipt, ``release`` or ``capture`` a hold).

        An attempt that lost its lease to a retry moves nothing (the retry owns the charge now);
        returns the money move's receipt, or None.
        """
        account_id = check_account_id(account_id)
        key, owner = check_key(key), check_key(owner)
        ttl_us = _seconds(ttl, "ttl")
        capture_micros = meta = None
        if capture is not None:
            capture_micros, meta = self._charge(capture[1], True, None, allow_zero=True)
        now = self.now_us()

        async def finish(conn: Conn) -> Receipt | None:
            out: _ops.Outcome | None = None
            moves = refund is not None or release is not None or capture is not None
            if moves:
                await lock(conn, account_id, now)
            if await _requests.owned(conn, account_id, key, owner) is None:
                return None
            if refund is not None:
                out = await _refund(conn, now, account_id, refund.entry, "not billed", layer)
            elif release is not None:
                tag = Tag(metadata={"reason": "not billed"})
                out = await _ops.release(conn, now, release, tag)
            elif capture is not None and capture_micros is not None:
                tag = self._tag(None, layer, None, None, meta)
                out = await _ops.capture(conn, now, capture[0], capture_micros, tag)
            if response is None:
                await _requests.free(conn, account_id, key)
            else:
                await _requests.store(conn, account_id, key, response, now + ttl_us)
            return None if out is None else self._receipt(out)

        return await self._run(finish)

    async def resolve_charge(
        self, account_id: str, charge_key: str, *, reverse: bool = False, reason: str = "unknown"
    ) -> Receipt | None:
        """Whether charge id ``charge_key`` applied: its receipt if it stands, else None, and
        the id is fenced for good. With ``reverse=True`` a standing charge is reversed (an
        audited refund or release, freeing the request it paid for) and that receipt returned.
        """
        account_id = check_account_id(account_id)
        charge_key = check_key(charge_key)
        now = self.now_us()

        async def resolve(conn: Conn) -> Receipt | None:
            try:
                ctx = await lock(conn, account_id, now)
            except AccountNotFound:
                await _requests.fence(conn, now, account_id, charge_key, reason[:255])
                return None
            row = await _requests.charge_entry(conn, account_id, charge_key)
            if row is None:
                await _requests.fence(conn, now, account_id, charge_key, reason[:255])
                return None
            entry = Entry.from_row(row)
            if not reverse:
                available = await _ops._available(ctx)
                return Receipt(entry=entry, replayed=True, available_micros=available)
            out = await _reverse(conn, now, account_id, entry, reason)
            await _requests.free_charged(conn, account_id, charge_key)
            if out is None:
                available = await _ops._available(ctx)
                return Receipt(entry=entry, replayed=True, available_micros=available)
            return self._receipt(out)

        return await self._run(resolve)

    async def purge_requests(self, limit: int = 1000) -> int:
        """Forget up to ``limit`` expired idempotent requests; returns how many."""
        now = self.now_us()
        return await self._run(lambda conn: _requests.purge(conn, now, limit))


def _seconds(value: object, name: str) -> int:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 7 * 86400:
        raise ValueError(f"{name} must be between 0 and 7 days (seconds)")
    return int(value * 1_000_000)


async def _standing(conn: Any, now: int, account_id: str, charge_key: str) -> Receipt | None:
    """The receipt of a charge that still pays: a debit, or a hold still active (or captured)."""
    row = await _requests.charge_entry(conn, account_id, charge_key)
    if row is None:
        return None
    entry = Entry.from_row(row)
    hold = None
    if entry.kind == "hold":
        h = await conn.fetchrow(
            f"SELECT {HOLD_COLS} FROM credit_holds WHERE hold_id = $1", entry.hold_id
        )
        if (
            h is None
            or h["status"] in ("released", "expired")
            or (h["status"] == "active" and int(h["expires_at"]) <= now)
        ):
            return None
        hold = Hold.from_row(h)
    ctx = await lock(conn, account_id, now)
    return Receipt(entry, True, await _ops._available(ctx), hold=hold)


async def _refund(
    conn: Any, now: int, account_id: str, entry: Entry, reason: str, layer: str | None
) -> _ops.Outcome | None:
    """Refund what is left of a charge entry (a debit or a capture); None if nothing is."""
    done = await conn.fetchval(
        "SELECT COALESCE(SUM(amount), 0) FROM credit_entries"
        " WHERE ref_entry_id = $1 AND kind = 'refund'",
        entry.entry_id,
    )
    left = entry.amount_micros - int(done)
    if left <= 0:
        return None
    tag = Tag(f"refund:{entry.entry_id}", layer, None, None, {"reason": reason})
    return await _ops.refund(conn, now, account_id, left, entry.entry_id, None, tag)


async def _reverse(
    conn: Any, now: int, account_id: str, entry: Entry, reason: str
) -> _ops.Outcome | None:
    """Undo a charge: refund a debit, release an active hold, refund a captured one."""
    reason = f"reversed: {reason}"[:255]
    if entry.kind != "hold":
        return await _refund(conn, now, account_id, entry, reason, "request")
    assert entry.hold_id is not None
    h = await conn.fetchrow("SELECT status FROM credit_holds WHERE hold_id = $1", entry.hold_id)
    if h is not None and h["status"] == "active":
        return await _ops.release(conn, now, entry.hold_id, Tag(metadata={"reason": reason}))
    captured = await conn.fetchrow(
        "SELECT entry_id FROM credit_entries WHERE hold_id = $1 AND kind = 'capture'",
        entry.hold_id,
    )
    if captured is None:
        return None
    row = await conn.fetchrow(
        f"SELECT {ENTRY_COLS} FROM credit_entries WHERE entry_id = $1", captured["entry_id"]
    )
    assert row is not None
    return await _refund(conn, now, account_id, Entry.from_row(row), reason, "request")
