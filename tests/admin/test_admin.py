"""The admin API: guarded (401/403, learning nothing), validated, idempotent writes."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from credit_middleware import ConfigurationError, Ledger, Provisioner, TrialPolicy
from credit_middleware.admin import admin_app, bearer_token_guard
from credit_middleware.ops.metrics import RecentRefusals

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture
async def client(ledger: Ledger) -> Any:
    prov = Provisioner(ledger, TrialPolicy(amount=Decimal(5)))
    await prov.ensure_account("alice", layer="signup")
    await prov.ensure_account("org/team|bob", layer="request")
    async with _client(admin_app(ledger, authorize=bearer_token_guard(TOKEN))) as c:
        yield c


async def _entries(ledger: Ledger, account_id: str = "alice") -> int:
    return len(await ledger.history(account_id, limit=1000))


_ROUTES = [
    ("GET", "/"),
    ("GET", "/api/report"),
    ("GET", "/api/verify"),
    ("GET", "/api/refusals"),
    ("GET", "/api/accounts/alice"),
    ("GET", "/api/accounts/nobody/balance"),
    ("GET", "/api/accounts/alice/history"),
    ("POST", "/api/accounts/alice/grants"),
    ("POST", "/api/accounts/alice/adjustments"),
    ("GET", "/no/such/route"),
]


async def test_unauthorised_requests_get_401_or_403_and_learn_nothing(
    client: httpx.AsyncClient, ledger: Ledger
) -> None:
    before = await _entries(ledger)
    bodies: dict[int, set[bytes]] = {401: set(), 403: set()}
    for method, path in _ROUTES:
        body = {"amount": "100", "reason": "x", "idempotency_key": "k"}
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer wrong-token-0123456789abc"}, 403),
            ({"Authorization": f"Bearer {TOKEN}x"}, 403),
            ({"Authorization": f"Basic {TOKEN}"}, 403),
            ({"Authorization": ""}, 403),
        ):
            r = await client.request(method, path, headers=headers, json=body)
            assert r.status_code == status, (method, path, headers)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["cache-control"] == "no-store"
            bodies[status].add(r.content)
            if status == 401:
                assert r.headers["www-authenticate"] == "Bearer"
    # the same few bytes whatever the route: no hint of what exists
    assert bodies == {
        401: {b'{"type":"urn:credit-middleware:problem:unauthenticated",'
              b'"title":"Authentication required","status":401}'},
        403: {b'{"type":"urn:credit-middleware:problem:forbidden",'
              b'"title":"Forbidden","status":403}'},
    }  # fmt: skip
    assert await _entries(ledger) == before


async def test_nothing_is_open_by_default(ledger: Ledger) -> None:
    with pytest.raises(ConfigurationError, match="authorize"):
        admin_app(ledger)
    for weak in ("", "short", " " * 40):
        with pytest.raises(ConfigurationError, match="16 characters"):
            bearer_token_guard(weak)


async def test_a_failing_or_custom_guard(ledger: Ledger) -> None:
    async def broken(request: Request) -> bool:
        raise RuntimeError("identity provider down")

    async with _client(admin_app(ledger, authorize=broken)) as c:
        assert (await c.get("/api/verify")).status_code == 401
        assert (await c.get("/api/verify", headers=AUTH)).status_code == 403

    async def role(request: Request) -> bool:  # e.g. a role claim set by an auth middleware
        return request.headers.get("x-role") == "admin"

    async with _client(admin_app(ledger, authorize=role)) as c:
        assert (await c.get("/api/verify", headers={"X-Role": "admin"})).status_code == 200
        assert (await c.get("/api/verify", headers={"X-Role": "user"})).status_code == 401


async def test_lookup_balance_and_paged_history(client: httpx.AsyncClient, ledger: Ledger) -> None:
    r = await client.get("/api/accounts/alice", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["balance"] == "5"
    assert r.json()["metadata"]["provisioned_by"] == "signup"
    r = await client.get("/api/accounts/org/team|bob", headers=AUTH)  # ids may hold a slash
    assert r.json()["account_id"] == "org/team|bob"
    r = await client.get("/api/accounts/org/team|bob/balance", headers=AUTH)
    assert r.json()["available"] == "5"

    for i in range(5):
        await ledger.debit("alice", "0.5", key=f"req-{i}")
    r = await client.get("/api/accounts/alice/balance", headers=AUTH)
    assert r.json()["available"] == "2.5"
    assert [g["remaining"] for g in r.json()["grants"]] == ["2.5"]

    seen: list[int] = []
    cursor: int | None = None
    while True:
        params = {"limit": "2"} | ({"before": str(cursor)} if cursor else {})
        page = (await client.get("/api/accounts/alice/history", params=params, headers=AUTH)).json()
        seen += [e["entry_id"] for e in page["entries"]]
        cursor = page["next_before"]
        if cursor is None:
            break
    assert len(seen) == 6
    assert seen == sorted(seen, reverse=True)

    for path in ("/api/accounts/nobody", "/api/accounts/nobody/balance",
                 "/api/accounts/nobody/history"):  # fmt: skip
        r = await client.get(path, headers=AUTH)
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == "urn:credit-middleware:problem:account-not-found"


async def test_every_write_is_idempotent_and_lands_in_the_ledger(
    client: httpx.AsyncClient, ledger: Ledger
) -> None:
    debit = await ledger.debit("alice", "1")
    writes = [
        ("grants", {"amount": "2.5", "source": "promo", "expires_in_days": 30}, "grant"),
        ("refunds", {"amount": "0.5", "entry_id": debit.entry.entry_id}, "refund"),
        ("adjustments", {"amount": "-0.25", "reason": "double charge fixed"}, "adjust"),
        ("adjustments", {"amount": "1", "reason": "goodwill"}, "adjust"),
    ]
    for n, (action, body, kind) in enumerate(writes):
        key = {"Idempotency-Key": f"op-{n}"}
        first = await client.post(f"/api/accounts/alice/{action}", json=body, headers=AUTH | key)
        again = await client.post(f"/api/accounts/alice/{action}", json=body, headers=AUTH | key)
        assert first.status_code == 201, first.text
        assert again.status_code == 200
        assert first.json()["replayed"] is False
        assert again.json()["replayed"] is True
        assert again.json()["entry"]["entry_id"] == first.json()["entry"]["entry_id"]
        assert first.json()["entry"]["kind"] == kind
        assert first.json()["entry"]["layer"] == "admin"
        keyed = [e for e in await ledger.history("alice", limit=100) if e.key == f"admin:op-{n}"]
        assert len(keyed) == 1
    balance = await ledger.balance("alice")
    assert (
        balance.available
        == Decimal("5") - 1 + Decimal("2.5") + Decimal("0.5") - Decimal("0.25") + 1
    )

    # the key as a body field works too; reused for another amount it is a conflict
    body = {"amount": "1", "idempotency_key": "op-body"}
    assert (
        await client.post("/api/accounts/alice/grants", json=body, headers=AUTH)
    ).status_code == 201
    body["amount"] = "2"
    r = await client.post("/api/accounts/alice/grants", json=body, headers=AUTH)
    assert r.status_code == 409
    assert r.json()["type"].endswith("idempotency-conflict")
    # a negative adjustment larger than the balance moves nothing
    r = await client.post(
        "/api/accounts/alice/adjustments",
        json={"amount": "-1000", "reason": "oops"},
        headers=AUTH | {"Idempotency-Key": "too-much"},
    )
    assert r.status_code == 409
    assert r.json()["type"].endswith("insufficient-credits")
    assert (await ledger.verify()).ok


async def test_inputs_are_validated(client: httpx.AsyncClient, ledger: Ledger) -> None:
    before = await _entries(ledger)
    url = "/api/accounts/alice/grants"
    key = AUTH | {"Idempotency-Key": "k1"}
    cases: list[tuple[dict[str, Any], Any, int, str]] = [
        (AUTH, {"amount": "1"}, 428, "idempotency-key-required"),
        (key, {"amount": 1.5}, 400, "not a number"),
        (key, {"amount": 2}, 400, "not a number"),
        (key, {"amount": "NaN"}, 400, "finite"),
        (key, {"amount": "-3"}, 400, "positive"),
        (key, {"amount": "0.0000001"}, 400, "micro-credit"),
        (key, {"amount": "1e400"}, 400, "range"),
        (key, {"amount": "1", "source": "trial"}, 400, "source"),
        (key, {"amount": "1", "expires_in_days": 1.5}, 400, "expires_in_days"),
        (key, [1, 2], 400, "JSON object"),
        (key | {"Idempotency-Key": "a"}, {"amount": "1", "idempotency_key": "b"}, 400, "differ"),
        (AUTH | {"Idempotency-Key": "x" * 300}, {"amount": "1"}, 400, "255"),
        (AUTH | {"Idempotency-Key": "a\tb"}, {"amount": "1"}, 400, "control"),
    ]
    for headers, body, status, hint in cases:
        r = await client.post(url, json=body, headers=headers)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert hint in r.json()["type"] + r.json()["detail"], r.json()
    # adjustments need a reason; refunds against a non-charge are refused
    r = await client.post("/api/accounts/alice/adjustments", json={"amount": "1"}, headers=key)
    assert r.status_code == 400
    r = await client.post(
        url, content=b"{not json", headers=key | {"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    r = await client.post(
        url, content=b'{"amount": NaN}', headers=key | {"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    r = await client.post(url, content=b"amount=1", headers=key | {"Content-Type": "text/plain"})
    assert r.status_code == 415
    big = json.dumps({"amount": "1", "pad": "x" * 20_000})
    r = await client.post(url, content=big, headers=key | {"Content-Type": "application/json"})
    assert r.status_code == 413
    r = await client.post("/api/accounts/nobody/grants", json={"amount": "1"}, headers=key)
    assert r.status_code == 404
    for query in ("since=yesterday", "until=2026-13-01"):
        assert (await client.get(f"/api/report?{query}", headers=AUTH)).status_code == 400
    for query in ("limit=0", "limit=5000", "before=-1", "limit=abc"):
        r = await client.get(f"/api/accounts/alice/history?{query}", headers=AUTH)
        assert r.status_code == 400
    r = await client.get("/api/accounts/a%00b", headers=AUTH)
    assert r.status_code == 400
    r = await client.delete("/api/accounts/alice", headers=AUTH)
    assert r.status_code == 405
    assert await _entries(ledger) == before


async def test_verify_report_and_refusals(client: httpx.AsyncClient, ledger: Ledger) -> None:
    r = await client.get("/api/verify", headers=AUTH)
    assert r.json() == {"ok": True, "accounts": 2, "entries": 2, "discrepancies": []}
    await ledger.debit("alice", "1.25")
    r = await client.get("/api/report", params={"since": "2020-01-01"}, headers=AUTH)
    data = r.json()
    assert data["since"] == "2020-01-01T00:00:00+00:00"
    assert data["accounts"] == 2
    assert data["credits"]["consumed"] == "1.25"
    assert data["provisioned"] == {"request": 1, "signup": 1}
    r = await client.get("/api/report", params={"since": "2099-01-01"}, headers=AUTH)
    assert r.json()["accounts"] == 0
    r = await client.get("/api/refusals", headers=AUTH)
    assert r.json() == {"refusals": []}


async def test_the_dashboard_escapes_what_users_control(ledger: Ledger) -> None:
    prov = Provisioner(ledger, TrialPolicy())
    evil = '<script>alert("x")</script>'
    await prov.ensure_account(evil, layer="request")
    await ledger.debit(evil, "1")
    refusals = RecentRefusals()
    refusals.refused(402, "</td><img src=x>")
    app = admin_app(ledger, authorize=bearer_token_guard(TOKEN), refusals=refusals)
    async with _client(app) as c:
        r = await c.get("/", headers=AUTH)
        assert r.status_code == 200
        assert "<script>alert" not in r.text
        assert "<img src=x>" not in r.text
        assert "&lt;script&gt;alert" in r.text
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        data = await c.get("/api/refusals", headers=AUTH)
        assert data.json()["refusals"][0]["reason"] == "</td><img src=x>"
