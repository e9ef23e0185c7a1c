"""The example app's registration uses @provision_credits: the trial is there before the first
request, and with the ledger unreachable registration still answers 201 within the budget and
the lazy layer provisions the user on the first call."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from credit_middleware import Ledger
from examples import app as starlette_example
from examples import fastapi_app as fastapi_example

pytestmark = pytest.mark.anyio
SECRET = "example-test-secret-0123456789abcdefghij"
FACTORIES = {"starlette": starlette_example.create_app, "fastapi": fastapi_example.create_app}


@pytest.fixture(params=["starlette", "fastapi"])
def factory(request: pytest.FixtureRequest) -> Any:
    return FACTORIES[request.param]


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def register(c: httpx.AsyncClient, email: str) -> httpx.Response:
    return await c.post("/auth/register", json={"email": email, "password": "correct horse"})


async def test_registered_user_has_the_trial_before_the_first_request(
    factory: Any, tmp_path: Path
) -> None:
    app = factory(jwt_secret=SECRET, database_url=f"sqlite:///{tmp_path / 'c.db'}")
    ledger: Ledger = app.state.services.ledger
    try:
        async with client(app) as c:
            r = await register(c, "eve@example.org")
            assert r.status_code == 201, r.text
            user_id = r.json()["user_id"]
            assert (await ledger.balance(user_id)).spendable == Decimal("5")
            account = await ledger.get_account(user_id)
            assert account is not None
            assert account.metadata["provisioned_by"] == "signup"
            assert account.metadata["email_domain"] == "example.org"
            assert (await ledger.verify()).ok
    finally:
        await app.state.services.close()


async def test_unreachable_ledger_registration_then_lazy_provisioning(
    factory: Any, tmp_path: Path
) -> None:
    missing = tmp_path / "not-yet"  # SQLite cannot open a file in a missing directory
    app = factory(jwt_secret=SECRET, database_url=f"sqlite:///{missing / 'c.db'}")
    services = app.state.services
    try:
        async with client(app) as c:
            started = time.monotonic()
            r = await register(c, "fay@example.org")
            elapsed = time.monotonic() - started
            assert r.status_code == 201, r.text
            assert elapsed < 2.0  # generous: the budget is 0.2 s
            for runner in starlette_example.Services.register.credit_runners():  # type: ignore[attr-defined]
                if runner.provisioner is services.provisioner:
                    assert runner.pending == 1  # a retry is scheduled
                    await runner.aclose()  # leave the user to the lazy layer
            missing.mkdir()  # the ledger comes back
            user_id, tok = r.json()["user_id"], r.json()["token"]
            r = await c.get(
                "/v1/echo", params={"msg": "hi"}, headers={"Authorization": f"Bearer {tok}"}
            )
            assert r.status_code == 200, r.text
            assert r.headers["credit-balance"] == "4.999"
        account = await services.ledger.get_account(user_id)
        assert account is not None
        assert account.metadata["provisioned_by"] == "request"
        assert (await services.ledger.verify()).ok
    finally:
        await services.close()
