"""The admin app at its edges: served before anything migrated the ledger (an app run without
its lifespan), ids too large for a 64-bit column, digits that are not ASCII; never a 500."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from credit_middleware import CreditMiddleware, Credits, Ledger, Provisioner, TrialPolicy
from credit_middleware.admin import admin_app

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _client(app: Any) -> httpx.AsyncClient:
    # httpx's ASGI transport runs no lifespan: the app as served with ``--lifespan off``
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _grant(c: httpx.AsyncClient, prefix: str, account: str) -> httpx.Response:
    return await c.post(
        f"{prefix}/api/accounts/{account}/grants",
        json={"amount": "2"},
        headers={**AUTH, "Idempotency-Key": "g1"},
    )


async def test_the_admin_app_works_before_anything_migrated(ledger_url: str) -> None:
    """A user's app, its lifespan never run: the admin API is the first thing used."""
    credits = Credits(database_url=ledger_url, meter="/v1/*", jwt_secret="x" * 32)
    app = FastAPI()
    app.mount("/admin", credits.admin(token=TOKEN))
    app.add_middleware(CreditMiddleware, credits=credits)
    try:
        async with _client(app) as c:
            r = await c.get("/admin/api/accounts/alice", headers=AUTH)
            assert r.status_code == 404, r.text
            assert r.json()["type"].endswith(":account-not-found")
            assert (await c.get("/admin/api/verify", headers=AUTH)).json()["ok"] is True
            assert (await c.get("/admin/", headers=AUTH)).status_code == 200
    finally:
        await credits.stop()
    async with Ledger(ledger_url) as ledger:
        assert await ledger.pending_migrations() == []


async def test_a_bare_admin_app_migrates_its_ledger_on_first_use(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)  # made, never migrated
    async with ledger, _client(admin_app(ledger, token=TOKEN)) as c:
        r = await c.get("/api/accounts/bob/balance", headers=AUTH)
        assert r.status_code == 404, r.text
        await ledger.open_account("bob")
        assert (await _grant(c, "", "bob")).status_code == 201
        assert (await ledger.balance("bob")).available == 2
        assert (await ledger.verify()).ok


async def test_an_unreachable_ledger_is_a_503_problem() -> None:
    credits = Credits(database_url="postgresql://postgres@127.0.0.1:1/none", timeout=0.5)
    try:
        async with _client(credits.admin(token=TOKEN)) as c:
            r = await c.get("/api/accounts/alice", headers=AUTH)
            assert r.status_code == 503
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["retry-after"]
            # unauthorised callers still learn nothing, and cost no database work
            assert (await c.get("/api/accounts/alice")).status_code == 401
    finally:
        await credits.stop()


@pytest.fixture
async def admin(ledger: Ledger) -> Any:
    await Provisioner(ledger, TrialPolicy(amount=Decimal(5))).ensure_account(
        "alice", layer="signup"
    )
    async with _client(admin_app(ledger, token=TOKEN)) as c:
        yield c


@pytest.mark.parametrize("entry_id", [2**63, 2**64, 10**30, 0, -1])
async def test_a_refund_against_an_impossible_entry_id_is_400(
    admin: httpx.AsyncClient, ledger: Ledger, entry_id: int
) -> None:
    before = await ledger.history("alice", limit=1000)
    r = await admin.post(
        "/api/accounts/alice/refunds",
        json={"amount": "1", "entry_id": entry_id},
        headers={**AUTH, "Idempotency-Key": "r1"},
    )
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "entry_id" in r.json()["detail"]
    assert await ledger.history("alice", limit=1000) == before


async def test_the_largest_entry_id_is_valid_and_names_no_charge(
    admin: httpx.AsyncClient, ledger: Ledger
) -> None:
    """2**63 - 1 fits the 64-bit id columns: not bad input, just no charge of the account's."""
    before = await ledger.history("alice", limit=1000)
    r = await admin.post(
        "/api/accounts/alice/refunds",
        json={"amount": "1", "entry_id": 2**63 - 1},
        headers={**AUTH, "Idempotency-Key": "r1"},
    )
    assert r.status_code == 409, r.text
    assert "is not a charge" in r.json()["detail"]
    assert await ledger.history("alice", limit=1000) == before


@pytest.mark.parametrize("query", ["before=9223372036854775808", "before=%C2%B2", "limit=%C2%B9"])
async def test_paging_past_64_bits_or_with_odd_digits_is_400(
    admin: httpx.AsyncClient, query: str
) -> None:
    r = await admin.get(f"/api/accounts/alice/history?{query}", headers=AUTH)
    assert r.status_code == 400, r.text
    assert "whole number" in r.json()["detail"]


@pytest.mark.parametrize("ident", [2**63, 2**64])
async def test_the_ledger_refuses_ids_past_64_bits(ledger: Ledger, ident: int) -> None:
    """What the CLI and code reach too: a ValueError, not a driver's overflow."""
    await ledger.open_account("carol")
    with pytest.raises(ValueError, match="entry_id"):
        await ledger.refund("carol", "1", entry_id=ident)
    with pytest.raises(ValueError, match="before"):
        await ledger.history("carol", before=ident)
    with pytest.raises(ValueError, match="hold_id"):
        await ledger.capture(ident, "1")
