"""Pricing: meter= meters only what it names, an exempt list that is extended (not replaced),
default_mode="exempt" that needs no credential, @priced routes read from the app, exempt
mounts, and the refusals documented in OpenAPI for priced FastAPI routes."""

from __future__ import annotations

from decimal import Decimal

import pytest
from _middleware_helpers import SECRET, balance, bearer, build_app, client
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from credit_middleware import (
    DEFAULT_EXEMPT,
    ConfigurationError,
    CreditMiddleware,
    Credits,
    Ledger,
    PricedRoute,
    Pricing,
    Provisioner,
    priced,
)

pytestmark = pytest.mark.anyio


def scope(path: str, method: str = "GET") -> dict[str, object]:
    return {"type": "http", "path": path, "method": method}


def test_nothing_named_meters_everything_but_the_exempt_list() -> None:
    p = Pricing()
    assert p.default_mode == "fixed"
    assert p.price(scope("/anything")) is not None
    for path in ("/docs", "/openapi.json", "/healthz", "/auth/jwt/login", "/auth/verify"):
        assert p.price(scope(path)) is None, path


def test_meter_names_what_is_metered_and_exempts_the_rest() -> None:
    p = Pricing(meter="/v1/*", routes=[PricedRoute("/v2/chat", cost="0.01")])
    assert p.default_mode == "exempt"
    price = p.price(scope("/v1/echo"))
    assert price is not None and price.micros == 1000
    chat = p.price(scope("/v2/chat"))
    assert chat is not None and chat.micros == 10_000  # routes price beside the meter
    assert p.price(scope("/users/me")) is None
    assert Pricing(meter=["/a/*", "/b"]).price(scope("/b")) is not None
    routes = Pricing(default_cost="0.25", routes=[PricedRoute("/v1/chat", cost="1")])
    assert routes.default_mode == "fixed"  # per-route prices next to a default for the rest
    unlisted = routes.price(scope("/elsewhere"))
    assert unlisted is not None and unlisted.micros == 250_000
    only = Pricing(routes=[PricedRoute("/v1/chat")], default_mode="exempt")
    assert only.price(scope("/elsewhere")) is None
    assert Pricing(meter="/v1/*", default_mode="fixed").price(scope("/x")) is not None


def test_exempt_adds_to_the_built_in_list_and_replacing_is_explicit() -> None:
    p = Pricing(exempt=["/public/*"])
    assert p.price(scope("/public/x")) is None
    assert p.price(scope("/docs")) is None  # the built-ins stay
    assert p.price(scope("/openapi.json")) is None
    replaced = Pricing(exempt=["/public/*"], default_exempt=())
    assert replaced.price(scope("/docs")) is not None
    assert "/docs" in DEFAULT_EXEMPT
    with pytest.raises(ConfigurationError):
        Pricing(exempt="/docs")  # a string is not a list of patterns
    with pytest.raises(ConfigurationError):
        Pricing(default_mode="free")  # type: ignore[arg-type]


def test_built_in_exempt_paths_beat_a_broad_meter() -> None:
    p = Pricing(meter="/*")
    assert p.price(scope("/docs")) is None
    assert p.price(scope("/api/x")) is not None


async def test_default_mode_exempt_needs_no_credential_and_bills_nothing(ledger: Ledger) -> None:
    app = build_app(
        provisioner=Provisioner(ledger),
        pricing=Pricing(routes=[PricedRoute("/v1/llm", mode="hold")], default_mode="exempt"),
    )
    async with client(app) as c:
        r = await c.get("/v1/echo")  # no token at all
        assert r.status_code == 200, r.text
        r = await c.get("/v1/echo", headers=bearer("free"))
        assert r.status_code == 200
        assert "credit-balance" not in r.headers
        assert (await c.get("/v1/llm")).status_code == 401  # what is listed still is metered
    assert await ledger.get_account("free") is None


