"""Helpers for the middleware, identity and example tests: tokens, apps, a real uvicorn."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from credit_middleware import Ledger
from credit_middleware.events import Observer
from credit_middleware.http.middleware import FINAL_COST_STATE, CreditMiddleware

SECRET = "test-secret-0123456789abcdef-0123456789"


def token(sub: Any = "user-1", *, secret: str = SECRET, lifetime: int = 600, **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + lifetime, **claims}
    if sub is None:
        del payload["sub"]
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(sub: Any = "user-1", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def refused(self, status: int, reason: str) -> None:
        self.events.append(("refused", (status, reason)))

    def ledger_op(self, kind: str, outcome: str) -> None:
        self.events.append(("ledger_op", (kind, outcome)))

    def degraded(self, backend: str, degraded: bool) -> None:
        self.events.append(("degraded", (backend, degraded)))

    def request_overhead(self, seconds: float) -> None:
        self.events.append(("overhead", (seconds,)))

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [args for kind, args in self.events if kind == name]


async def echo(request: Request) -> JSONResponse:
    state = request.state
    return JSONResponse(
        {
            "account": getattr(state, "credit_account_id", None),
            "tier": getattr(state, "credit_tier", None),
            "cost": str(getattr(state, "credit_cost", None)),
            "balance": str(getattr(state, "credit_balance", None)),
        }
    )


async def boom(request: Request) -> Response:
    return Response("broken", status_code=503)


async def llm(request: Request) -> JSONResponse:
    setattr(request.state, FINAL_COST_STATE, request.query_params.get("cost", "0.0025"))
    return JSONResponse({"ok": True})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def build_app(**options: Any) -> Starlette:
    """A tiny app: /v1/echo (default price), /v1/boom (503), /v1/llm (hold), /healthz."""
    app = Starlette(
        routes=[
            Route("/v1/echo", echo, methods=["GET", "POST"]),
            Route("/v1/boom", boom),
            Route("/v1/llm", llm),
            Route("/v1/self", echo),
            Route("/healthz", health),
        ]
    )
    if "credits" not in options:  # a shared Credits carries its own identity options
        options.setdefault("jwt_secret", SECRET)
    app.add_middleware(CreditMiddleware, **options)
    return app


def middleware_of(app: Starlette) -> CreditMiddleware:
    """The CreditMiddleware instance inside a built app (after its first request)."""
    node: Any = app.middleware_stack
    while node is not None and not isinstance(node, CreditMiddleware):
        node = getattr(node, "app", None)
    assert isinstance(node, CreditMiddleware)
    return node


def client(app: Any, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def trial_grants(ledger: Ledger, account_id: str) -> int:
    """Grant entries of the account (only trial grants are made in these tests)."""
    return sum(1 for e in await ledger.history(account_id, limit=1000) if e.kind == "grant")


async def balance(ledger: Ledger, account_id: str) -> Decimal:
    return (await ledger.balance(account_id)).available


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any, **options: Any) -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread on a free port; yields the base URL. ``options``
    go to ``uvicorn.Config`` (``root_path="/api"`` as ``uvicorn --root-path /api``)."""
    port = free_port()
    options.setdefault("lifespan", "on")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
