"""CreditMiddleware through ASGI transport, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest
from _middleware_helpers import (
    SECRET,
    Recorder,
    balance,
    bearer,
    build_app,
    client,
    trial_grants,
)

from credit_middleware import Ledger, Provisioner, TrialPolicy
from credit_middleware.config import Billing, Headers
from credit_middleware.pricing import Pricing, Route

pytestmark = pytest.mark.anyio


@pytest.fixture
def ledger_clock() -> Callable[[], float]:
    return time.time  # the middleware reads the wall clock too (tokens, rate-limit windows)


def app_for(ledger: Ledger, **options: Any) -> Any:
    policy = options.pop("policy", None)
    return build_app(provisioner=Provisioner(ledger, policy), **options)


async def test_first_call_of_an_idp_only_user_is_billed_once(ledger: Ledger) -> None:
    async with client(app_for(ledger)) as c:
        r = await c.get("/v1/echo", headers=bearer("idp-only"))
    assert r.status_code == 200, r.text
    assert r.json() == {"account": "idp-only", "tier": "trial", "cost": "0.001", "balance": "4.999"}
    assert r.headers["credit-balance"] == "4.999"
    assert await balance(ledger, "idp-only") == Decimal("4.999")
    assert await trial_grants(ledger, "idp-only") == 1


async def test_100_concurrent_first_calls_make_one_account_one_grant(ledger: Ledger) -> None:
    app = app_for(ledger, tiers={"trial": "1000/minute"})
    async with client(app) as c:
        rs = await asyncio.gather(*(c.get("/v1/echo", headers=bearer("herd")) for _ in range(100)))
    assert [r.status_code for r in rs] == [200] * 100
    assert await trial_grants(ledger, "herd") == 1
    assert await balance(ledger, "herd") == Decimal("5.0") - 100 * Decimal("0.001")


async def test_spending_to_the_end_gives_402_problem(ledger: Ledger) -> None:
    app = app_for(ledger, policy=TrialPolicy(amount=Decimal("0.003")))
    async with client(app) as c:
        codes = [(await c.get("/v1/echo", headers=bearer("spender"))).status_code for _ in range(3)]
        r = await c.get("/v1/echo", headers=bearer("spender"))
    assert codes == [200, 200, 200]
    assert r.status_code == 402
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"].endswith(":insufficient-credits")
    assert (body["required"], body["available"], body["tier"]) == ("0.001", "0", "trial")
    assert await balance(ledger, "spender") == 0


async def test_denied_trial_says_why(ledger: Ledger) -> None:
    app = app_for(ledger, policy=TrialPolicy(require_verified_email=True))
    async with client(app) as c:
        r = await c.get("/v1/echo", headers=bearer("unverified", email_verified=False))
    assert r.status_code == 402
    assert r.json()["type"].endswith(":trial-denied")
    assert r.json()["trial_denied"]


async def test_tier_limit_gives_429_with_fields(ledger: Ledger) -> None:
    rec = Recorder()
    app = app_for(
        ledger, tiers={"trial": "3/minute"}, observer=rec, headers=Headers(legacy_rate_limit=True)
    )
    async with client(app) as c:
        ok = [await c.get("/v1/echo", headers=bearer("busy")) for _ in range(3)]
        r = await c.get("/v1/echo", headers=bearer("busy"))
    assert [x.status_code for x in ok] == [200] * 3
    assert ok[0].headers["ratelimit-policy"] == '"3-per-minute";q=3;w=60'
    assert ok[2].headers["ratelimit"].startswith('"3-per-minute";r=0;t=')
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["ratelimit"] == f'"3-per-minute";r=0;t={r.headers["retry-after"]}'
    assert r.headers["x-ratelimit-remaining"] == "0"
    body = r.json()
    assert body["type"].endswith(":rate-limited")
    assert body["retry_after"] == int(r.headers["retry-after"])
    assert body["tier"] == "trial"
    assert (429, "rate_limited") in rec.of("refused")
    assert await balance(ledger, "busy") == Decimal("4.997")


async def test_route_limits_and_modes(ledger: Ledger) -> None:
    pricing = Pricing(
        routes=[
            Route("/v1/llm", mode="hold", cost="0.01"),
            Route("/v1/self", mode="handler", limits="1/minute"),
            Route("/v1/echo", methods=["POST"], cost=lambda conn: "0.0000015"),
        ]
    )
    async with client(app_for(ledger, pricing=pricing)) as c:
        r = await c.get("/v1/llm", params={"cost": "0.0025"}, headers=bearer("m"))
        assert r.status_code == 200
        assert r.headers["credit-cost"] == "0.0025"
        assert await balance(ledger, "m") == Decimal("4.9975")
        r = await c.get("/v1/self", headers=bearer("m"))
        assert r.status_code == 200
        assert "credit-balance" not in r.headers
        assert r.json()["account"] == "m"
        assert (await c.get("/v1/self", headers=bearer("m"))).status_code == 429
        r = await c.post("/v1/echo", headers=bearer("m"))  # 1.5 µc rounds up to 2
        assert r.headers["credit-cost"] == "0.000002"
        assert (await c.get("/healthz")).status_code == 200
    assert await balance(ledger, "m") == Decimal("4.997498")


async def test_server_errors_are_not_billed(ledger: Ledger) -> None:
    pricing = Pricing(routes=[Route("/v1/llm", mode="hold", cost="0.01")])
    async with client(app_for(ledger, pricing=pricing)) as c:
        await c.get("/v1/echo", headers=bearer("e"))
        r = await c.get("/v1/boom", headers=bearer("e"))
        assert r.status_code == 503
        assert r.headers["credit-balance"] == "4.999"
    assert await balance(ledger, "e") == Decimal("4.999")
    assert not await ledger.holds("e")


async def test_held_route_failing_releases_its_hold(ledger: Ledger) -> None:
    rec = Recorder()
    pricing = Pricing(routes=[Route("/v1/boom", mode="hold", cost="0.5")])
    async with client(app_for(ledger, pricing=pricing, observer=rec)) as c:
        r = await c.get("/v1/boom", headers=bearer("h"))
    assert r.status_code == 503
    assert r.headers["credit-balance"] == "5"
    assert not await ledger.holds("h")
    assert ("release", "ok") in rec.of("ledger_op")
    assert rec.of("overhead")
    no_refund = app_for(ledger, billing=Billing(statuses=[*range(200, 300), *range(500, 600)]))
    async with client(no_refund) as c:
        assert (await c.get("/v1/boom", headers=bearer("h2"))).status_code == 503
    assert await balance(ledger, "h2") == Decimal("4.999")


async def test_idempotency_key_bills_once(ledger: Ledger) -> None:
    async with client(app_for(ledger)) as c:
        headers = {**bearer("idem"), "Idempotency-Key": "req-42"}
        rs = [await c.get("/v1/echo", headers=headers) for _ in range(3)]
        assert [r.status_code for r in rs] == [200] * 3
        other = await c.get("/v1/echo", headers={**bearer("idem2"), "Idempotency-Key": "req-42"})
        assert other.status_code == 200
        for bad in ("", "a" * 201, "has space", "tab\there"):
            r = await c.get("/v1/echo", headers={**bearer("idem"), "Idempotency-Key": bad})
            assert r.status_code == 400, bad
    assert await balance(ledger, "idem") == Decimal("4.999")
    assert await balance(ledger, "idem2") == Decimal("4.999")


async def test_state_and_passthrough(ledger: Ledger) -> None:
    app = app_for(ledger, pricing=Pricing(default_cost="0"))
    async with client(app) as c:
        r = await c.get("/v1/echo", headers=bearer("free"))
    assert r.status_code == 200
    assert r.json()["account"] == "free"
    assert await ledger.get_account("free") is None  # a free call needs no account


async def test_two_middlewares_in_one_process_do_not_share_state(ledger: Ledger) -> None:
    a = app_for(ledger, tiers={"trial": "1/minute"})
    b = app_for(ledger, tiers={"trial": "1/minute"})
    async with client(a) as ca, client(b) as cb:
        assert (await ca.get("/v1/echo", headers=bearer("two"))).status_code == 200
        assert (await cb.get("/v1/echo", headers=bearer("two"))).status_code == 200
        assert (await ca.get("/v1/echo", headers=bearer("two"))).status_code == 429


async def test_starlette_authentication_middleware_user(ledger: Ledger) -> None:
    from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.requests import HTTPConnection

    class Session(AuthenticationBackend):
        async def authenticate(
            self, conn: HTTPConnection
        ) -> tuple[AuthCredentials, SimpleUser] | None:
            name = conn.headers.get("x-session")
            return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None

    app = app_for(ledger)
    app.add_middleware(AuthenticationMiddleware, backend=Session())  # outermost: runs first
    async with client(app) as c:
        r = await c.get("/v1/echo", headers={"X-Session": "cookie-user"})
        assert r.status_code == 200, r.text
        assert r.json()["account"] == "cookie-user"
        assert (await c.get("/v1/echo")).status_code == 401
    assert await balance(ledger, "cookie-user") == Decimal("4.999")


async def test_lifespan_passes_through_and_a_websocket_without_credential_is_refused(
    ledger: Ledger,
) -> None:
    seen: list[str] = []
    sent: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    from credit_middleware.http.middleware import CreditMiddleware

    mw = CreditMiddleware(inner, provisioner=Provisioner(ledger))

    async def receive() -> Any:
        return {}

    async def send(message: Any) -> None:
        sent.append(message)

    await mw({"type": "websocket", "path": "/v1/echo", "headers": []}, receive, send)
    await mw({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]  # the socket never reached the app
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "401"}]


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[None]:
    """Run an ASGI app's lifespan around the block, as a server does."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "lifespan.shutdown.complete"
        await asyncio.wait_for(task, 10)


