"""WebSockets on metered paths, on a real server (uvicorn) with a real client (``websockets``):
refused before the handshake without a credential (a real 401 with its problem+json body),
identified, rate limited and billed once per accepted connection, refunded when the app never
accepts, and left alone when exempted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from _middleware_helpers import SECRET, balance, serve, token
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from credit_middleware import CreditMiddleware, Credits, Ledger, PricedRoute, Pricing

pytestmark = pytest.mark.anyio


async def talk(websocket: WebSocket) -> None:
    await websocket.accept()
    account = getattr(websocket.state, "credit_account_id", None)
    await websocket.send_text(json.dumps({"account": account}))
    await websocket.receive_text()  # the client's goodbye
    await websocket.close()


async def deny(websocket: WebSocket) -> None:
    await websocket.close(code=1008)  # the app refuses it before accepting


def ws_app(ledger_url: str, **options: Any) -> Starlette:
    app = Starlette(routes=[WebSocketRoute("/v1/ws", talk), WebSocketRoute("/v1/deny", deny)])
    options.setdefault("meter", "/v1/*")
    app.add_middleware(
        CreditMiddleware, credits=Credits(database_url=ledger_url, jwt_secret=SECRET, **options)
    )
    return app


@pytest.fixture
def ledger_clock() -> Callable[[], float]:
    return time.time  # the app's ledger runs on the wall clock


def auth(sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub)}"}


async def refused(url: str, **headers: str) -> Any:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, additional_headers=headers):
            pass
    return caught.value.response


async def test_a_websocket_without_credential_is_refused_before_the_handshake(
    ledger_url: str, ledger: Ledger
) -> None:
    with serve(ws_app(ledger_url)) as base:
        response = await refused(base.replace("http", "ws") + "/v1/ws")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert json.loads(response.body)["type"].endswith(":unauthenticated")


async def test_an_accepted_websocket_is_billed_once_and_a_denied_one_is_refunded(
    ledger_url: str, ledger: Ledger
) -> None:
    with serve(ws_app(ledger_url, cost="0.5")) as base:
        ws = base.replace("http", "ws")
        async with connect(ws + "/v1/ws", additional_headers=auth("sock")) as conn:
            hello = json.loads(await conn.recv())
            await conn.send("bye")
            assert conn.response is not None
            handshake = conn.response.headers
        with pytest.raises(InvalidStatus) as caught:
            async with connect(ws + "/v1/deny", additional_headers=auth("sock")):
                pass
    assert hello == {"account": "sock"}
    assert handshake["credit-cost"] == "0.5" and handshake["credit-balance"] == "4.5"
    assert handshake["credit-charge-id"].startswith("c_") and "ratelimit" in handshake
    assert caught.value.response.status_code == 403  # the app's own refusal
    assert await balance(ledger, "sock") == Decimal("4.5")  # the denied one was refunded
    kinds = [e.kind for e in await ledger.history("sock")]
    assert kinds.count("debit") == 2 and kinds.count("refund") == 1


async def test_websockets_are_rate_limited_and_refused_when_credits_run_out(
    ledger_url: str, ledger: Ledger
) -> None:
    app = ws_app(ledger_url, cost="3", tiers={"trial": "2/minute"})
    with serve(app) as base:
        url = base.replace("http", "ws") + "/v1/ws"
        async with connect(url, additional_headers=auth("limited")) as conn:
            await conn.recv()
            await conn.send("bye")
        poor = await refused(url, **auth("limited"))
        limited = await refused(url, **auth("limited"))
    assert poor.status_code == 402 and json.loads(poor.body)["available"] == "2"
    assert limited.status_code == 429 and "retry-after" in limited.headers
    assert await balance(ledger, "limited") == Decimal("2")


async def test_websockets_can_be_exempted(ledger_url: str, ledger: Ledger) -> None:
    everything = Pricing(meter="/v1/*", websockets="exempt")
    one_route = Pricing(meter="/v1/*", routes=[PricedRoute("/v1/ws", mode="exempt")])
    for pricing in (everything, one_route):
        app = Starlette(routes=[WebSocketRoute("/v1/ws", talk)])
        app.add_middleware(
            CreditMiddleware,
            credits=Credits(database_url=ledger_url, jwt_secret=SECRET, pricing=pricing),
        )
        with serve(app) as base:
            async with connect(base.replace("http", "ws") + "/v1/ws") as conn:
                assert json.loads(await conn.recv()) == {"account": None}  # nothing of ours
                await conn.send("bye")
                assert conn.response is not None
                assert "credit-charge-id" not in conn.response.headers


async def test_a_hold_route_cannot_meter_a_websocket_and_says_so(
    ledger_url: str, ledger: Ledger
) -> None:
    pricing = Pricing(meter="/v1/*", routes=[PricedRoute("/v1/ws", mode="hold", cost="1")])
    app = Starlette(routes=[WebSocketRoute("/v1/ws", talk)])
    app.add_middleware(
        CreditMiddleware,
        credits=Credits(database_url=ledger_url, jwt_secret=SECRET, pricing=pricing),
    )
    with serve(app) as base:
        response = await refused(base.replace("http", "ws") + "/v1/ws", **auth("held"))
    assert response.status_code == 500
    body = json.loads(response.body)
    assert body["type"].endswith(":unpriced-route") and body["route"] == "/v1/ws"
    assert await ledger.get_account("held") is None
