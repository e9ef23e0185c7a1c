"""The admin app's account search, account page, usage per route, CSV exports, and its tier and
purchase endpoints: validated, idempotent, audited, nothing written on bad input."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import httpx
import pytest

from credit_middleware import Ledger, Provisioner, TrialPolicy
from credit_middleware.admin import admin_app
from credit_middleware.identity import Identity

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH)


@pytest.fixture
async def seeded(ledger: Ledger) -> Ledger:
    prov = Provisioner(ledger, TrialPolicy(amount=Decimal(5)))
    await prov.ensure_account(Identity("org-1|alice", email="Alice@Example.com"), layer="signup")
    await ledger.open_account("org-1|bob", tier="trial", metadata={"email": "Bob@Corp.test"})
    await ledger.open_account("org-2|=cmd", tier="trial")
    await ledger.grant("org-1|bob", "3", source="promo", key="p1")
    for i in range(3):
        await ledger.debit("org-1|alice", "0.5", key=f"c{i}", route="/v1/chat")
    d = await ledger.debit("org-1|alice", "0.25", key="e1", route="/v1/embed")
    await ledger.refund("org-1|alice", "0.25", entry_id=d.entry.entry_id, key="r1")
    await ledger.debit("org-1|bob", "1", key="b1", route="/v1/chat")
    await ledger.hold("org-1|bob", "0.5", key="h1")
    return ledger


async def test_search_by_id_prefix_email_and_domain(seeded: Ledger) -> None:
    async def ids(q: str) -> list[str]:
        async with _client(admin_app(seeded, token=TOKEN)) as c:
            r = await c.get("/api/accounts", params={"q": q})
        assert r.status_code == 200, r.text
        return sorted(a["account_id"] for a in r.json()["accounts"])

    assert await ids("org-1|") == ["org-1|alice", "org-1|bob"]
    assert await ids("ORG-1|") == []  # ids are case-sensitive
    assert await ids("org-1|b") == ["org-1|bob"]
    assert await ids("bob@corp.test") == ["org-1|bob"]  # e-mails are not
    assert await ids("@example.com") == ["org-1|alice"]  # the provisioner keeps the domain
    assert await ids("@corp.test") == ["org-1|bob"]
    assert await ids("%") == [] and await ids("_") == []  # no wildcards
    assert len(await ids("")) == 3
    async with _client(admin_app(seeded, token=TOKEN)) as c:
        assert (await c.get("/api/accounts", params={"q": "a\x00"})).status_code == 400
        assert (await c.get("/api/accounts", params={"q": "a" * 300})).status_code == 400
        page = await c.get("/accounts", params={"q": "org-1|"})
    assert page.status_code == 200 and "org-1|bob" in page.text and "Bob@Corp.test" in page.text


async def test_the_account_page_shows_balance_grants_holds_history_and_tier(
    seeded: Ledger,
) -> None:
    async with _client(admin_app(seeded, token=TOKEN, tiers=["trial", "pro"])) as c:
        r = await c.get("/account", params={"id": "org-1|bob"})
        missing = await c.get("/account", params={"id": "nobody"})
        bad = await c.get("/account", params={"id": "x\x00"})
    assert r.status_code == 200
    html = r.text
    for expected in (
        'data-k="available">1.5<',
        'data-k="spendable">2<',
        'data-k="held">0.5<',
        'data-k="tier">trial<',
        "promo",
        "/v1/chat",
        '<option value="pro">pro</option>',
        'id="tier-form"',
        "export/history.csv?id=org-1%7Cbob",
    ):
        assert expected in html, expected
    assert 'name="csrf"' not in html  # a bearer request has no session to protect
    assert missing.status_code == 404 and "no such account" in missing.text
    assert bad.status_code == 400
    assert "text/html" in missing.headers["content-type"]


async def test_history_pages_on_the_account_page(ledger: Ledger) -> None:
    await ledger.open_account("a", tier="trial")
    await ledger.grant("a", "100", key="g")
    for i in range(60):
        await ledger.debit("a", "0.001", key=f"d{i}")
    async with _client(admin_app(ledger, token=TOKEN)) as c:
        first = await c.get("/account", params={"id": "a"})
        assert "Older entries" in first.text
        entries = await ledger.history("a", limit=50)
        older = await c.get("/account", params={"id": "a", "before": entries[-1].entry_id})
    assert older.status_code == 200
    assert f">{entries[-1].entry_id - 1}<" in older.text and "Older entries" not in older.text


async def test_usage_per_route_counts_charges_and_refunds(seeded: Ledger) -> None:
    async with _client(admin_app(seeded, token=TOKEN)) as c:
        api = (await c.get("/api/usage")).json()["routes"]
        one = (await c.get("/api/usage", params={"account_id": "org-1|bob"})).json()["routes"]
        page = await c.get("/usage")
        csv_r = await c.get("/export/usage.csv")
    by_route = {u["route"]: u for u in api}
    assert by_route["/v1/chat"] == {
        "route": "/v1/chat",
        "calls": 4,
        "charged": "2.5",
        "refunded": "0",
        "net": "2.5",
    }
    assert by_route["/v1/embed"]["refunded"] == "0.25" and by_route["/v1/embed"]["net"] == "0"
    assert [u["charged"] for u in one] == ["1"]
    assert 'data-k="usage./v1/chat.charged">2.5<' in page.text
    rows = list(csv.reader(io.StringIO(csv_r.text)))
    assert rows[0] == ["route", "calls", "charged", "refunded", "net"]
    assert ["/v1/chat", "4", "2.5", "0", "2.5"] in rows
    assert csv_r.headers["content-disposition"] == 'attachment; filename="usage.csv"'


async def test_csv_exports_are_complete_and_safe_in_spreadsheets(ledger: Ledger) -> None:
    await ledger.open_account("=HYPERLINK(1)", tier="trial")
    await ledger.grant("=HYPERLINK(1)", "100", key="g")
    for i in range(1004):  # more than one page of the ledger's history
        await ledger.debit("=HYPERLINK(1)", "0.001", key=f"d{i}", route="=cmd|' /C calc'!A0")
    async with _client(admin_app(ledger, token=TOKEN)) as c:
        r = await c.get("/export/history.csv", params={"id": "=HYPERLINK(1)"})
        accounts = await c.get("/export/accounts.csv")
        missing = await c.get("/export/history.csv", params={"id": "nobody"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 1005
    assert len({row["entry_id"] for row in rows}) == 1005
    assert rows[0]["kind"] == "debit" and rows[0]["amount"] == "0.001"
    assert rows[0]["delta"] == "-0.001" and rows[-1]["kind"] == "grant"
    assert rows[0]["route"].startswith("'=")  # not a formula
    assert "'=HYPERLINK(1)" in accounts.text
    assert missing.status_code == 404


async def test_tier_and_purchase_endpoints(seeded: Ledger) -> None:
    app = admin_app(seeded, token=TOKEN, tiers=["trial", "pro", "team"])
    async with _client(app) as c:
        url = "/api/accounts/org-1|bob"
        r = await c.post(
            f"{url}/tier",
            json={"tier": "pro", "reason": "support"},
            headers={"Idempotency-Key": "t1"},
        )
        assert r.status_code == 201 and (r.json()["old_tier"], r.json()["new_tier"]) == (
            "trial",
            "pro",
        )
        again = await c.post(f"{url}/tier", json={"tier": "pro"}, headers={"Idempotency-Key": "t1"})
        assert again.status_code == 200 and again.json()["replayed"] is True
        conflict = await c.post(
            f"{url}/tier", json={"tier": "team"}, headers={"Idempotency-Key": "t1"}
        )
        assert conflict.status_code == 409
        body = {
            "amount": "20",
            "tier": "team",
            "expires_in_days": 365,
            "idempotency_key": "order-1",
        }
        bought = await c.post(f"{url}/purchases", json=body)
        assert bought.status_code == 201, bought.text
        assert bought.json()["tier_change"]["new_tier"] == "team"
        assert bought.json()["available"] == "21.5"
        replay = await c.post(f"{url}/purchases", json=body)
        assert replay.status_code == 200 and replay.json()["replayed"] is True
        history = (await c.get(f"{url}/tiers")).json()["changes"]
        lookup = (await c.get(url)).json()
    assert [h["new_tier"] for h in history] == ["team", "pro"]
    assert lookup["tier"] == "team"
    assert (await seeded.balance("org-1|bob")).available == Decimal("21.5")


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("org-1|bob/tier", {"tier": "gold"}, 400),  # not a configured tier
        ("org-1|bob/tier", {"tier": ""}, 400),
        ("org-1|bob/tier", {"tier": 5}, 400),
        ("org-1|bob/tier", {"tier": "pro", "reason": ""}, 400),
        ("org-1|bob/tier", {"tier": "pro", "idempotency_key": None}, 428),
        ("nobody/tier", {"tier": "pro"}, 404),
        ("org-1|bob/purchases", {"amount": 20, "tier": "pro"}, 400),  # a float-able number
        ("org-1|bob/purchases", {"amount": "-1", "tier": "pro"}, 400),
        ("org-1|bob/purchases", {"amount": "1", "tier": "gold"}, 400),
        ("org-1|bob/purchases", {"amount": "1", "expires_in_days": 0}, 400),
        ("nobody/purchases", {"amount": "1", "tier": "pro"}, 404),
    ],
)
async def test_bad_tier_or_purchase_requests_write_nothing(
    seeded: Ledger, path: str, body: dict[str, Any], status: int
) -> None:
    async def state() -> tuple[Any, ...]:
        account = await seeded.get_account("org-1|bob")
        assert account is not None
        events = await seeded.tier_history("org-1|bob")
        return account.tier, account.balance_micros, len(await seeded.history("org-1|bob")), events

    before = await state()
    body = {"idempotency_key": "k1", **body}
    if body["idempotency_key"] is None:
        del body["idempotency_key"]
    async with _client(admin_app(seeded, token=TOKEN, tiers=["trial", "pro"])) as c:
        r = await c.post(f"/api/accounts/{path}", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert await state() == before
