"""The example app under a database that is down at startup: it starts (health up), signup
answers 201, metered routes and /credits/balance answer 503 with Retry-After (never 500/502),
and it recovers on its own once the database is back. Served by uvicorn with its lifespan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from _middleware_helpers import serve

from examples import app as starlette_example
from examples import fastapi_app as fastapi_example

pytestmark = pytest.mark.anyio
SECRET = "example-test-secret-0123456789abcdefghij"
FACTORIES = {"starlette": starlette_example.create_app, "fastapi": fastapi_example.create_app}


@pytest.fixture(params=["starlette", "fastapi"])
def factory(request: pytest.FixtureRequest) -> Any:
    return FACTORIES[request.param]


async def _outage(c: httpx.AsyncClient) -> dict[str, str]:
    assert (await c.get("/healthz")).status_code == 200
    r = await c.post("/auth/register", json={"email": "o@example.com", "password": "long enough"})
    assert r.status_code == 201, r.text
    auth = {"Authorization": f"Bearer {r.json()['token']}"}
    for path in ("/v1/echo", "/credits/balance"):
        r = await c.get(path, headers=auth)
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert int(r.headers["retry-after"]) > 0
        assert r.headers["content-type"] == "application/problem+json"
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    if (await c.post("/v1/chat/completions", json=chat, headers=auth)).status_code != 404:
        r = await c.post("/v1/chat/completions", json=chat, headers=auth)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"]
    return auth


async def test_sqlite_missing_at_startup_then_back(factory: Any, tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"  # SQLite cannot open a file in a missing directory
    app = factory(
        jwt_secret=SECRET, database_url=f"sqlite:///{missing / 'c.db'}", middleware={"timeout": 1.0}
    )
    with serve(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            auth = await _outage(c)
            missing.mkdir()  # the database is back: nothing restarts
            r = await c.get("/v1/echo", headers=auth)
            assert r.status_code == 200, r.text
            r = await c.get("/credits/balance", headers=auth)
            assert r.status_code == 200, r.text
            assert r.json()["balance"] == "4.999"


async def test_postgresql_down_at_startup(factory: Any) -> None:
    app = factory(
        jwt_secret=SECRET, database_url="postgresql://u@127.0.0.1:1/db", middleware={"timeout": 1.0}
    )
    with serve(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            await _outage(c)
