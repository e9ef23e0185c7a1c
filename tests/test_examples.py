"""The examples end to end: ASGI transport and real HTTP (uvicorn), embedded and PG + Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from _middleware_helpers import free_port, serve, token

from credit_middleware import Ledger
from examples import app as starlette_example
from examples import fastapi_app as fastapi_example

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
SECRET = "example-test-secret-0123456789abcdefghij"
REDIS_URL = os.environ.get("CREDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FACTORIES = {"starlette": starlette_example.create_app, "fastapi": fastapi_example.create_app}


@pytest.fixture(params=["starlette", "fastapi"])
def factory(request: pytest.FixtureRequest) -> Any:
    return FACTORIES[request.param]


@pytest.fixture(params=["embedded", "postgres+redis"])
def backends(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the example: SQLite + memory, or PostgreSQL + Redis (test key prefix)."""
    if request.param == "embedded":
        return {"database_url": request.getfixturevalue("sqlite_url")}
    client = request.getfixturevalue("redis_client")
    return {
        "database_url": request.getfixturevalue("pg_url"),
        "redis_url": REDIS_URL,
        "middleware": {"key_prefix": client.test_prefix},
    }


@pytest.fixture
async def ledger_of(backends: dict[str, Any]) -> AsyncIterator[Ledger]:
    led = Ledger(backends["database_url"])
    try:
        yield led
        report = await led.verify()
        assert report.ok, report.discrepancies
    finally:
        await led.close()


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def _journey(c: httpx.AsyncClient, ledger: Ledger) -> None:
    assert (await c.get("/healthz")).status_code == 200
    r = await c.post(
        "/auth/register", json={"email": "ann@example.com", "password": "correct horse"}
    )
    assert r.status_code == 201, r.text
    user_id, tok = r.json()["user_id"], r.json()["token"]
    r = await c.get("/v1/echo", params={"msg": "hi"}, headers=auth(tok))
    assert r.status_code == 200, r.text
    assert r.json()["msg"] == "hi"
    assert r.headers["credit-balance"] == "4.999"
    r = await c.get("/credits/balance", headers=auth(tok))
    assert r.json() == {"balance": "4.999", "tier": "trial"}
    idp = token("idp-only-user", secret=SECRET)  # a user nobody registered here
    r = await c.get("/v1/echo", params={"msg": "x"}, headers=auth(idp))
    assert r.status_code == 200, r.text
    for account in (user_id, "idp-only-user"):
        assert (await ledger.balance(account)).available == Decimal("4.999")
    assert (await c.get("/v1/echo")).status_code == 401
    r = await c.post("/auth/register", json={"email": "ann@example.com", "password": "again12345"})
    assert r.status_code == 409
    assert (await c.post("/auth/register", content=b"\xff")).status_code == 400


async def test_examples_over_asgi(
    factory: Any, backends: dict[str, Any], ledger_of: Ledger
) -> None:
    app = factory(jwt_secret=SECRET, **backends)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            await _journey(c, ledger_of)
    finally:
        await app.state.services.close()


async def test_examples_over_real_http(
    factory: Any, backends: dict[str, Any], ledger_of: Ledger
) -> None:
    app = factory(jwt_secret=SECRET, rate_limit="1000/minute", **backends)
    with serve(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            await _journey(c, ledger_of)
            herd = token("herd-user", secret=SECRET)
            rs = await asyncio.gather(*(c.get("/v1/echo", headers=auth(herd)) for _ in range(100)))
    assert [r.status_code for r in rs] == [200] * 100, [r.text for r in rs if r.status_code != 200]
    history = await ledger_of.history("herd-user", limit=1000)
    assert sum(1 for e in history if e.kind == "grant") == 1
    assert (await ledger_of.balance("herd-user")).available == Decimal("4.9")


async def test_rate_limit_and_spending_to_the_end(factory: Any, sqlite_url: str) -> None:
    app = factory(
        jwt_secret=SECRET,
        database_url=sqlite_url,
        rate_limit="3/minute",
        trial_amount=Decimal("0.002"),
    )
    tok = token("limited", secret=SECRET)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            codes = [(await c.get("/v1/echo", headers=auth(tok))).status_code for _ in range(4)]
            assert codes == [200, 200, 402, 429]
    finally:
        await app.state.services.close()


def _start(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    code = (
        "import os, uvicorn; from examples.app import create_app;"
        "app = create_app(middleware={'key_prefix': os.environ['TEST_PREFIX']});"
        f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "app process died"
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("app process did not start")


@pytest.fixture
def two_processes(pg_url: str, redis_client: Any) -> Iterator[tuple[str, str, str]]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CREDIT_DATABASE_URL": pg_url,
        "CREDIT_REDIS_URL": REDIS_URL,
        "CREDIT_JWT_SECRET": SECRET,
        "CREDIT_RATE_LIMIT": "5/minute",
        "TEST_PREFIX": redis_client.test_prefix,
    }
    ports = [free_port(), free_port()]
    procs = [_start(p, env) for p in ports]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url, proc in zip(urls, procs, strict=True):
            _wait(url, proc)
        yield urls[0], urls[1], pg_url
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


async def test_two_processes_enforce_one_shared_limit(two_processes: tuple[str, str, str]) -> None:
    a, b, pg_url = two_processes
    tok = token("shared-user", secret=SECRET)
    codes = []
    async with httpx.AsyncClient(timeout=30) as c:
        for i in range(8):
            r = await c.get((a if i % 2 else b) + "/v1/echo", headers=auth(tok))
            codes.append(r.status_code)
            if r.status_code == 429:
                assert 1 <= int(r.headers["retry-after"]) <= 60
                assert r.headers["ratelimit"].startswith('"5-per-minute";r=0;t=')
    assert codes == [200] * 5 + [429] * 3
    async with Ledger(pg_url) as led:
        assert (await led.balance("shared-user")).available == Decimal("4.995")
        assert (await led.verify()).ok