async def test_an_app_restarted_in_the_same_process_keeps_billing(ledger_url: str) -> None:
    """The middleware closes the ledger it built at lifespan shutdown; a second lifespan on the
    same app object (test clients, reloads) must find it usable again, not a 503."""
    app = build_app(database_url=ledger_url)
    for round_ in range(2):
        async with serving(app), client(app) as c:
            r = await c.get("/v1/echo", headers=bearer("restarted"))
            assert r.status_code == 200, (round_, r.text)
    async with Ledger(ledger_url) as led:
        assert await balance(led, "restarted") == Decimal("4.998")
        assert (await led.verify()).ok


async def test_our_fields_replace_an_apps_own_of_the_same_name(ledger: Ledger) -> None:
    """A response carries each of our fields once, ours: an app's own ``Credit-Cost`` or
    ``RateLimit`` (copied from an upstream, say) gives way; its other fields stay."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route as StarletteRoute

    from credit_middleware.http.middleware import CreditMiddleware

    async def upstream(request: Any) -> PlainTextResponse:
        return PlainTextResponse(
            "ok",
            headers={"Credit-Cost": "99", "RateLimit": "upstream", "X-Upstream": "kept"},
        )

    app = Starlette(routes=[StarletteRoute("/v1/up", upstream)])
    app.add_middleware(CreditMiddleware, provisioner=Provisioner(ledger), jwt_secret=SECRET)
    async with client(app) as c:
        r = await c.get("/v1/up", headers=bearer("fields"))
    assert r.status_code == 200
    raw = [(k.decode().lower(), v.decode()) for k, v in r.headers.raw]
    assert [v for k, v in raw if k == "credit-cost"] == ["0.001"]
    assert len([v for k, v in raw if k == "ratelimit"]) == 1
    assert dict(raw)["ratelimit"].startswith('"')
    assert dict(raw)["x-upstream"] == "kept"
    assert len([v for k, v in raw if k == "credit-charge-id"]) == 1
