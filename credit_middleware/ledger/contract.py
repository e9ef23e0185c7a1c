"""The ledger's side of the charge contract: idempotent requests and charges resolved by id.

Every metered request is charged under a charge id of its own (its attempt's ``owner``):

- :meth:`begin_request` takes the request's charge (a debit or a hold keyed by the charge id)
  and, for a request with a client's ``Idempotency-Key``, claims the key for one request
  fingerprint in the same transaction: the key and the money commit together or not at all.
  A key an attempt left unfinished (a crashed process) is taken over after its lease, with
  the charge it paid: the key's charge is never lost, nor taken twice.
- :meth:`finish_request` moves the request's final money (a refund, release or capture) and,
  for a keyed request, stores its response for exact retries or frees the key, in one
  transaction.
- :meth:`extend_request` keeps a request that is still being served alive: its lease (no
  retry takes it over) and its hold (it never times out under a live handler).
- :meth:`resolve_request` and :meth:`resolve_charge` answer "did it apply?" when a caller lost
  track of a charge (a timeout, a lost connection). Under the account's lock they find what
  applied (and, asked to, reverse it) or fence the charge id, so that an operation still on
  its way can never apply it afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..errors import AccountNotFound, ChargeVoided
from ..money import check_account_id, check_key
from . import _ops, _requests
from ._batch import Batcher, Op
from ._executor import Conn, Row
from ._fastrequests import _Slow, begun, finished
from ._requests import StoredResponse, headers_text
from ._tx import ENTRY_COLS, HOLD_COLS, Ctx, Tag, dumps, lock
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
    ``replay`` (served already: answer ``response``, nothing charged). ``charge_key`` is the
    charge id that keys the request's charge in the ledger (for ``resumed``, the first
    attempt's)."""

    state: Literal["new", "resumed", "replay"]
    receipt: Receipt | None = None
    response: StoredResponse | None = None
    charge_key: str | None = None


