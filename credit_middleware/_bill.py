"""One admitted request's bill: what it was charged, and settling it once the app answered.

Settling happens as the response starts when it can (so the balance header is final): a 5xx is
refunded or its hold released (if configured), a hold is captured at the price the handler
put in ``request.state.credit_final_cost``. A streamed hold route settles after the body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from .errors import CreditError
from .identity import Identity
from .ledger import Receipt
from .money import from_micros
from .pricing import Price
from .problems import Refused, problem

if TYPE_CHECKING:
    from .middleware import CreditMiddleware

log = logging.getLogger("credit_middleware.middleware")

FINAL_COST_STATE = "credit_final_cost"


class _Bill:
    def __init__(self, identity: Identity, price: Price, path: str = "") -> None:
        self.identity = identity
        self.price = price
        # what the ledger entry names: the priced route's pattern, or the path itself when no
        # route matched (control characters dropped, at most 255 characters)
        named = price.route if price.route != "default" or not path else path
        self.route = "".join(c for c in named if c.isprintable())[:255]
        self.tier = ""
        self.micros = 0
        self.receipt: Receipt | None = None
        self.headers: list[tuple[str, str]] = []
        self.post_seconds = 0.0
        self._settled = False

    @property
    def kind(self) -> str:
        return "hold" if self.price.mode == "hold" else "debit"

    async def run(self, mw: CreditMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state["credit_identity"] = self.identity
        state["credit_account_id"] = self.identity.account_id
        state["credit_tier"] = self.tier
        state["credit_cost"] = from_micros(self.micros) if self.receipt else None
        state["credit_balance"] = self.receipt.available if self.receipt else None
        status = 500

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                final = state.get(FINAL_COST_STATE)
                if status >= 500 or self.kind == "debit" or final is not None:
                    await self._settle(mw, state, status)
                headers = MutableHeaders(scope=message)
                for name, value in self.headers:
                    headers.append(name, value)
                if self.receipt is not None:
                    headers[mw._balance_header] = str(self.receipt.available)
                    if state.get("credit_cost") is not None:
                        headers["Credit-Cost"] = str(state["credit_cost"])
            await send(message)

        try:
            await mw.app(scope, receive, wrapped)
        finally:
            if not self._settled:
                await self._settle(mw, state, status)

    async def _settle(
        self, mw: CreditMiddleware, state: MutableMapping[str, Any], status: int
    ) -> None:
        if self._settled or self.receipt is None:
            self._settled = True
            return
        self._settled = True
        started = time.perf_counter()
        receipt = self.receipt
        failed = status >= 500 and mw._refund
        op = "refund"
        try:
            if self.kind == "hold":
                assert receipt.hold is not None
                hold_id = receipt.hold.hold_id
                if failed:
                    op = "release"
                    new = await mw.call(mw.ledger.release(hold_id, reason="app_error"))
                else:
                    op = "capture"
                    new = await self._capture(mw, state, hold_id)
            elif failed and not receipt.replayed:
                entry = receipt.entry
                new = await mw.call(
                    mw.ledger.refund(
                        self.identity.account_id,
                        from_micros(self.micros),
                        entry_id=entry.entry_id,
                        key=f"refund:{entry.entry_id}",
                        layer="request",
                        metadata={"reason": f"app answered {status}"},
                    )
                )
                state["credit_cost"] = from_micros(0)
            else:
                return
        except (CreditError, ValueError) as exc:
            # A hold left active expires on its own; a missed refund is visible in the ledger.
            # the exception's text can name the account: only its class above DEBUG
            log.warning(
                "could not %s after the app answered %s: %s", op, status, type(exc).__name__
            )
            log.debug("could not %s: %s", op, exc)
            mw.observer.ledger_op(op, "error")
            return
        finally:
            self.post_seconds = time.perf_counter() - started
        mw.observer.ledger_op(op, "ok")
        self.receipt = new
        state["credit_balance"] = new.available

    async def _capture(
        self, mw: CreditMiddleware, state: MutableMapping[str, Any], hold_id: int
    ) -> Receipt:
        final = state.get(FINAL_COST_STATE)
        amount: Any = from_micros(self.micros) if final is None else final
        try:
            receipt = await mw.call(
                mw.ledger.capture(hold_id, amount, round_up=True, layer="request")
            )
        except ValueError:
            log.error("route %s reported an unusable final cost %r", self.price.route, final)
            amount = from_micros(self.micros)
            receipt = await mw.call(
                mw.ledger.capture(hold_id, amount, round_up=True, layer="request")
            )
        state["credit_cost"] = receipt.entry.amount
        return receipt


def idempotency_key(scope: Scope) -> str | None:
    """The ledger key for a client's ``Idempotency-Key``; a malformed one is a 400.

    Ledger keys are unique per account, so the same client key from two accounts never clash.
    """
    for name, value in scope.get("headers", ()):
        if name == b"idempotency-key":
            try:
                key = str(value.decode("ascii")).strip().strip('"')
            except UnicodeDecodeError:
                key = ""
            if not key or len(key) > 200 or any(not 32 < ord(c) < 127 for c in key):
                body = problem(
                    "invalid-request", "Idempotency-Key must be 1-200 visible ASCII characters"
                )
                raise Refused(body, "bad_idempotency_key")
            return "idem:" + key
    return None
