"""fastapi-users' example app with credit-middleware adopted (examples/fastapi_users_app.py),
with the real fastapi-users package, served by uvicorn: registration, login, password reset
and verification work without credits, /v1/echo is metered to the end (402) and rate limited
(429), the docs are unbilled, and a tier upgrade lifts the limit; on SQLite and PG + Redis."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from _middleware_helpers import middleware_of, serve

from credit_middleware import Ledger

pytest.importorskip("fastapi_users")
from examples import fastapi_users_app

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
SECRET = "fastapi-users-test-secret-0123456789abcdef"
REDIS_URL = os.environ.get("CREDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PASSWORD = "correct horse battery staple"


@pytest.fixture(params=["embedded", "postgres+redis"])
def environ(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    env = {
        "CREDIT_JWT_SECRET": SECRET,
        "CREDIT_TRIAL_AMOUNT": "0.003",
        "CREDIT_TIERS": '{"trial": "5/minute", "pro": "100/minute"}',
        "CREDIT_ADMIN_TOKEN": "admin-" + "t" * 32,
        "USERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'users.db'}",
    }
    if request.param == "embedded":
        env["CREDIT_DATABASE_URL"] = request.getfixturevalue("sqlite_url")
    else:
        env["CREDIT_DATABASE_URL"] = request.getfixturevalue("pg_url")
        env["CREDIT_REDIS_URL"] = REDIS_URL
        env["CREDIT_KEY_PREFIX"] = request.getfixturevalue("redis_client").test_prefix
    return env


async def _trial(ledger: Ledger, account: str) -> Decimal:
    """The trial given at signup (eagerly; its budget may run out on a loaded machine and the
    grant then lands moments later, in the background)."""
    for _ in range(200):
        if await ledger.get_account(account) is not None:
            return (await ledger.balance(account)).available
        await asyncio.sleep(0.05)
    raise AssertionError("the signup never provisioned the account")


async def _login(c: httpx.AsyncClient, email: str, password: str) -> dict[str, str]:
    r = await c.post("/auth/jwt/login", data={"username": email, "password": password})
    assert r.status_code == 200, r.text
    assert "credit-balance" not in r.headers
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_adopted_in_the_fastapi_users_example(environ: dict[str, str]) -> None:
    app = fastapi_users_app.create_app(environ=environ)
    ledger = Ledger(environ["CREDIT_DATABASE_URL"])
    try:
        with serve(app) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                await _journey(c, app, ledger)
        report = await ledger.verify()
        assert report.ok, report.discrepancies
    finally:
        await ledger.close()


async def _journey(c: httpx.AsyncClient, app: Any, ledger: Ledger) -> None:
    # the docs: no credential, no charge, the metered route's refusals documented
    assert (await c.get("/docs")).status_code == 200
    schema = (await c.get("/openapi.json")).json()
    assert "402" in schema["paths"]["/v1/echo"]["get"]["responses"]
    assert "402" not in schema["paths"]["/auth/jwt/login"]["post"]["responses"]

    email = "ada@example.com"
    r = await c.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    assert await _trial(ledger, user_id) == Decimal("0.003")  # eager, from on_after_register
    account = await ledger.get_account(user_id)
    assert account is not None and account.metadata["provisioned_by"] == "signup"

    auth = await _login(c, email, PASSWORD)
    r = await c.get("/users/me", headers=auth)  # fastapi-users' own routes are not billed
    assert r.status_code == 200 and r.json()["email"] == email
    assert "credit-balance" not in r.headers

    # password reset and verification: no credential needed, nothing billed
    outbox = app.state.outbox
    assert (await c.post("/auth/forgot-password", json={"email": email})).status_code == 202
    reset = next(t for kind, e, t in outbox if kind == "reset" and e == email)
    new_password = PASSWORD + " again"
    r = await c.post("/auth/reset-password", json={"token": reset, "password": new_password})
    assert r.status_code == 200, r.text
    auth = await _login(c, email, new_password)
    r = await c.post("/auth/request-verify-token", json={"email": email})
    assert r.status_code == 202, r.text
    verify = next(t for kind, e, t in outbox if kind == "verify" and e == email)
    r = await c.post("/auth/verify", json={"token": verify})
    assert r.status_code == 200 and r.json()["is_verified"] is True

    # the admin app is mounted exempt: its own token, never read as a JWT
    admin = {"Authorization": "Bearer admin-" + "t" * 32}
    assert (await c.get("/admin/api/verify", headers=admin)).status_code == 200

    # metered: 0.001 a call against a 0.003 trial and 5/minute
    rs = [await c.get("/v1/echo", params={"msg": n}, headers=auth) for n in range(6)]
    assert [r.status_code for r in rs] == [200, 200, 200, 402, 402, 429], [r.text for r in rs]
    assert [r.headers.get("credit-balance") for r in rs[:5]] == ["0.002", "0.001", "0", "0", "0"]
    assert rs[3].headers["content-type"] == "application/problem+json"
    assert rs[3].json()["type"].endswith(":insufficient-credits")
    assert int(rs[5].headers["retry-after"]) > 0
    assert (await c.get("/v1/echo")).status_code == 401
    assert (await ledger.balance(user_id)).available == Decimal(0)

    # a paying customer: one purchase grants credits and upgrades the tier, lifting the limit
    await ledger.purchase(user_id, "1", tier="pro", key="order-1")
    middleware_of(app)._tiers.clear()  # as after TIER_TTL (the documented bound), unwaited
    r = await c.get("/v1/echo", headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["ratelimit-policy"].startswith('"100-per-minute"')
    assert r.headers["credit-balance"] == "0.999"


def test_the_adoption_is_at_most_15_lines() -> None:
    source = (ROOT / "examples" / "fastapi_users_app.py").read_text()
    adoption = [line for line in source.splitlines() if line.rstrip().endswith("# credits")]
    assert 0 < len(adoption) <= 15, adoption
