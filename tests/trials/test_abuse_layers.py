"""One trial policy, every layer: signup decorator, IdP webhook and the lazy middleware all
count against the same per-IP cap, and the refused user sees a 402 that says why."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
from _middleware_helpers import bearer, build_app
from _signup_helpers import trial_grants
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from credit_middleware import Identity, Ledger, Provisioner, TrialPolicy
from credit_middleware.trials.abuse import IP_TRIAL_LIMIT, TrialIpCap
from credit_middleware.trials.signup import provision_credits
from credit_middleware.trials.webhook import WebhookReceiver, sign

pytestmark = pytest.mark.anyio

IP = "198.51.100.77"
SECRET = "webhook-secret-0123456789abcdef"


def signup_app(prov: Provisioner) -> Starlette:
    @provision_credits(prov)
    async def register(request: Request) -> JSONResponse:
        return JSONResponse({"user_id": (await request.json())["user_id"]}, status_code=201)

    hook = WebhookReceiver(prov, secret=SECRET)
    return Starlette(
        routes=[
            Route("/auth/register", register, methods=["POST"]),
            Route("/hooks/idp", hook),
        ]
    )


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(IP, 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def deliver(c: httpx.AsyncClient, user_id: str) -> httpx.Response:
    event = {"type": "REGISTER", "userId": user_id, "realmId": "r", "ipAddress": IP}
    body = json.dumps(event).encode()
    ts = int(time.time())
    headers = {"x-credit-timestamp": str(ts), "x-credit-signature": sign(SECRET, body, ts)}
    return await c.post("/hooks/idp", content=body, headers=headers)


async def test_all_layers_share_one_cap_and_the_fourth_gets_a_402(ledger: Ledger) -> None:
    policy = TrialPolicy(checks=(TrialIpCap("3/day"),))
    # Separate provisioners (as in separate components) sharing one policy object.
    eager, lazy = Provisioner(ledger, policy), Provisioner(ledger, policy)
    async with client(signup_app(eager)) as c:
        assert (await c.post("/auth/register", json={"user_id": "l1"})).status_code == 201
        assert (await deliver(c, "l2")).json()["granted"] is True
    assert (await lazy.ensure_account(Identity("l3", client_ip=IP), layer="request")).granted
    for aid in ("l1", "l2", "l3"):
        assert (await ledger.balance(aid)).spendable == Decimal("5")

    api = build_app(provisioner=lazy)  # the middleware's lazy layer, same policy
    async with client(api) as c:
        r = await c.get("/v1/echo", headers=bearer("l4"))
    assert r.status_code == 402
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith(":trial-denied")
    assert r.json()["trial_denied"] == IP_TRIAL_LIMIT
    account = await ledger.get_account("l4")
    assert account is not None
    assert account.tier == "trial"
    assert account.metadata["trial_denied"] == IP_TRIAL_LIMIT
    assert await trial_grants(ledger, "l4") == 0


@pytest.mark.parametrize("layer", ["signup", "webhook", "request"])
async def test_each_layer_refuses_past_the_cap(ledger: Ledger, layer: str) -> None:
    prov = Provisioner(ledger, TrialPolicy(checks=(TrialIpCap("1/day"),)))
    await prov.ensure_account(Identity("first", client_ip=IP), layer="request")
    async with client(signup_app(prov)) as c:
        if layer == "signup":
            assert (await c.post("/auth/register", json={"user_id": "late"})).status_code == 201
        elif layer == "webhook":
            assert (await deliver(c, "late")).json()["status"] == "denied"
        else:
            await prov.ensure_account(Identity("late", client_ip=IP), layer="request")
    account = await ledger.get_account("late")
    assert account is not None
    assert account.metadata["trial_denied"] == IP_TRIAL_LIMIT
    assert (await ledger.balance("late")).spendable == 0
