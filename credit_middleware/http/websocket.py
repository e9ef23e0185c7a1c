"""WebSocket connections on metered paths: identified, rate limited and billed like HTTP calls.

A connection is admitted by the middleware before the app sees it (the same identity, rate
limits and charge as an HTTP call of its route), and billed once: the charge stands when the
app accepts the connection, and is refunded when the app closes or denies it before accepting
(a connection that never opened was not served). Refusals happen before the handshake: as an
HTTP answer (the ``websocket.http.response`` extension, which uvicorn and Starlette's test
client offer: a 401/402/429/503 with its problem+json body) or else as a close before accept
(the server answers 403). The handshake's answer carries the same credit and rate-limit
headers as an HTTP call.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..charge.bill import CHARGE_ID_HEADER, Bill
from ..charge.settlement import Settlement
from ..errors import CreditError
from ..money import from_micros

__all__ = ["answer", "serve"]

log = logging.getLogger("credit_middleware.middleware")

_DENIAL = "websocket.http.response"
_POLICY_VIOLATION = 1008
_TRY_AGAIN_LATER = 1013


async def answer(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Send a refusal: as it is on HTTP; on a WebSocket before its handshake, as an HTTP
    answer where the server supports it, else as a close (the server answers 403)."""
    if scope["type"] != "websocket" or _DENIAL in (scope.get("extensions") or {}):
        await response(scope, receive, send)  # Starlette sends websocket.http.response.*
        return
    retry = response.status_code in (429, 503)
    await send(
        {
            "type": "websocket.close",
            "code": _TRY_AGAIN_LATER if retry else _POLICY_VIOLATION,
            "reason": f"{response.status_code}",
        }
    )


async def serve(
    mw: Settlement, app: ASGIApp, bill: Bill, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run the app on an admitted connection; refund its charge if the app never accepts it."""
    state = bill.expose(scope)
    accepted = False

    async def wrapped(message: Message) -> None:
        nonlocal accepted
        if message["type"] == "websocket.accept" and not accepted:
            accepted = True
            headers = [*(message.get("headers") or ()), *_headers(state, bill, mw)]
            message = {**message, "headers": headers}
        await send(message)

    try:
        await app(scope, receive, wrapped)
    finally:
        if not accepted:
            await _refund(mw, bill, state)


def _headers(
    state: MutableMapping[str, Any], bill: Bill, mw: Settlement
) -> list[tuple[bytes, bytes]]:
    ours = [(name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in bill.headers]  # fmt: skip
    ours.append((CHARGE_ID_HEADER.lower().encode("latin-1"), bill.charge_id.encode("latin-1")))
    if bill.receipt is not None:
        ours.append((mw.balance_name, str(state["credit_balance"]).encode("latin-1")))
        ours.append((b"credit-cost", str(state["credit_cost"]).encode("latin-1")))
    return ours


async def _refund(mw: Settlement, bill: Bill, state: MutableMapping[str, Any]) -> None:
    receipt = bill.receipt
    if receipt is None or receipt.replayed:
        return
    aid = bill.identity.account_id
    entry_id = receipt.entry.entry_id

    def refund() -> Any:
        return mw.ledger.refund(
            aid,
            from_micros(bill.micros),
            entry_id=entry_id,
            key=f"refund:{entry_id}",
            layer="request",
            metadata={"reason": "websocket not accepted"},
        )

    try:
        await mw.outcomes.settle(aid, "refund", refund)
    except (CreditError, ValueError) as exc:
        log.warning("could not refund a websocket that was not accepted: %s", type(exc).__name__)
        mw.observer.ledger_op("refund", "error")
        return
    mw.observer.ledger_op("refund", "ok")
    state["credit_cost"] = from_micros(0)
