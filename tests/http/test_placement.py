"""The one line works wherever it is added: added after (so outside) the app's CORSMiddleware
and AuthenticationMiddleware, the middleware still lets preflights through, its refusals carry
the CORS headers the app's CORS configuration gives, and ``request.user`` is found."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from _middleware_helpers import SECRET, balance, bearer, client, echo
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from credit_middleware import CreditMiddleware, Credits, Ledger, Provisioner

pytestmark = pytest.mark.anyio
ORIGIN = "https://app.example.com"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}


class Session(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-session")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def credits_for(ledger: Ledger, **options: Any) -> Credits:
    return Credits(provisioner=Provisioner(ledger), jwt_secret=SECRET, meter="/v1/*", **options)


def cors() -> Middleware:
    return Middleware(CORSMiddleware, allow_origins=[ORIGIN], allow_headers=["Authorization"])


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
async def test_added_last_outside_cors_preflights_pass_and_refusals_are_readable(
    ledger: Ledger, kind: str
) -> None:
    if kind == "starlette":
        app: Any = Starlette(routes=[Route("/v1/echo", echo)], middleware=[cors()])
    else:
        api = FastAPI()
        api.add_middleware(CORSMiddleware, allow_origins=[ORIGIN], allow_headers=["Authorization"])

        @api.get("/v1/echo")
        async def hello(request: Request) -> dict[str, str]:
            return {"account": request.state.credit_account_id}

        app = api

    app.add_middleware(
        CreditMiddleware, credits=credits_for(ledger, cost="2")
    )  # the README's one line, added last: the outermost middleware
    origin = {"Origin": ORIGIN}
    async with client(app) as c:
        preflight = await c.options("/v1/echo", headers=PREFLIGHT)
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        unauthenticated = await c.get("/v1/echo", headers=origin)
        paid = [await c.get("/v1/echo", headers={**origin, **bearer("cors")}) for _ in range(3)]
        other = await c.get("/v1/echo", headers={"Origin": "https://evil.example"})
    assert unauthenticated.status_code == 401
    assert [r.status_code for r in paid] == [200, 200, 402]
    for r in (unauthenticated, *paid):
        assert r.headers["access-control-allow-origin"] == ORIGIN, r.status_code
    assert paid[2].headers["content-type"] == "application/problem+json"
    assert "access-control-allow-origin" not in other.headers  # the app's CORS rules decide
    assert await balance(ledger, "cors") == Decimal("1.0")


async def test_a_rate_limited_answer_is_readable_cross_origin(ledger: Ledger) -> None:
    app = Starlette(routes=[Route("/v1/echo", echo)], middleware=[cors()])
    app.add_middleware(CreditMiddleware, credits=credits_for(ledger, tiers={"trial": "1/minute"}))
    async with client(app) as c:
        headers = {"Origin": ORIGIN, **bearer("limited")}
        assert (await c.get("/v1/echo", headers=headers)).status_code == 200
        r = await c.get("/v1/echo", headers=headers)
    assert r.status_code == 429
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.json()["type"].endswith(":rate-limited")


async def test_added_last_outside_authentication_the_user_is_found(ledger: Ledger) -> None:
    app = Starlette(
        routes=[Route("/v1/echo", echo)],
        middleware=[Middleware(AuthenticationMiddleware, backend=Session())],
    )
    app.add_middleware(CreditMiddleware, credits=credits_for(ledger))
    async with client(app) as c:
        r = await c.get("/v1/echo", headers={"X-Session": "logged-in"})
        assert r.status_code == 200, r.text
        assert r.json()["account"] == "logged-in"
        assert (await c.get("/v1/echo")).status_code == 401
    assert await balance(ledger, "logged-in") == Decimal("4.999")


async def test_inside_cors_and_authentication_works_as_before(ledger: Ledger) -> None:
    app = Starlette(routes=[Route("/v1/echo", echo)])
    app.add_middleware(CreditMiddleware, credits=credits_for(ledger))
    app.add_middleware(AuthenticationMiddleware, backend=Session())
    app.add_middleware(CORSMiddleware, allow_origins=[ORIGIN], allow_headers=["Authorization"])
    async with client(app) as c:
        preflight = await c.options("/v1/echo", headers=PREFLIGHT)
        assert preflight.status_code == 200
        r = await c.get("/v1/echo", headers={"Origin": ORIGIN, "X-Session": "inside"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
        r = await c.get("/v1/echo", headers={"Origin": ORIGIN})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    assert await balance(ledger, "inside") == Decimal("4.999")


class HeaderUser:
    """An authentication middleware of the app's own (not Starlette's): sets ``scope["user"]``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            name = dict(scope["headers"]).get(b"x-user", b"").decode()
            scope["user"] = SimpleUser(name) if name else None
        await self.app(scope, receive, send)


async def test_an_auth_middleware_of_the_apps_own_is_named_in_after(ledger: Ledger) -> None:
    app = Starlette(routes=[Route("/v1/echo", echo)], middleware=[Middleware(HeaderUser)])
    app.add_middleware(CreditMiddleware, credits=credits_for(ledger), after=[HeaderUser])
    async with client(app) as c:
        r = await c.get("/v1/echo", headers={"X-User": "custom"})
        assert r.status_code == 200 and r.json()["account"] == "custom"
    assert await balance(ledger, "custom") == Decimal("4.999")


async def test_a_preflight_without_cors_middleware_is_neither_billed_nor_refused(
    ledger: Ledger,
) -> None:
    app = Starlette(routes=[Route("/v1/echo", echo)])
    app.add_middleware(CreditMiddleware, credits=credits_for(ledger))
    async with client(app) as c:
        preflight = await c.options("/v1/echo", headers={**PREFLIGHT, **bearer("pre")})
        plain_options = await c.options("/v1/echo", headers=bearer("pre"))
    assert preflight.status_code == 405  # the app's own answer: nothing of ours
    assert "credit-charge-id" not in preflight.headers
    assert "credit-charge-id" in plain_options.headers  # not a preflight: metered (and refunded)
    assert await balance(ledger, "pre") == Decimal("5.0")


def test_after_names_classes() -> None:
    from credit_middleware import ConfigurationError

    with pytest.raises(ConfigurationError, match="after="):
        CreditMiddleware(Starlette(), jwt_secret=SECRET, after=[HeaderUser(Starlette())])  # type: ignore[list-item]
