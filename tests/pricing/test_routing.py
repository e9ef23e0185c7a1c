"""Prices follow the app's router: inside ``root_path`` (from the server, the app or a mount),
through mounts, hosts and FastAPI's included routers, past the router's own redirects; what
the router serves with a route that cannot be read is refused, never served free."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from _middleware_helpers import SECRET, balance, bearer, client, echo, serve
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import BaseRoute, Host, Match, Mount, Route, Router
from starlette.types import Receive, Scope, Send

from credit_middleware import CreditMiddleware, Credits, Ledger, Provisioner, priced
from examples import app as starlette_example
from examples import fastapi_app as fastapi_example

pytestmark = pytest.mark.anyio
ROOT_PATH_DEPRECATED = "ignore:The .root_path. parameter is deprecated"


def sub_app() -> Starlette:
    return Starlette(routes=[Route("/v1/echo", echo), Route("/free", echo)])


@pytest.mark.parametrize("example", [starlette_example, fastapi_example], ids=["app", "fastapi"])
async def test_root_path_from_the_server_keeps_metering(
    ledger_url: str, example: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``uvicorn --root-path /api`` behind a proxy: the examples are metered, not a 500 (and
    the FastAPI one's refusals are readable by its frontend's origin)."""
    monkeypatch.setenv("CORS_ORIGINS", "https://front.example")
    app = example.create_app(database_url=ledger_url, jwt_secret=SECRET)
    led = Ledger(ledger_url)
    origin = {"Origin": "https://front.example"}
    try:
        with serve(app, root_path="/api") as url:
            async with httpx.AsyncClient(base_url=url) as c:
                anonymous = await c.get("/v1/echo", headers=origin)
                paid = await c.get("/v1/echo", headers=bearer("rp"))
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.headers["content-type"] == "application/problem+json"
        if example is fastapi_example:
            assert anonymous.headers["access-control-allow-origin"] == origin["Origin"]
        assert paid.status_code == 200 and paid.headers["credit-cost"] == "0.001"
        assert await balance(led, "rp") == Decimal("4.999")
        assert (await led.verify()).ok
    finally:
        await led.close()


@pytest.mark.filterwarnings(ROOT_PATH_DEPRECATED)
async def test_root_path_of_the_app_keeps_metering(ledger: Ledger) -> None:
    app = FastAPI(root_path="/api")

    @app.get("/v1/echo")
    async def hello(request: Request) -> dict[str, str]:
        return {"balance": str(request.state.credit_balance)}

    app.add_middleware(
        CreditMiddleware, provisioner=Provisioner(ledger), jwt_secret=SECRET, meter="/v1/*"
    )
    async with client(app) as c:
        assert (await c.get("/api/v1/echo")).status_code == 401
        assert (await c.get("/v1/echo")).status_code == 401  # the router serves this one too
        r = await c.get("/api/v1/echo", headers=bearer("app-root"))
        assert r.status_code == 200 and r.headers["credit-cost"] == "0.001"
    assert await balance(ledger, "app-root") == Decimal("4.999")


async def test_a_metered_sub_app_mounted_at_a_prefix_keeps_metering(ledger: Ledger) -> None:
    for sub in (sub_app(), FastAPI(routes=sub_app().routes)):
        sub.add_middleware(
            CreditMiddleware, provisioner=Provisioner(ledger), jwt_secret=SECRET, meter="/v1/*"
        )
        app = Starlette(routes=[Mount("/api", app=sub)])
        async with client(app) as c:
            assert (await c.get("/api/v1/echo")).status_code == 401
            assert (await c.get("/api/free")).status_code == 200
            r = await c.get("/api/v1/echo", headers=bearer("mounted"))
            assert r.status_code == 200 and r.headers["credit-cost"] == "0.001"
    assert await balance(ledger, "mounted") == Decimal("4.998")


async def test_priced_routes_of_a_sub_app_are_priced_from_the_outer_middleware(
    ledger: Ledger,
) -> None:
    sub = FastAPI()

    @sub.get("/v1/summary/{doc}")
    @priced("0.25")
    async def summary(doc: int) -> dict[str, int]:
        return {"doc": doc}

    @sub.get("/v1/echo")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    app = Starlette(routes=[Mount("/api", app=sub)])
    credits = Credits(provisioner=Provisioner(ledger), jwt_secret=SECRET, meter="/api/v1/*")
    app.add_middleware(CreditMiddleware, credits=credits)
    async with client(app) as c:
        r = await c.get("/api/v1/summary/3", headers=bearer("outer"))
        assert r.status_code == 200 and r.headers["credit-cost"] == "0.25"
        r = await c.get("/api/v1/echo", headers=bearer("outer"))
        assert r.headers["credit-cost"] == "0.001"
        assert (await c.get("/api/v1/summary/3")).status_code == 401
    assert await balance(ledger, "outer") == Decimal("4.749")
    entries = await ledger.history("outer")
    assert {e.route for e in entries if e.kind == "debit"} == {"/api/v1/summary/{doc}", "/api/v1/*"}


