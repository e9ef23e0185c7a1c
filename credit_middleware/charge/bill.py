"""One admitted request's bill: what it was charged, and settling it once the app answered.

Only what was served is billed: when the app's status is not billable (by default anything
but 2xx: its 404, 405, 422, redirects and 5xx) a debit is refunded or a hold released as the
response starts. A hold is captured at the price the handler put in
``request.state.credit_final_cost``, as the response starts (a streamed route that sets it
later: after the body), so that the headers say what was billed. A request with an
``Idempotency-Key`` stores its response for exact retries before the client sees the
response's end (an immediate re-send gets the replay, never a 409), or frees the key when it
was not billed. Money and key move in one ledger operation (:meth:`Ledger.finish_request`);
one that cannot be written now is retried in the background, keyed by the charge, until it
lands. While the app runs, the request's lease and hold are kept alive (:mod:`.keepalive`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import CreditError
from ..identity.resolvers import Identity
from ..ledger import Receipt, RequestStart
from ..money import cost_to_micros, from_micros
from ..pricing.priced import Price
from .replay import BufferedRequest, Recorder, send_replay
from .settlement import Settlement

__all__ = ["CHARGE_ID_HEADER", "FINAL_COST_STATE", "Bill"]

log = logging.getLogger("credit_middleware.middleware")

FINAL_COST_STATE = "credit_final_cost"
CHARGE_ID_HEADER = "Credit-Charge-Id"
_CHARGE_ID = CHARGE_ID_HEADER.lower().encode("latin-1")
_COST = b"credit-cost"


class Bill:
    """One admitted request's charge: who, at what price, what the ledger answered, and what
    is still to settle once the app answered."""

    def __init__(self, identity: Identity, price: Price, owner: str, path: str = "") -> None:
        self.identity = identity
        self.price = price
        #: this attempt's charge id (it owns the request's key while it serves it)
        self.owner = owner
        #: the charge id that keys the request's charge in the ledger: the owner's, or, for a
        #: request resumed after a crashed attempt, that attempt's
        self.charge_id = owner
        # what the ledger entry names: the priced route's pattern, or the path itself when no
        # route matched (control characters dropped, at most 255 characters)
        named = price.route if price.route != "default" or not path else path
        self.route = "".join(c for c in named if c.isprintable())[:255]
        self.tier = ""
        self.micros = 0
        self.receipt: Receipt | None = None
        self.headers: list[tuple[str, str]] = []
        self.post_seconds = 0.0
        self.request_key: str | None = None  # the client's Idempotency-Key
        self.buffered: BufferedRequest | None = None
        self.start: RequestStart | None = None
        self.lease = 30.0
        self._moved = False  # the final money move (refund, release, capture) was made
        self._stored = False  # a keyed request's response was stored, or its key freed

    @property
    def kind(self) -> str:
        return "hold" if self.price.mode == "hold" else "debit"

    def started(self, start: RequestStart) -> None:
        """Take what :meth:`Ledger.begin_request` started: the charge this request is served
        under (a resumed one's is the crashed attempt's, at its price)."""
        self.start = start
        self.receipt = start.receipt
        self.charge_id = start.charge_key or self.owner
        if start.state == "resumed" and start.receipt is not None:
            self.micros = start.receipt.entry.amount_micros

    def expose(self, scope: Scope) -> MutableMapping[str, Any]:
        """The request's ``state``, with what the app may read of its caller and charge."""
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state["credit_identity"] = self.identity
        state["credit_account_id"] = self.identity.account_id
        state["credit_tier"] = self.tier
        state["credit_charge_id"] = self.charge_id
        state["credit_cost"] = from_micros(self.micros) if self.receipt else None
        state["credit_balance"] = self.receipt.available if self.receipt else None
        return state

    async def run(
        self, mw: Settlement, app: ASGIApp, scope: Scope, receive: Receive, send: Send
    ) -> None:
        start = self.start
        if start is not None and start.state == "replay":
            assert start.response is not None
            extra = [*self.headers, (CHARGE_ID_HEADER, start.charge_key or "")]
            await send_replay(start.response, scope, receive, send, extra)
            return
        if self.buffered is not None:
            receive = self.buffered.receive(receive)
        state = self.expose(scope)
        recorder = Recorder(mw.max_stored_body) if self.request_key is not None else None
        status = 500
        ticket = self._keep_alive(mw)

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if recorder is not None:
                    recorder.start(message)
                if not mw.billable(status):
                    await self._timed(self._unbill(mw, state, status))
                elif self.kind == "hold" and state.get(FINAL_COST_STATE) is not None:
                    await self._timed(self._capture(mw, state))
                message["headers"] = self._response_headers(mw, state, message)
            elif message["type"] == "http.response.body" and recorder is not None:
                recorder.chunk(message)
                if not message.get("more_body", False):
                    # stored before the client sees the end: its re-send is a replay
                    await self._timed(self._finish(mw, state, status, recorder))
            await send(message)

        try:
            await app(scope, receive, wrapped)
        finally:
            try:
                if self._unfinished(mw, status):
                    await self._timed(self._finish(mw, state, status, recorder))
            finally:
                if ticket is not None:
                    mw.keepalive.untrack(ticket)

    def _unfinished(self, mw: Settlement, status: int) -> bool:
        """Whether anything is left to settle (nothing, for a served fixed-price call)."""
        if self.request_key is not None and not self._stored:
            return True
        return not self._moved and (self.kind == "hold" or not mw.billable(status))

    def _keep_alive(self, mw: Settlement) -> int | None:
        """Keep the key's lease and the hold alive while the app serves the request."""
        hold = self.receipt.hold if self.receipt is not None else None
        hold_id = hold.hold_id if hold is not None and hold.status == "active" else None
        if self.request_key is None and hold_id is None:
            return None
        return mw.keepalive.track(
            self.identity.account_id,
            self.owner,
            key=self.request_key,
            lease=self.lease,
            hold_id=hold_id,
            hold_timeout=mw.hold_timeout,
        )

    async def _timed(self, work: Awaitable[None]) -> None:
        started = time.perf_counter()
        try:
            await work
        finally:
            self.post_seconds += time.perf_counter() - started

    def _response_headers(
        self, mw: Settlement, state: MutableMapping[str, Any], message: Message
    ) -> list[tuple[bytes, bytes]]:
        """The app's headers, less any of ours it set, then ours: the rate-limit fields, the
        charge id, and after a charge the balance and the cost."""
        ours = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in self.headers]  # fmt: skip
        ours.append((_CHARGE_ID, self.charge_id.encode("latin-1")))
        if self.receipt is not None:
            ours.append((mw.balance_name, str(state["credit_balance"]).encode("latin-1")))
            cost = state.get("credit_cost")
            if cost is not None:
                ours.append((_COST, str(cost).encode("latin-1")))
        app = message.get("headers") or ()
        names = {name for name, _ in ours}
        return [h for h in app if h[0].lower() not in names] + ours

    # ------------------------------------------------------------------ settling

    async def _finish(
        self,
        mw: Settlement,
        state: MutableMapping[str, Any],
        status: int,
        recorder: Recorder | None,
    ) -> None:
        """What is still to do once the app is done: give back what was not served, capture
        a hold the handler priced late, store a keyed request's response."""
        if not mw.billable(status):
            await self._unbill(mw, state, status)
            return
        if self.kind == "hold":
            await self._capture(mw, state)
        if self.request_key is None or self._stored:
            return
        self._stored = True
        stored = recorder.stored() if recorder is not None and recorder.status else None
        # without a response we could keep (the app answered nothing), the key is freed
        await self._settle(mw, "store", lambda: self._finish_op(mw, response=stored))

    async def _unbill(self, mw: Settlement, state: MutableMapping[str, Any], status: int) -> None:
        """Not served: give back what the request was charged (a resumed request's charge too:
        the call it paid for was never served) and free its key."""
        if self._moved:
            return
        self._moved = self._stored = True
        receipt = self.receipt
        money: dict[str, Any] = {}
        if receipt is not None:
            state["credit_cost"] = from_micros(0)
            hold = receipt.hold
            if hold is not None and hold.status == "active":
                money = {"release": hold.hold_id}
            elif hold is None or receipt.entry.kind != "hold":
                money = {"refund": receipt}
        if not money and self.request_key is None:
            return
        what = next(iter(money), "free")  # release, refund, or just free the key
        done = await self._settle(mw, what, lambda: self._finish_op(mw, **money))
        if done is not None and done[0] is not None:
            self._apply(state, done[0])

    async def _capture(self, mw: Settlement, state: MutableMapping[str, Any]) -> None:
        """Bill the hold at the handler's final price (a hold that timed out under the call is
        captured late: billed either way)."""
        if self._moved:
            return
        self._moved = True
        receipt = self.receipt
        if receipt is None or receipt.hold is None or receipt.hold.status != "active":
            return  # nothing held (fail-open), or a resumed request's hold already captured
        final = state.get(FINAL_COST_STATE)
        amount: Any = from_micros(self.micros) if final is None else final
        try:
            micros = cost_to_micros(amount)[0]
        except ValueError:
            log.error("route %s reported an unusable final cost %r", self.price.route, final)
            micros = self.micros
        capture = (receipt.hold.hold_id, from_micros(micros))
        done = await self._settle(
            mw, "capture", lambda: self._finish_op(mw, capture=capture, keep=True)
        )
        if done is None:  # deferred: billed when it lands
            state["credit_cost"] = from_micros(micros)
        elif done[0] is not None:
            self._apply(state, done[0])
        else:  # refused, or a retry took the request over: not billed here, not told it paid
            state["credit_cost"] = from_micros(0)

    async def _finish_op(self, mw: Settlement, **kwargs: Any) -> Receipt | None:
        return await mw.ledger.finish_request(
            self.identity.account_id,
            self.request_key,
            owner=self.owner,
            ttl=mw.idempotency_ttl,
            **kwargs,
        )

    async def _settle(
        self, mw: Settlement, op: str, run: Callable[[], Awaitable[Receipt | None]]
    ) -> tuple[Receipt | None] | None:
        """``(the move's receipt or None,)``; None when it was deferred (it lands later)."""
        try:
            done = await mw.outcomes.settle(self.charge_id, op, run)
        except (CreditError, ValueError) as exc:
            # refused for good (a hold released meanwhile, nothing left to bill late)
            # the exception's text can name the account: only its class above DEBUG
            log.warning("could not %s after the app answered: %s", op, type(exc).__name__)
            log.debug("could not %s: %s", op, exc)
            mw.observer.ledger_op(op, "error")
            return (None,)
        mw.observer.ledger_op(op, "ok" if done is not None else "deferred")
        return done

    def _apply(self, state: MutableMapping[str, Any], new: Receipt) -> None:
        self.receipt = new
        state["credit_balance"] = new.available
        if new.entry.kind == "capture" or (new.entry.kind == "debit" and new.entry.hold_id):
            state["credit_cost"] = new.entry.amount
