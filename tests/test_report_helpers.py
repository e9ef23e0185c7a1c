"""A scripted operating session shared by the report, metrics, admin and dashboard tests.

Four users, each provisioned by a different layer (signup, request after a failed signup,
litellm, webhook), spending through the real middleware until one hits 402, one hits a rate
limit and an anonymous caller gets 401; then 31 days pass, a sweep expires what the trials had
left, and an operator refunds and sells credits through the admin API. The numbers every view
must show are in ``EXPECTED``. (No tests here; the module name only keeps it among ours.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import Scope

from credit_middleware import BackendUnavailable, Identity, Ledger, Provisioner, TrialPolicy
from credit_middleware.admin import admin_app, bearer_token_guard
from credit_middleware.http.middleware import CreditMiddleware
from credit_middleware.ops.metrics import PrometheusObserver, metrics_app
from credit_middleware.pricing import Pricing
from credit_middleware.pricing import Route as Priced

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# TrialPolicy.cohort_of puts alice and dave in "two", bob and carol in "one".
POLICY = TrialPolicy(amount=Decimal(1), cohorts={"one": Decimal(1), "two": Decimal(1)})

EXPECTED: dict[str, Any] = {
    "accounts": 4,
    "provisioned": {"litellm": 1, "request": 1, "signup": 1, "webhook": 1},
    "trials": {"litellm": 1, "request": 1, "signup": 1, "webhook": 1},
    "trials_denied": 0,
    "fallback": {"litellm": 1, "request": 1},
    "fallback_total": 2,
    "credits": {
        "granted": "14",
        "granted_by_source": {"purchase": "10", "trial": "4"},
        "consumed": "2.25",
        "expired": "1.75",
        "refunded": "0.25",
        "adjusted_out": "0",
    },
    "consumed_per_day": {"2027-01-15": "2.25"},
    "active_accounts": 4,
    "top_consumers": [
        {"account_id": "carol", "credits_used": "1"},
        {"account_id": "alice", "credits_used": "0.5"},
        {"account_id": "dave", "credits_used": "0.5"},
        {"account_id": "bob", "credits_used": "0.25"},
    ],
    "cohorts": [
        {
            "cohort": "one",
            "accounts": 2,
            "trials": 2,
            "credits_used": "1.25",
            "exhausted": 1,
            "purchased": 0,
            "exhausted_share": "0.5000",
            "purchased_share": "0.0000",
        },
        {
            "cohort": "two",
            "accounts": 2,
            "trials": 2,
            "credits_used": "1",
            "exhausted": 0,
            "purchased": 1,
            "exhausted_share": "0.0000",
            "purchased_share": "0.5000",
        },
    ],
}


class UserHeader:
    """Identity from an ``X-User`` header (the tests' stand-in for a verified token)."""

    async def resolve(self, scope: Scope) -> Identity | None:
        for name, value in scope.get("headers", ()):
            if name == b"x-user":
                return Identity(value.decode("ascii"), source="test")
        return None


class BrokenLocks:
    """A provisioning lock whose backend is down: the signup layer fails."""

    @asynccontextmanager
    async def acquire(self, account_id: str) -> AsyncIterator[None]:
        raise BackendUnavailable("redis", "down for the test")
        yield  # pragma: no cover


async def work(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@dataclass
class Session:
    ledger: Ledger
    observer: PrometheusObserver
    app: Starlette
    middleware_client: httpx.AsyncClient

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")


LIMITED = Priced("/api/limited", cost="0.5", limits="1/minute")


def build_app(ledger: Ledger, observer: PrometheusObserver) -> Starlette:
    """The example app's shape: metered API, /metrics and /admin (admin and metrics unpriced)."""
    provisioner = Provisioner(ledger, POLICY, observer=observer)
    api = Starlette(routes=[Route("/work", work), Route("/limited", work)])
    metered = CreditMiddleware(
        api,
        ledger=ledger,
        provisioner=provisioner,
        resolver=UserHeader(),
        pricing=Pricing(
            # the paths of the app it wraps (inside the mount's root_path)
            routes=[Priced("/limited", cost="0.5", limits="1/minute")],
            default_cost=Decimal("0.25"),
        ),
        observer=observer,
    )
    admin = admin_app(ledger, authorize=bearer_token_guard(ADMIN_TOKEN), refusals=observer)
    return Starlette(
        routes=[
            Route("/metrics", metrics_app(observer)),
            Mount("/admin", app=admin),
            Mount("/api", app=metered),
        ]
    )


async def run_session(ledger: Ledger, clock: Any) -> Session:
    observer = PrometheusObserver(clock=clock)
    app = build_app(ledger, observer)
    provisioner = Provisioner(ledger, POLICY, observer=observer)
    failing = Provisioner(ledger, POLICY, locks=BrokenLocks(), observer=observer)  # type: ignore[arg-type]

    await provisioner.ensure_account("alice", layer="signup")
    with contextlib.suppress(BackendUnavailable):  # registration goes on; a request catches bob
        await failing.ensure_account("bob", layer="signup")
    await provisioner.ensure_account("carol", layer="litellm")
    await provisioner.ensure_account("dave", layer="webhook")

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    statuses: list[int] = []
    for user, path, times in (
        ("alice", "/api/work", 2),
        ("bob", "/api/work", 1),  # lazily provisioned here
        ("carol", "/api/work", 5),  # 4 x 0.25 spends the trial, the 5th is refused: 402
        ("dave", "/api/limited", 2),  # 1/minute: the 2nd is refused: 429
    ):
        for _ in range(times):
            statuses.append((await client.get(path, headers={"X-User": user})).status_code)
    statuses.append((await client.get("/api/work")).status_code)  # no credentials: 401
    assert statuses == [200, 200, 200, 200, 200, 200, 200, 402, 200, 429, 401], statuses

    clock.advance(31 * 86_400)  # every trial (30 days) is over
    await ledger.sweep()

    carol = await ledger.history("carol", limit=10)
    debit = next(e for e in carol if e.kind == "debit")
    for _ in range(2):  # the same key twice: one refund, one sale
        r = await client.post(
            "/admin/api/accounts/carol/refunds",
            json={"amount": "0.25", "entry_id": debit.entry_id, "reason": "outage"},
            headers={**ADMIN, "Idempotency-Key": "refund-1"},
        )
        assert r.status_code in (200, 201), r.text
        r = await client.post(
            "/admin/api/accounts/alice/grants",
            json={"amount": "10", "source": "purchase", "idempotency_key": "order-1"},
            headers=ADMIN,
        )
        assert r.status_code in (200, 201), r.text
    return Session(ledger, observer, app, client)


def dashboard_numbers(data: dict[str, Any]) -> dict[str, str]:
    """The report's numbers under the ``data-k`` keys the dashboard shows them with."""
    out = {k: str(data[k]) for k in ("accounts", "active_accounts", "fallback_total")}
    out["trials_denied"] = str(data["trials_denied"])
    out.update({f"credits.{k}": v for k, v in data["credits"].items() if isinstance(v, str)})
    out.update({f"provisioned.{k}": str(v) for k, v in data["provisioned"].items()})
    out.update({f"trials.{k}": str(data["trials"].get(k, 0)) for k in data["provisioned"]})
    out.update({f"consumed_per_day.{k}": v for k, v in data["consumed_per_day"].items()})
    for c in data["cohorts"]:
        for k in ("accounts", "credits_used", "exhausted_share", "purchased_share"):
            out[f"cohorts.{c['cohort']}.{k}"] = str(c[k])
    return out
