"""One admitted request's bill: what it was charged, and settling it once the app answered.

Only what was served is billed: when the app's status is not billable (by default anything
but 2xx: its 404, 405, 422, redirects and 5xx) a debit is refunded or a hold released as the
response starts. A hold is captured at the price the handler put in
``request.state.credit_final_cost`` (a streamed route settles after the body). A request with an
``Idempotency-Key`` stores its response for exact retries in the same transaction as its final
money move, or frees the key when it was not billed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.types import Message, Receive, Scope, Send

from ._idempotency import BufferedRequest, Recorder, send_replay
from .errors import CreditError
from .identity import Identity
from .ledger import Receipt, RequestStart
from .money import cost_to_micros, from_micros
from .pricing import Price

if TYPE_CHECKING:
    from .middleware import CreditMiddleware

log = logging.getLogger("credit_middleware.middleware")

FINAL_COST_STATE = "credit_final_cost"
CHARGE_ID_HEADER = "Credit-Charge-Id"
_CHARGE_ID = CHARGE_ID_HEADER.lower().encode("latin-1")
_COST = b"credit-cost"


class _Bill:
    def __init__(self, identity: Identity, price: Price, charge_id: str, path: str = "") -> None:
        self.identity = identity
        self.price = price
        self.charge_id = charge_id
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
        self._settled = False

    @property
    def kind(self) -> str:
        return "hold" if self.price.mode == "hold" else "debit"

    @property
    def owner(self) -> str:
        """The charge id of the attempt that serves the request (and owns its key)."""
        return self.charge_id

    async def run(self, mw: CreditMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        start = self.start
        if start is not None and start.state == "replay":
            assert start.response is not None
            extra = [*self.headers, (CHARGE_ID_HEADER, start.charge_key or "")]
            await send_replay(start.response, scope, receive, send, extra)
            return
        if self.buffered is not None:
            receive = self.buffered.receive(receive)
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state["credit_identity"] = self.identity
        state["credit_account_id"] = self.identity.account_id
        state["credit_tier"] = self.tier
        state["credit_charge_id"] = self.charge_id
        state["credit_cost"] = from_micros(self.micros) if self.receipt else None
        state["credit_balance"] = self.receipt.available if self.receipt else None
        recorder = Recorder(mw._max_stored_body) if self.request_key is not None else None
        status = 500

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if recorder is not None:
                    recorder.start(message)
                billable = mw._billable(status)
                final = state.get(FINAL_COST_STATE)
                if not billable or (self.kind == "hold" and final is not None and recorder is None):
                    await self._settle(mw, state, status)
                elif self.kind == "hold" and final is not None and self.receipt is not None:
                    self._announce_capture(state, final)
                message["headers"] = self._response_headers(mw, state, message)
            elif recorder is not None and message["type"] == "http.response.body":
                recorder.chunk(message)
            await send(message)

        try:
            await mw.app(scope, receive, wrapped)
        finally:
            if not self._settled:
                await self._settle(mw, state, status, recorder)

    def _response_headers(
        self, mw: CreditMiddleware, state: MutableMapping[str, Any], message: Message
    ) -> list[tuple[bytes, bytes]]:
        """The app's headers, less any of ours it set, then ours: the rate-limit fields, the
        charge id, and after a charge the balance and the cost."""
        ours = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in self.headers]  # fmt: skip
        ours.append((_CHARGE_ID, self.charge_id.encode("latin-1")))
        if self.receipt is not None:
            ours.append((mw._balance_name, str(state["credit_balance"]).encode("latin-1")))
            cost = state.get("credit_cost")
            if cost is not None:
                ours.append((_COST, str(cost).encode("latin-1")))
        app = message.get("headers") or ()
        names = {name for name, _ in ours}
        return [h for h in app if h[0].lower() not in names] + ours

    async def _settle(
        self,
        mw: CreditMiddleware,
        state: MutableMapping[str, Any],
        status: int,
        recorder: Recorder | None = None,
    ) -> None:
        """The request's final money move (and, for a keyed request, its stored response)."""
        if self._settled:
            return
        self._settled = True
        started = time.perf_counter()
        try:
            await self._settle_now(mw, state, status, recorder)
        finally:
            self.post_seconds = time.perf_counter() - started

    async def _settle_now(
        self,
        mw: CreditMiddleware,
        state: MutableMapping[str, Any],
        status: int,
        recorder: Recorder | None,
    ) -> None:
        receipt = self.receipt
        billable = mw._billable(status)
        aid = self.identity.account_id
        if self.request_key is not None:
            if not billable:
                op, kwargs = self._unbill_args(receipt)
                if receipt is not None:
                    state["credit_cost"] = from_micros(0)
                new = await self._money(mw, op, lambda: self._finish(mw, None, **kwargs))
            else:  # after the body: the response is complete
                kwargs = self._capture_args(state, receipt)
                new = await self._money(mw, "store", lambda: self._finish(mw, recorder, **kwargs))
            if new is not None:
                self._apply(state, new)
            return
        if receipt is None:
            return
        if self.kind == "hold":
            assert receipt.hold is not None
            hold_id = receipt.hold.hold_id
            if not billable:
                new = await self._money(
                    mw, "release", lambda: mw.ledger.release(hold_id, reason="not_billed")
                )
                state["credit_cost"] = from_micros(0)
            else:
                new = await self._money(mw, "capture", lambda: self._capture(mw, state, hold_id))
        elif not billable and not receipt.replayed:
            entry = receipt.entry
            new = await self._money(
                mw,
                "refund",
                lambda: mw.ledger.refund(
                    aid,
                    from_micros(self.micros),
                    entry_id=entry.entry_id,
                    key=f"refund:{entry.entry_id}",
                    layer="request",
                    metadata={"reason": f"app answered {status}"},
                ),
            )
            state["credit_cost"] = from_micros(0)
        else:
            return
        if new is not None:
            self._apply(state, new)

    async def _money(self, mw: CreditMiddleware, op: str, run: Any) -> Receipt | None:
        try:
            new: Receipt | None = await mw.outcomes.settle(self.identity.account_id, op, run)
        except (CreditError, ValueError) as exc:
            # A hold left active expires on its own; a missed refund is visible in the ledger.
            # the exception's text can name the account: only its class above DEBUG
            log.warning("could not %s after the app answered: %s", op, type(exc).__name__)
            log.debug("could not %s: %s", op, exc)
            mw.observer.ledger_op(op, "error")
            return None
        mw.observer.ledger_op(op, "ok")
        return new

    def _apply(self, state: MutableMapping[str, Any], new: Receipt) -> None:
        self.receipt = new
        state["credit_balance"] = new.available
        if new.entry.kind == "capture":
            state["credit_cost"] = new.entry.amount

    @staticmethod
    def _unbill_args(receipt: Receipt | None) -> tuple[str, dict[str, Any]]:
        """Free the key, and give back what the request was charged (a resumed request's
        charge too: the call it paid for was never served)."""
        if receipt is None:
            return "free", {}
        if receipt.hold is not None:
            if receipt.hold.status != "active":
                return "refund", {}
            return "release", {"release": receipt.hold.hold_id}
        return "refund", {"refund": receipt}

    def _capture_args(
        self, state: MutableMapping[str, Any], receipt: Receipt | None
    ) -> dict[str, Any]:
        if receipt is None or receipt.hold is None or receipt.hold.status != "active":
            return {}
        final = state.get(FINAL_COST_STATE)
        amount: Any = from_micros(self.micros) if final is None else final
        try:
            cost_to_micros(amount)
        except ValueError:
            log.error("route %s reported an unusable final cost %r", self.price.route, final)
            amount = from_micros(self.micros)
        return {"capture": (receipt.hold.hold_id, amount)}

    def _announce_capture(self, state: MutableMapping[str, Any], final: Any) -> None:
        """The capture of a keyed hold happens with its stored response, after the body; the
        headers already say what it will be (exactly: a capture is capped by the hold)."""
        assert self.receipt is not None and self.receipt.hold is not None
        try:
            micros = cost_to_micros(final)[0]
        except ValueError:
            micros = self.micros
        held = self.receipt.hold.amount_micros
        charge = min(micros, self.receipt.available_micros + held)
        state["credit_cost"] = from_micros(charge)
        state["credit_balance"] = from_micros(self.receipt.available_micros + held - charge)

    async def _finish(
        self, mw: CreditMiddleware, recorder: Recorder | None, **money: Any
    ) -> Receipt | None:
        assert self.request_key is not None
        return await mw.ledger.finish_request(
            self.identity.account_id,
            self.request_key,
            owner=self.owner,
            response=None if recorder is None else recorder.stored(),
            ttl=mw._idempotency_ttl,
            **money,
        )

    async def _capture(
        self, mw: CreditMiddleware, state: MutableMapping[str, Any], hold_id: int
    ) -> Receipt:
        final = state.get(FINAL_COST_STATE)
        amount: Any = from_micros(self.micros) if final is None else final
        try:
            return await mw.ledger.capture(hold_id, amount, round_up=True, layer="request")
        except ValueError:
            log.error("route %s reported an unusable final cost %r", self.price.route, final)
            amount = from_micros(self.micros)
            return await mw.ledger.capture(hold_id, amount, round_up=True, layer="request")
