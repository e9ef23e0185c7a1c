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
- :meth:`resolve_request` and :meth:`resolve_charge` (``_resolve``) answer "did it apply?"
  when a caller lost track of a charge (a timeout, a lost connection).
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
from ._executor import Conn
from ._fastrequests import Slow, begun, finished
from ._requests import StoredResponse, headers_text
from ._standing import refund as refund_left
from ._standing import standing
from ._tx import Tag, dumps, lock
from .models import Receipt

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
                        stands = await standing(conn, now, account_id, found.charge_key)
                        if stands is not None:
                            return RequestStart("resumed", stands, charge_key=found.charge_key)
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
            if not isinstance(done, Slow):
                return done

        async def finish(conn: Conn) -> Receipt | None:
            out: _ops.Outcome | None = None
            if refund is not None or release is not None or capture is not None:
                await lock(conn, account_id, now)
            if key is not None and await _requests.owned(conn, account_id, key, owner) is None:
                return None
            if refund is not None:
                out = await refund_left(conn, now, account_id, refund.entry, "not billed", layer)
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

    async def purge_requests(self, limit: int = 1000) -> int:
        """Forget up to ``limit`` expired idempotent requests; returns how many."""
        now = self.now_us()
        return await self._run(lambda conn: _requests.purge(conn, now, limit))


def _seconds(value: object, name: str) -> int:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 7 * 86400:
        raise ValueError(f"{name} must be between 0 and 7 days (seconds)")
    return int(value * 1_000_000)
