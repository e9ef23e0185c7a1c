"""The conformance contract, one set of assertions over every app shape of ``_shapes.SHAPES``,
on the embedded default (SQLite, in-memory limits) and on PostgreSQL + Redis:

- unauthenticated → 401 problem+json, the app never runs;
- priced → exactly that price, once (streamed responses and WebSockets too);
- unserved (the app's 4xx) → not billed;
- a CORS preflight → passes (answered by the app's CORS, never billed or refused);
- refusals (401, 402) → problem+json, readable cross-origin where the app allows the origin.

``make test-lowest-deps`` runs this folder again on the oldest Starlette and FastAPI we support.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from _shapes import SECRET, SHAPES, Shape
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from credit_middleware import Credits, Ledger, TrialPolicy

pytestmark = pytest.mark.anyio
REDIS_URL = os.environ.get("CREDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class ServerRootPath:
    """What ``uvicorn --root-path`` does to a request: the root path in ``root_path`` and in
    front of ``path``."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "root_path": self.root_path, "path": self.root_path + scope["path"]}
            scope["raw_path"] = scope["path"].encode()
        await self.app(scope, receive, send)


@pytest.fixture
def ledger_clock() -> Callable[[], float]:
    return time.time  # the conftest ledger checks what the app did on the wall clock


@pytest.fixture
def backend(request: pytest.FixtureRequest, ledger_url: str) -> dict[str, Any]:
    """Credits options: SQLite and in-memory limits, or PostgreSQL and Redis."""
    if ledger_url.startswith("sqlite"):
        return {"database_url": ledger_url}
    prefix = request.getfixturevalue("redis_client").test_prefix
    return {"database_url": ledger_url, "redis_url": REDIS_URL, "key_prefix": prefix}


def problem_of(r: httpx.Response, kind: str, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == f"urn:credit-middleware:problem:{kind}"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
async def test_contract(shape: Shape, backend: dict[str, Any], ledger: Ledger) -> None:
    credits = Credits(
        jwt_secret=SECRET,
        meter=shape.meter,
        policy=TrialPolicy(amount=2 * shape.price),  # two calls, then a 402
        **backend,
    )
    app: ASGIApp = shape.build(credits)
    if shape.root_path:
        app = ServerRootPath(app, shape.root_path)
    origin = {"Origin": shape.cors_origin} if shape.cors_origin else {}
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            account, who = await shape.login(c, "conformer")
            anonymous = await c.get(shape.priced, headers=origin)
            problem_of(anonymous, "unauthenticated", 401)
            preflight = await c.options(
                shape.priced,
                headers={"Origin": shape.cors_origin or "https://x.example", **_ask("GET")},
            )
            assert preflight.status_code != 401 and "credit-charge-id" not in preflight.headers
            first = await c.get(shape.priced, headers={**who, **origin})
            assert first.status_code == 200, first.text
            assert Decimal(first.headers["credit-cost"]) == shape.price
            unserved = await c.get(shape.unserved, headers=who)
            assert 400 <= unserved.status_code < 500, unserved.text
            assert Decimal(unserved.headers.get("credit-cost", "0")) == 0
            second = await (
                c.get(shape.stream, headers=who)
                if shape.stream
                else c.get(shape.priced, headers=who)
            )
            assert (
                second.status_code == 200 and Decimal(second.headers["credit-cost"]) == shape.price
            )
            if shape.stream:
                assert second.text == "chunk 0\nchunk 1\nchunk 2\n"
            broke = await c.get(shape.priced, headers={**who, **origin})
            problem_of(broke, "insufficient-credits", 402)
            if shape.cors_origin:
                assert preflight.status_code == 200
                assert preflight.headers["access-control-allow-origin"] == shape.cors_origin
                for refusal in (anonymous, broke):
                    assert refusal.headers["access-control-allow-origin"] == shape.cors_origin
        assert (await ledger.balance(account)).available == 0
        if shape.websocket:
            await websocket_contract(app, shape, account, who, ledger)
    finally:
        await credits.aclose()


async def websocket_contract(
    app: ASGIApp, shape: Shape, account: str, who: dict[str, str], ledger: Ledger
) -> None:
    """Unauthenticated: refused before the handshake; with credentials: accepted, billed."""
    assert shape.websocket is not None
    anonymous = await handshake(app, shape.websocket, {})
    assert anonymous["type"] == "websocket.http.response.start" and anonymous["status"] == 401
    await ledger.grant(account, shape.price, key="top-up", source="purchase")
    accepted = await handshake(app, shape.websocket, who)
    assert accepted["type"] == "websocket.accept", accepted
    headers = dict(accepted.get("headers", []))
    assert Decimal(headers[b"credit-cost"].decode()) == shape.price
    assert (await ledger.balance(account)).available == 0  # the top-up paid for it


def _ask(method: str) -> dict[str, str]:
    return {
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization",
    }


async def handshake(app: ASGIApp, path: str, headers: dict[str, str]) -> Message:
    """Open a WebSocket on ``app`` in process, as a server offering the denial-response
    extension does; the app's first answer (accept, close or an HTTP response). An accepted
    socket is then talked to as the shapes' socket expects (one message each way)."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    scope: Scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }

    async def run() -> None:
        await app(scope, inbox.get, outbox.put)

    task = asyncio.create_task(run())
    try:
        first = await asyncio.wait_for(outbox.get(), 10)
        if first["type"] == "websocket.accept":
            message = await asyncio.wait_for(outbox.get(), 10)
            assert message["type"] == "websocket.send"
            await inbox.put({"type": "websocket.receive", "text": "bye"})
            await asyncio.wait_for(outbox.get(), 10)  # its close
            await inbox.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
    return first