class RequestStore:
    """Mixed into :class:`~credit_middleware.ledger.Ledger`."""

    if TYPE_CHECKING:
        _batcher: Batcher
        _fast_path: bool

        @property
        def dialect(self) -> str: ...

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

        @staticmethod
        def _hold_id(hold_id: object) -> int: ...

    async def begin_request(
        self,
        account_id: str,
        key: str | None,
        fingerprint: str | None,
        *,
        owner: str,
        charge: ChargeSpec | None = None,
        lease: float = 300.0,
        ttl: float = 86400.0,
    ) -> RequestStart:
        """Take the request's charge under charge id ``owner`` and, with ``key`` (the client's
        ``Idempotency-Key``, for the request ``fingerprint``), claim the key, atomically.

        Raises ``IdempotencyMismatch`` (another request used the key), ``IdempotencyInFlight``
        (its first attempt is still being served), ``InsufficientCredits``,
        ``AccountNotFound`` or ``ChargeVoided`` (``owner`` was fenced); then nothing is
        written.
        """
        account_id = check_account_id(account_id)
        owner = check_key(owner)
        if key is not None:
            key = check_key(key)
            if not isinstance(fingerprint, str) or not 0 < len(fingerprint) <= _MAX_FINGERPRINT:
                raise ValueError(f"fingerprint must be 1-{_MAX_FINGERPRINT} characters")
        lease_us, ttl_us = _seconds(lease, "lease"), _seconds(ttl, "ttl")
        micros = meta = None
        hold_us = 0
        if charge is not None:
            micros, meta = self._charge(charge.amount, True, charge.metadata)
            hold_us = _seconds(charge.hold_timeout, "hold_timeout")
        now = self.now_us()
        if key is not None and self._fast_path and self.dialect == "postgresql":
            # one round trip to credit_begin(), in the group commit with every other charge
            kind = None if charge is None else charge.kind
            tag = (
                Tag()
                if charge is None
                else self._tag(owner, charge.layer, charge.route, charge.model, meta)
            )
            op = Op("begin", account_id, key, fingerprint, owner, kind, micros, now,
                    now + hold_us if kind == "hold" else None, now + lease_us, now + ttl_us,
                    tag.layer, tag.route, tag.model, dumps(tag.metadata))  # fmt: skip
            fast = begun(await self._batcher.run(op), account_id, key, owner, micros)
            if fast is not None:
                state, receipt, response, charge_key = fast
                return RequestStart(state, receipt, response, charge_key)

        async def begin(conn: Conn) -> RequestStart:
            # the account first (the lock order of every operation): every claim of the
            # account's keys waits for the others, so that none is claimed under a charge
            try:
                await lock(conn, account_id, now)
            except AccountNotFound:
                if charge is not None:
                    raise
            if await _requests.voided(conn, account_id, owner):
                raise ChargeVoided(account_id, owner)
            state: Literal["new", "resumed"] = "new"
            if key is not None:
                assert fingerprint is not None
                found = await _requests.claim(
                    conn, now, account_id, key, fingerprint, owner, now + lease_us, now + ttl_us
                )
                if found.state == "replay":
                    return RequestStart(
                        "replay", response=found.response, charge_key=found.charge_key
                    )
                if found.state == "resumed":
                    state = "resumed"
                    if found.charge_key is not None:
                        standing = await _standing(conn, now, account_id, found.charge_key)
                        if standing is not None:
                            return RequestStart("resumed", standing, charge_key=found.charge_key)
            if charge is None or micros is None:
                return RequestStart(state, charge_key=owner)
            # new, or resumed with nothing standing (a hold that timed out): charge this attempt
            tag = self._tag(owner, charge.layer, charge.route, charge.model, meta)
            if charge.kind == "hold":
                out = await _ops.hold(conn, now, account_id, micros, now + hold_us, tag)
            else:
                out = await _ops.debit(conn, now, account_id, micros, tag)
            if key is not None:
                await _requests.set_charge(conn, account_id, key, owner)
            return RequestStart(state, self._receipt(out), charge_key=owner)

        return await self._run(begin)

    async def finish_request(
        self,
        account_id: str,
        key: str | None,
        *,
        owner: str,
        response: StoredResponse | None = None,
        keep: bool = False,
        refund: Receipt | None = None,
        release: int | None = None,
        capture: tuple[int, Decimal | int | str] | None = None,
        ttl: float = 86400.0,
        layer: str | None = "request",
    ) -> Receipt | None:
        """Move the final money of the request ``owner`` serves, at most one move: ``refund``
        a charge's receipt, ``release`` or ``capture`` a hold (a hold that timed out under
        the call is captured late, as a debit of at most its amount). With ``key``, in the
        same transaction: store ``response`` for retries, or (``None``) free the key, the
        request not being billed, or (``keep=True``) leave the request open for its response.

        An attempt that lost its key to a retry moves nothing (the retry owns the charge now);
        returns the money move's receipt, or None.
        """
        account_id = check_account_id(account_id)
        owner = check_key(owner)
        key = None if key is None else check_key(key)
        ttl_us = _seconds(ttl, "ttl")
        capture_micros = meta = None
        if capture is not None:
            capture_micros, meta = self._charge(capture[1], True, None, allow_zero=True)
        now = self.now_us()
        if (
            refund is None
            and release is None
            and (key is not None or capture is not None)
            and self._fast_path
            and self.dialect == "postgresql"
        ):
            # one round trip to credit_finish(), in the group commit (a refund or a release,
            # the rare unserved call, takes the generic path)
            hold_id = None if capture is None else self._hold_id(capture[0])
            body = None if response is None else response.body
            op = Op("finish", account_id, key, None, owner, None, capture_micros, now, hold_id,
                    None if response is None else response.size, now + ttl_us, layer, None,
                    None, dumps(meta), None if response is None else response.status,
                    None if response is None else headers_text(response), body,
                    keep)  # fmt: skip
            done = finished(await self._batcher.run(op), hold_id)
            if not isinstance(done, _Slow):
                return done

        async def finish(conn: Conn) -> Receipt | None:
            out: _ops.Outcome | None = None
            if refund is not None or release is not None or capture is not None:
                await lock(conn, account_id, now)
            if key is not None and await _requests.owned(conn, account_id, key, owner) is None:
                return None
            if refund is not None:
                out = await _refund(conn, now, account_id, refund.entry, "not billed", layer)
            elif release is not None:
                tag = Tag(metadata={"reason": "not billed"})
                out = await _ops.release(conn, now, release, tag)
            elif capture is not None and capture_micros is not None:
                tag = self._tag(None, layer, None, None, meta)
                out = await _ops.capture(conn, now, capture[0], capture_micros, tag, late=True)
            if key is not None:
                if response is not None:
                    await _requests.store(conn, account_id, key, response)
                elif not keep:
                    await _requests.free(conn, account_id, key)
            return None if out is None else self._receipt(out)

        return await self._run(finish)

    async def extend_request(
        self,
        account_id: str,
        key: str | None,
        *,
        owner: str,
        lease: float = 300.0,
        hold_id: int | None = None,
        hold_timeout: float = 300.0,
    ) -> bool:
        """Keep a request still being served alive, in one transaction: with ``key``, its
        lease (``lease`` seconds from now: no retry takes it over meanwhile); with
        ``hold_id``, its hold (``hold_timeout`` seconds from now: it does not time out under
        the running call). Returns False when there is nothing left to keep alive (a retry
        took the key over, or the hold was closed)."""
        account_id = check_account_id(account_id)
        owner = check_key(owner)
        key = None if key is None else check_key(key)
        lease_us = _seconds(lease, "lease")
        hold_us = _seconds(hold_timeout, "hold_timeout")
        hid = None if hold_id is None else self._hold_id(hold_id)
        now = self.now_us()

        async def extend(conn: Conn) -> bool:
            try:
                await lock(conn, account_id, now)
            except AccountNotFound:
                if hid is not None:
                    return False
                # a handler-billed route's claim: its account may not be opened yet
            if key is not None and not await _requests.renew(
                conn, account_id, key, owner, now + lease_us
            ):
                return False
            if hid is not None:
                h = await conn.fetchrow(
                    "SELECT account_id, status FROM credit_holds WHERE hold_id = $1", hid
                )
                if h is None or h["account_id"] != account_id or h["status"] != "active":
                    return False
                await _ops.extend_hold(conn, now, hid, now + hold_us)
            return True

        return await self._run(extend)

    async def resolve_request(
        self,
        account_id: str,
        key: str,
        *,
        owner: str,
        reverse: bool = False,
        reason: str = "unknown",
    ) -> RequestStart | None:
        """Whether :meth:`begin_request` by ``owner`` for ``key`` applied: what it started
        (``new`` with its charge, or ``resumed`` with the charge it took over), or None. With
        None, or with ``reverse=True``, nothing of it stands afterwards: ``owner`` is fenced
        (a late begin is refused), a charge of its own is reversed (an audited refund or
        release) and the key freed, and a charge it took over stays with the key, its lease
        ended, for the next retry."""
        account_id = check_account_id(account_id)
        key, owner = check_key(key), check_key(owner)
        now = self.now_us()

        async def resolve(conn: Conn) -> RequestStart | None:
            try:
                ctx = await lock(conn, account_id, now)
            except AccountNotFound:
                await _requests.fence(conn, now, account_id, owner, reason[:255])
                return None
            row = await _requests.owned(conn, account_id, key, owner)
            if row is None:  # never applied, or applied and taken over by a retry since
                if await _requests.charge_entry(conn, account_id, owner) is None:
                    await _requests.fence(conn, now, account_id, owner, reason[:255])
                return None
            charge_key = row["charge_key"]
            if reverse:
                if charge_key == owner:
                    entry = await _requests.charge_entry(conn, account_id, owner)
                    if entry is not None:
                        await _reverse(conn, now, account_id, Entry.from_row(entry), reason)
                if charge_key is None or charge_key == owner:
                    await _requests.free(conn, account_id, key)
                await _requests.fence(conn, now, account_id, owner, reason[:255])
                return None
            if charge_key is None:
                return RequestStart("new", charge_key=owner)
            receipt = await _charged(conn, ctx, charge_key)
            state: Literal["new", "resumed"] = "new" if charge_key == owner else "resumed"
            return RequestStart(state, receipt, charge_key=charge_key)

        return await self._run(resolve)

    async def resolve_charge(
        self, account_id: str, charge_key: str, *, reverse: bool = False, reason: str = "unknown"
    ) -> Receipt | None:
        """Whether charge id ``charge_key`` applied: its receipt if it stands (``replayed``:
        this call did not apply it), else None, and the id is fenced for good. With
        ``reverse=True`` a standing charge is reversed (an audited refund or release, freeing
        the request it paid for) and that receipt returned; not, though, a charge a retry took
        over with its request: that is the retry's to settle.
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
            if not reverse or await _requests.taken_over(conn, account_id, charge_key):
                return await _charged(conn, ctx, charge_key)
            out = await _reverse(conn, now, account_id, Entry.from_row(row), reason)
            await _requests.free_charged(conn, account_id, charge_key)
            if out is None:
                return await _charged(conn, ctx, charge_key)
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


async def _hold_of(conn: Conn, entry: Entry) -> Row | None:
    if entry.hold_id is None:
        return None
    return await conn.fetchrow(
        f"SELECT {HOLD_COLS} FROM credit_holds WHERE hold_id = $1", entry.hold_id
    )


async def _billed(conn: Conn, entry: Entry, h: Row | None) -> Entry | None:
    """What a charge bills: a debit itself, a captured hold's capture (or late debit); None
    for a hold not captured. A charge refunded in full bills nothing."""
    billed: Entry | None = entry
    if entry.kind == "hold":
        closing = None
        if h is not None and h["status"] == "captured":
            closing = await _ops.closing_charge(conn, int(h["hold_id"]))
        billed = None if closing is None else Entry.from_row(closing)
    if billed is None:
        return None
    done = await conn.fetchval(
        "SELECT COALESCE(SUM(amount), 0) FROM credit_entries"
        " WHERE ref_entry_id = $1 AND kind = 'refund'",
        billed.entry_id,
    )
    return billed if int(done) < billed.amount_micros else None


async def _charged(conn: Conn, ctx: Ctx, charge_key: str) -> Receipt | None:
    """The receipt of the charge keyed ``charge_key`` (``replayed``: found, not applied now),
    with its hold; for a captured hold, the entry that billed it."""
    row = await _requests.charge_entry(conn, ctx.account_id, charge_key)
    if row is None:
        return None
    entry = Entry.from_row(row)
    h = await _hold_of(conn, entry)
    if h is not None and h["status"] == "captured":
        entry = await _billed(conn, entry, h) or entry
    hold = None if h is None else Hold.from_row(h)
    return Receipt(entry, True, await _ops._available(ctx), hold=hold)


async def _standing(conn: Conn, now: int, account_id: str, charge_key: str) -> Receipt | None:
    """The receipt of a charge that still pays: a debit not refunded, a hold still active (not
    timed out), or a captured one (its capture's entry)."""
    row = await _requests.charge_entry(conn, account_id, charge_key)
    if row is None:
        return None
    entry = Entry.from_row(row)
    h = await _hold_of(conn, entry)
    if h is not None and h["status"] == "active":
        if int(h["expires_at"]) <= now:
            return None
    elif await _billed(conn, entry, h) is None:
        return None
    ctx = await lock(conn, account_id, now)
    return await _charged(conn, ctx, charge_key)


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
    captured = await _ops.closing_charge(conn, entry.hold_id)
    if captured is None:
        return None
    row = await conn.fetchrow(
        f"SELECT {ENTRY_COLS} FROM credit_entries WHERE entry_id = $1", captured["entry_id"]
    )
    assert row is not None
    return await _refund(conn, now, account_id, Entry.from_row(row), reason, "request")
