"""Signup behind a reverse proxy: the per-IP trial cap counts the client's address (from the
trusted proxy's X-Forwarded-For), not the proxy's; and ``credits.provision`` for generated
routers (fastapi-users' ``on_after_register``) gets the same address from the request."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from _middleware_helpers import client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from credit_middleware import (
    Credits,
    Ledger,
    Provisioner,
    TrialIpCap,
    TrialPolicy,
    provision_credits,
)

pytestmark = pytest.mark.anyio
PROXY = "10.0.0.1"


def signup_app(credits: Credits) -> Starlette:
    @provision_credits(credits)
    async def register(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"id": body["id"]}, status_code=201)

    return Starlette(routes=[Route("/auth/register", register, methods=["POST"])])


async def trial_of(ledger: Ledger, account: str) -> Decimal:
    return (await ledger.balance(account)).available


@pytest.mark.parametrize("trusted", [True, False])
async def test_trial_cap_counts_the_client_behind_a_trusted_proxy(
    ledger: Ledger, trusted: bool
) -> None:
    policy = TrialPolicy(checks=(TrialIpCap("1/day"),))
    credits = Credits(
        provisioner=Provisioner(ledger, policy),
        trusted_proxies=[PROXY] if trusted else [],
        signup={"budget": 5.0},
    )
    async with credits, client(signup_app(credits), ip=PROXY) as c:
        for n, who in enumerate(("203.0.113.7", "198.51.100.9")):
            r = await c.post(
                "/auth/register", json={"id": f"u{n}"}, headers={"X-Forwarded-For": who}
            )
            assert r.status_code == 201
    expected = [Decimal(5), Decimal(5)] if trusted else [Decimal(5), Decimal(0)]
    assert [await trial_of(ledger, f"u{n}") for n in range(2)] == expected


async def test_a_client_cannot_forge_its_way_past_the_cap(ledger: Ledger) -> None:
    policy = TrialPolicy(checks=(TrialIpCap("1/day"),))
    credits = Credits(
        provisioner=Provisioner(ledger, policy), trusted_proxies=[PROXY], signup={"budget": 5.0}
    )
    async with credits, client(signup_app(credits), ip="203.0.113.7") as c:  # no proxy here
        for n, forged in enumerate(("1.1.1.1", "2.2.2.2")):
            await c.post(
                "/auth/register", json={"id": f"f{n}"}, headers={"X-Forwarded-For": forged}
            )
    assert [await trial_of(ledger, f"f{n}") for n in range(2)] == [Decimal(5), Decimal(0)]


async def test_provision_from_a_hook_reads_the_client_through_the_proxy(ledger: Ledger) -> None:
    policy = TrialPolicy(checks=(TrialIpCap("1/day"),))
    credits = Credits(
        provisioner=Provisioner(ledger, policy), trusted_proxies=[PROXY], signup={"budget": 5.0}
    )
    ids = [uuid.uuid4(), uuid.uuid4(), uuid.uuid4()]

    async def on_after_register(request: Request) -> JSONResponse:  # like fastapi-users' hook
        n = int(request.query_params["n"])
        await credits.provision(ids[n], email=f"u{n}@example.com", request=request)
        return JSONResponse({}, status_code=201)

    app = Starlette(routes=[Route("/r", on_after_register, methods=["POST"])])
    async with credits, client(app, ip=PROXY) as c:
        for n, who in enumerate(("203.0.113.7", "198.51.100.9", "203.0.113.7")):
            await c.post(f"/r?n={n}", headers={"X-Forwarded-For": who})
    assert [await trial_of(ledger, str(u)) for u in ids] == [Decimal(5), Decimal(5), Decimal(0)]