async def test_priced_decorator_is_read_from_the_app(ledger: Ledger) -> None:
    @priced("0.01")
    async def paid(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def free(request: Request) -> PlainTextResponse:
        return PlainTextResponse("free")

    @priced(mode="exempt")
    async def public(request: Request) -> PlainTextResponse:
        return PlainTextResponse("public")

    app = Starlette(
        routes=[
            Route("/paid/{item}", paid),
            Route("/free", free),
            Route("/v1/public", public),
            Route("/v1/other", free),
        ]
    )
    app.add_middleware(
        CreditMiddleware, provisioner=Provisioner(ledger), jwt_secret=SECRET, meter="/v1/*"
    )
    async with client(app) as c:
        r = await c.get("/paid/7", headers=bearer("dec"))
        assert r.status_code == 200, r.text
        assert r.headers["credit-cost"] == "0.01"  # priced by its decorator, outside meter=
        assert (await c.get("/free")).status_code == 200  # neither metered nor priced
        assert (await c.get("/v1/public")).status_code == 200  # exempt by its decorator
        assert (await c.get("/v1/other")).status_code == 401  # metered by meter=
        assert (await c.get("/paid/8")).status_code == 401
    assert await balance(ledger, "dec") == Decimal("4.99")


def test_priced_refuses_a_bad_price_at_decoration() -> None:
    with pytest.raises(ConfigurationError):
        priced("-1")
    with pytest.raises(ConfigurationError):
        priced(mode="sometimes")  # type: ignore[arg-type]


async def test_an_app_marked_exempt_is_exempt_wherever_it_is_mounted(ledger: Ledger) -> None:
    async def inner(request: Request) -> PlainTextResponse:
        return PlainTextResponse("admin page")

    admin = Starlette(routes=[Route("/", inner), Route("/x", inner)])
    admin.billing_exempt = True  # type: ignore[attr-defined]  # as the admin app's guard is
    app = Starlette(routes=[Mount("/ops", app=admin), Route("/v1/x", inner)])
    app.add_middleware(CreditMiddleware, provisioner=Provisioner(ledger), jwt_secret=SECRET)
    async with client(app) as c:
        assert (await c.get("/ops/x", headers={"Authorization": "Bearer admin-token"})).text == (
            "admin page"
        )
        assert (await c.get("/ops/")).status_code == 200
        assert (await c.get("/v1/x")).status_code == 401  # everything else is still metered


async def test_credits_admin_mount_is_exempt_and_guarded(ledger: Ledger) -> None:
    from credit_middleware.admin import bearer_token_guard

    credits = Credits(provisioner=Provisioner(ledger), jwt_secret=SECRET, meter="/v1/*")
    admin = credits.admin(authorize=bearer_token_guard("t" * 32))
    app = Starlette(routes=[Mount("/admin", app=admin)])
    app.add_middleware(CreditMiddleware, credits=credits)
    async with client(app) as c:
        r = await c.get("/admin/api/verify", headers={"Authorization": "Bearer " + "t" * 32})
        assert r.status_code == 200, r.text  # the admin token is not read as a JWT
        assert (await c.get("/admin/api/verify")).status_code in (401, 403)


async def test_priced_fastapi_routes_document_their_refusals(ledger: Ledger) -> None:
    app = FastAPI()

    @app.get("/v1/echo")
    async def echo() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/v2/thing")
    @priced("0.5")
    async def thing() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/public")
    async def public() -> dict[str, str]:
        return {"ok": "yes"}

    credits = Credits(provisioner=Provisioner(ledger), jwt_secret=SECRET, meter="/v1/*")
    app.add_middleware(CreditMiddleware, credits=credits)
    async with client(app) as c:
        schema = (await c.get("/openapi.json")).json()
        r = await c.get("/v2/thing", headers=bearer("doc"))
        assert r.headers["credit-cost"] == "0.5"
    for path in ("/v1/echo", "/v2/thing"):
        responses = schema["paths"][path]["get"]["responses"]
        for status in ("401", "402", "429", "503"):
            assert "application/problem+json" in responses[status]["content"], (path, status)
        assert "200" in responses
    assert "402" not in schema["paths"]["/public"]["get"]["responses"]
