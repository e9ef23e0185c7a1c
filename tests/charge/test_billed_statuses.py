"""Only what the app served is billed: its 404, 405, redirects and validation errors are
refunded (or their holds released); which statuses bill is an option. On both backends."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from _middleware_helpers import SECRET, balance, bearer, client
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route as StarletteRoute

from credit_middleware import Ledger, Provisioner
from credit_middleware.config import Billing
from credit_middleware.http.middleware import CreditMiddleware
from credit_middleware.pricing import Pricing, Route

pytestmark = pytest.mark.anyio


@pytest.fixture
def ledger_clock() -> Callable[[], float]:
    return time.time


class Item(BaseModel):
    name: str
    count: int


def fastapi_app(ledger: Ledger, **options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/items/")
    async def items() -> dict[str, int]:
        return {"n": 1}

    @app.post("/v1/items/")
    async def create(item: Item) -> Item:
        return item

    @app.get("/v1/costly")
    async def costly() -> dict[str, bool]:
        return {"ok": True}

    pricing = Pricing(default_cost="0.25", routes=[Route("/v1/costly", cost="1", methods=["GET"])])
    app.add_middleware(
        CreditMiddleware,
        jwt_secret=SECRET,
        provisioner=Provisioner(ledger),
        pricing=pricing,
        tiers={"trial": "1000/minute"},
        **options,
    )
    return app


async def test_answers_that_served_nothing_cost_nothing(ledger: Ledger) -> None:
    async with client(fastapi_app(ledger)) as c:
        served = await c.get("/v1/items/", headers=bearer("u"))
        not_found = await c.get("/v1/nothing-here", headers=bearer("u"))
        not_allowed = await c.delete("/v1/items/", headers=bearer("u"))
        redirect = await c.get("/v1/items", headers=bearer("u"))  # trailing slash: 307
        invalid = await c.post("/v1/items/", json={"name": "x"}, headers=bearer("u"))
    assert served.status_code == 200 and served.headers["credit-cost"] == "0.25"
    codes = [r.status_code for r in (not_found, not_allowed, redirect, invalid)]
    assert codes == [404, 405, 307, 422]
    for r in (not_found, not_allowed, invalid):
        assert r.headers["credit-cost"] == "0", r.status_code
    # the router's own trailing-slash redirect runs no endpoint: not metered at all
    assert "credit-cost" not in redirect.headers and "ratelimit" not in redirect.headers
    assert await balance(ledger, "u") == Decimal("4.75")
    kinds = [e.kind for e in await ledger.history("u")]
    assert kinds.count("debit") == 4 and kinds.count("refund") == 3


async def test_billable_statuses_are_an_option(ledger: Ledger) -> None:
    app = fastapi_app(ledger, billing=Billing(statuses=[*range(200, 300), 422]))
    async with client(app) as c:
        invalid = await c.post("/v1/items/", json={"name": "x"}, headers=bearer("u"))
        not_found = await c.get("/v1/nothing", headers=bearer("u"))
    assert invalid.headers["credit-cost"] == "0.25" and not_found.headers["credit-cost"] == "0"
    assert await balance(ledger, "u") == Decimal("4.75")


async def test_a_head_is_priced_like_its_get(ledger: Ledger) -> None:
    async def costly(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[StarletteRoute("/v1/costly", costly)])  # serves GET and HEAD
    pricing = Pricing(default_cost="0.25", routes=[Route("/v1/costly", cost="1", methods=["GET"])])
    app.add_middleware(
        CreditMiddleware, jwt_secret=SECRET, provisioner=Provisioner(ledger), pricing=pricing
    )
    async with client(app) as c:
        head = await c.head("/v1/costly", headers=bearer("u"))
    assert head.status_code == 200 and head.headers["credit-cost"] == "1"
    strict = Pricing(default_cost="0.25", routes=[Route("/x", cost="1", methods=["GET"])])
    scope = {"type": "http", "method": "HEAD", "path": "/x"}
    assert pricing.price({**scope, "path": "/v1/costly"}).micros == 1_000_000  # type: ignore[union-attr]
    loose = Pricing(default_cost="0.25", head_as_get=False, routes=strict_routes())
    assert loose.price(scope).micros == 250_000  # type: ignore[union-attr]
    assert strict.price(scope).micros == 1_000_000  # type: ignore[union-attr]


def strict_routes() -> list[Route]:
    return [Route("/x", cost="1", methods=["GET"])]


@pytest.mark.parametrize("statuses", [[], [99], [600]])
def test_bad_billable_statuses_are_refused_at_construction(statuses: list[int]) -> None:
    from credit_middleware.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="billing statuses"):
        CreditMiddleware(FastAPI(), jwt_secret=SECRET, billing=Billing(statuses=statuses))
