"""A Redis server stopped and restarted mid-run under the middleware: limits degrade to local
counting and come back, provisioning stays one account / one grant, the ledger verifies."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from _middleware_helpers import (
    Recorder,
    balance,
    bearer,
    build_app,
    client,
    free_port,
    trial_grants,
)

from credit_middleware import Ledger, Provisioner, RedisLocks, redis_from_url
from credit_middleware.limits.ratelimit import RateLimiter

pytestmark = pytest.mark.anyio


class _RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        args = [exe, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, check=False
            )
            if out.stdout.strip() == b"PONG":
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server() -> Iterator[_RedisServer]:
    server = _RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ledger_clock() -> Callable[[], float]:
    return time.time  # the middleware reads the wall clock too (tokens, rate-limit windows)


async def test_redis_stopped_and_restarted_mid_run(ledger: Ledger, redis_server: Any) -> None:
    rec = Recorder()
    redis = redis_from_url(f"redis://127.0.0.1:{redis_server.port}/0", timeout=0.3)
    # recheck=0: Redis is tried again on every call, so the first one after the restart finds it
    limiter = RateLimiter(tiers={"trial": "1000/minute"}, redis=redis, recheck=0.0, observer=rec)
    provisioner = Provisioner(ledger, locks=RedisLocks(redis, wait=0.5))
    app = build_app(provisioner=provisioner, rate_limiter=limiter, redis=redis, observer=rec)
    try:
        async with client(app) as c:
            assert (await c.get("/v1/echo", headers=bearer("before"))).status_code == 200
            redis_server.stop()
            # a herd of first requests from a new user while Redis (limiter and lock) is down
            rs = await asyncio.gather(
                *(c.get("/v1/echo", headers=bearer("during")) for _ in range(20))
            )
            assert [r.status_code for r in rs] == [200] * 20
            redis_server.start()
            assert (await c.get("/v1/echo", headers=bearer("after"))).status_code == 200
    finally:
        await redis.aclose()
    assert rec.of("degraded") == [("redis", True), ("redis", False)]
    assert await trial_grants(ledger, "during") == 1
    assert await balance(ledger, "during") == Decimal("4.98")
    assert await balance(ledger, "after") == Decimal("4.999")