async def test_priced_routes_in_included_routers_are_priced_and_documented(
    ledger: Ledger,
) -> None:
    items = APIRouter(prefix="/items", tags=["items"])

    @items.get("/{item_id}")
    @priced("0.25")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @items.get("/")
    async def list_items() -> list[int]:
        return [1]

    v1 = APIRouter(prefix="/v1")
    v1.include_router(items)
    app = FastAPI()
    app.include_router(v1)
    credits = Credits(provisioner=Provisioner(ledger), jwt_secret=SECRET, meter="/v1/*")
    app.add_middleware(CreditMiddleware, credits=credits)
    async with client(app) as c:
        r = await c.get("/v1/items/7", headers=bearer("routers"))
        assert r.status_code == 200 and r.headers["credit-cost"] == "0.25"
        r = await c.get("/v1/items/", headers=bearer("routers"))
        assert r.headers["credit-cost"] == "0.001"
        schema = (await c.get("/openapi.json")).json()
    assert await balance(ledger, "routers") == Decimal("4.749")
    for path in ("/v1/items/{item_id}", "/v1/items/"):
        responses = schema["paths"][path]["get"]["responses"]
        for status in ("401", "402", "429", "503"):
            assert "application/problem+json" in responses[status]["content"], (path, status)


async def test_the_routers_own_trailing_slash_redirect_is_not_metered(ledger: Ledger) -> None:
    """It runs no endpoint: no credential needed, nothing charged, no rate-limit slot spent."""
    app = FastAPI()

    @app.get("/v1/items/")
    async def items() -> list[int]:
        return [1]

    credits = Credits(
        provisioner=Provisioner(ledger),
        jwt_secret=SECRET,
        meter="/v1/*",
        tiers={"trial": "2/minute"},
    )
    app.add_middleware(CreditMiddleware, credits=credits)
    async with client(app) as c:
        assert (await c.get("/v1/items")).status_code == 307  # no credential needed
        redirected = await c.get("/v1/items", headers=bearer("slash"))
        first = await c.get("/v1/items/", headers=bearer("slash"))
        second = await c.get("/v1/items/", headers=bearer("slash"))
    assert redirected.status_code == 307 and "ratelimit" not in redirected.headers
    assert [first.status_code, second.status_code] == [200, 200]  # the redirect spent no slot
    assert await balance(ledger, "slash") == Decimal("4.998")


class OpaqueRoute(BaseRoute):
    """A route kind that matches and serves, but names no endpoint a price could be read from."""

    def __init__(self, path: str) -> None:
        self.path = path

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        return (Match.FULL if scope["path"].startswith(self.path) else Match.NONE), {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("served")(scope, receive, send)


async def test_a_metered_route_that_cannot_be_priced_is_refused_not_served(
    ledger: Ledger,
) -> None:
    app = Starlette(routes=[OpaqueRoute("/v1/"), OpaqueRoute("/public")])
    app.add_middleware(
        CreditMiddleware, provisioner=Provisioner(ledger), jwt_secret=SECRET, meter="/v1/*"
    )
    async with client(app) as c:
        r = await c.get("/v1/x", headers=bearer("opaque"))
        assert r.status_code == 500
        body = r.json()
        assert body["type"].endswith(":unpriced-route") and body["route"] == "/v1/"
        assert r.headers["content-type"] == "application/problem+json"
        assert (await c.get("/public")).text == "served"  # not metered: left alone
    assert await ledger.get_account("opaque") is None


async def test_host_routes_are_priced_per_host(ledger: Ledger) -> None:
    @priced("0.5")
    async def api(request: Request) -> JSONResponse:
        return JSONResponse({"host": "api"})

    async def site(request: Request) -> JSONResponse:
        return JSONResponse({"host": "site"})

    app = Starlette(
        routes=[Host("api.example.com", app=Router([Route("/x", api)])), Route("/x", site)]
    )
    app.add_middleware(
        CreditMiddleware, provisioner=Provisioner(ledger), jwt_secret=SECRET, meter="/v1/*"
    )
    async with client(app) as c:
        for _ in range(2):  # the second time from what was remembered
            r = await c.get("/x", headers={**bearer("host"), "Host": "api.example.com"})
            assert r.json() == {"host": "api"} and r.headers["credit-cost"] == "0.5"
            r = await c.get("/x", headers={"Host": "www.example.com"})
            assert r.json() == {"host": "site"} and "credit-cost" not in r.headers
    assert await balance(ledger, "host") == Decimal("4.0")


async def test_a_mounted_app_with_its_own_middleware_is_billed_once(ledger: Ledger) -> None:
    credits = Credits(provisioner=Provisioner(ledger), jwt_secret=SECRET)
    sub = sub_app()
    sub.add_middleware(CreditMiddleware, credits=credits)
    app = Starlette(routes=[Mount("/api", app=sub), Route("/v1/echo", echo)])
    app.add_middleware(CreditMiddleware, credits=credits)
    async with client(app) as c:
        r = await c.get("/api/v1/echo", headers=bearer("once"))
        assert r.status_code == 200 and r.headers["credit-cost"] == "0.001"
        r = await c.get("/v1/echo", headers=bearer("once"))
        assert r.headers["credit-cost"] == "0.001"
    assert await balance(ledger, "once") == Decimal("4.998")


def test_route_path_is_the_routers(monkeypatch: Any) -> None:
    from credit_middleware.pricing import routing as _routing

    cases = [
        ({"path": "/api/v1/x", "root_path": "/api"}, "/v1/x"),
        ({"path": "/v1/x", "root_path": "/api"}, "/v1/x"),
        ({"path": "/api", "root_path": "/api"}, ""),
        ({"path": "/v1/x", "root_path": ""}, "/v1/x"),
    ]
    for scope, expected in cases:
        assert _routing.route_path(scope) == expected
    monkeypatch.setattr(_routing, "_starlette_route_path", None)  # a Starlette without it
    for scope, expected in [*cases, ({"path": "/apix/y", "root_path": "/api"}, "/apix/y")]:
        assert _routing.route_path(scope) == expected
