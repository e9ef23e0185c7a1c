"""Bad input and dead backends: clear 4xx/503, never a 500, nothing written, verify clean."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from _middleware_helpers import (
    SECRET,
    Recorder,
    balance,
    bearer,
    build_app,
    client,
    middleware_of,
    token,
)

from credit_middleware import Ledger, Provisioner
from credit_middleware.config import Faults
from credit_middleware.limits.ratelimit import RateLimiter

pytestmark = pytest.mark.anyio


@pytest.fixture
def ledger_clock() -> Callable[[], float]:
    return time.time  # the middleware reads the wall clock too (tokens, rate-limit windows)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _bad_authorizations() -> list[bytes]:
    alg_none = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'x', 'exp': 4e9})}."
    return [
        b"",
        b"Bearer",
        b"Bearer ",
        b"Bearer garbage",
        b"Bearer a.b.c",
        alg_none.encode(),
        b"Bearer " + alg_none.encode(),
        b"Bearer " + token("x", secret="another-secret-0123456789abcdef-xyz").encode(),
        b"Bearer " + token("x", lifetime=-60).encode(),
        b"Bearer " + token("x", nbf=4_000_000_000).encode(),
        b"Bearer " + token(None).encode(),
        b"Bearer " + token(12345).encode(),
        b"Bearer " + token("nul\x00id").encode(),
        b"Bearer " + token("x" * 10_000).encode(),
        b"Bearer " + token("   ").encode(),
        b"Bearer " + b"a" * 16_384,
        b"Bearer \xff\xfe\xfd",
        b"Bearer " + b"x" * 70_000,
        "Bearer é".encode(),
    ]


async def test_bad_credentials_are_401_and_write_nothing(ledger: Ledger) -> None:
    rec = Recorder()
    app = build_app(provisioner=Provisioner(ledger), observer=rec)
    async with client(app) as c:
        for raw in _bad_authorizations():
            r = await c.get("/v1/echo", headers=[(b"authorization", raw)])
            assert r.status_code == 401, (raw[:60], r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"].startswith("urn:credit-middleware:problem:")
        r = await c.get("/v1/echo", headers=[(b"x-api-key", b"\xff" * 20)])
        assert r.status_code == 401
    for sub in ("x", "x" * 255):
        assert await ledger.get_account(sub) is None
    assert all(status == 401 for status, _ in rec.of("refused"))
    assert not rec.of("ledger_op")


async def test_odd_but_valid_subjects_work(ledger: Ledger) -> None:
    async with client(build_app(provisioner=Provisioner(ledger))) as c:
        for sub in ("ユーザー🙂", "a/b:c", "x" * 255, "'; DROP TABLE credit_accounts; --"):
            r = await c.get("/v1/echo", headers=bearer(sub))
            assert r.status_code == 200, (sub, r.text)
            assert await balance(ledger, sub) == Decimal("4.999")


async def test_forwarded_for_is_ignored_unless_trusted(ledger: Ledger) -> None:
    seen: list[str | None] = []

    class Spy(Provisioner):
        async def ensure_account(self, identity: Any, **kw: Any) -> Any:
            seen.append(identity.client_ip)
            return await super().ensure_account(identity, **kw)

    headers = {**bearer("fwd"), "X-Forwarded-For": "203.0.113.9"}
    async with client(build_app(provisioner=Spy(ledger)), ip="10.0.0.5") as c:
        assert (await c.get("/v1/echo", headers=headers)).status_code == 200
    app = build_app(provisioner=Spy(ledger), trusted_proxies=["10.0.0.0/8"])
    async with client(app, ip="10.0.0.5") as c:
        headers = {**bearer("fwd2"), "X-Forwarded-For": "203.0.113.9, 10.0.0.7"}
        assert (await c.get("/v1/echo", headers=headers)).status_code == 200
    assert seen == ["10.0.0.5", "203.0.113.9"]


async def test_trusted_user_header_only_from_proxies(ledger: Ledger) -> None:
    app = build_app(
        provisioner=Provisioner(ledger), trusted_proxies=["10.1.2.3"], user_header="X-User-ID"
    )
    async with client(app, ip="10.1.2.3") as c:
        assert (await c.get("/v1/echo", headers={"X-User-ID": "from-proxy"})).status_code == 200
    async with client(app, ip="198.51.100.1") as c:
        assert (await c.get("/v1/echo", headers={"X-User-ID": "forged"})).status_code == 401
    assert await ledger.get_account("forged") is None


async def test_api_key_lookup(ledger: Ledger) -> None:
    from credit_middleware import Identity

    async def lookup(key: str) -> Identity | None:
        return Identity("key-owner") if key == "sk-good" else None

    app = build_app(provisioner=Provisioner(ledger), api_key_lookup=lookup)
    async with client(app) as c:
        assert (await c.get("/v1/echo", headers={"X-API-Key": "sk-good"})).status_code == 200
        assert (await c.get("/v1/echo", headers={"X-API-Key": "sk-bad"})).status_code == 401
    assert await balance(ledger, "key-owner") == Decimal("4.999")


async def test_dead_redis_local_policy_keeps_limiting(ledger: Ledger) -> None:
    rec = Recorder()
    app = build_app(
        provisioner=Provisioner(ledger),
        redis_url="redis://127.0.0.1:1/0",
        tiers={"trial": "3/minute"},
        observer=rec,
    )
    async with client(app) as c:
        codes = [(await c.get("/v1/echo", headers=bearer("rd"))).status_code for _ in range(4)]
    await middleware_of(app).aclose()
    assert codes == [200, 200, 200, 429]
    assert rec.of("degraded") == [("redis", True)]
    assert await balance(ledger, "rd") == Decimal("4.997")


async def test_dead_redis_refuse_policy_is_503(ledger: Ledger) -> None:
    app = build_app(
        provisioner=Provisioner(ledger),
        redis_url="redis://127.0.0.1:1/0",
        faults=Faults(on_redis_error="refuse"),
    )
    async with client(app) as c:
        for _ in range(2):
            r = await c.get("/v1/echo", headers=bearer("rr"))
            assert r.status_code == 503
            assert r.headers["retry-after"]
            assert r.json()["type"].endswith(":rate-limiter-unavailable")
        assert (await c.get("/healthz")).status_code == 200
    await middleware_of(app).aclose()
    assert await ledger.get_account("rr") is None


async def test_dead_database_is_503_or_unbilled_pass() -> None:
    url = "postgresql://u@127.0.0.1:1/db"  # nothing listens there
    rec = Recorder()
    app = build_app(database_url=url, observer=rec, timeout=1.0)
    async with client(app) as c:
        for _ in range(2):
            r = await c.get("/v1/echo", headers=bearer("dbdown"))
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "5"
            assert r.json()["type"].endswith(":ledger-unavailable")
        assert (await c.get("/healthz")).status_code == 200
    await middleware_of(app).aclose()
    assert rec.of("degraded") == [("database", True)]
    open_app = build_app(database_url=url, faults=Faults(on_ledger_error="allow"), timeout=1.0)
    async with client(open_app) as c:
        r = await c.get("/v1/echo", headers=bearer("dbdown"))
        assert r.status_code == 200
        assert "credit-balance" not in r.headers
    await middleware_of(open_app).aclose()


async def test_database_recovers_after_outage(ledger: Ledger, ledger_url: str) -> None:
    rec = Recorder()
    mw_ledger = Ledger(ledger_url)
    app = build_app(provisioner=Provisioner(mw_ledger), observer=rec)
    try:
        async with client(app) as c:
            assert (await c.get("/v1/echo", headers=bearer("rec"))).status_code == 200

            async def dead(*a: Any, **k: Any) -> Any:
                from credit_middleware import BackendUnavailable

                raise BackendUnavailable("database", "test outage")

            mw_ledger.debit = dead  # type: ignore[method-assign]  # an outage on the hot path
            r = await c.get("/v1/echo", headers=bearer("rec"))
            assert r.status_code == 503
            del mw_ledger.debit
            assert (await c.get("/v1/echo", headers=bearer("rec"))).status_code == 200
    finally:
        await mw_ledger.close()
    assert rec.of("degraded") == [("database", True), ("database", False)]
    assert await balance(ledger, "rec") == Decimal("4.998")


async def test_redis_limiter_survives_outage_with_local_counting() -> None:
    rec = Recorder()
    from credit_middleware import redis_from_url

    dead = redis_from_url("redis://127.0.0.1:1/0", timeout=0.2)
    limiter = RateLimiter(tiers={"trial": "2/minute"}, redis=dead, observer=rec)
    verdicts = [await limiter.hit("acct", "trial") for _ in range(3)]
    await dead.aclose()
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert rec.of("degraded") == [("redis", True)]


def test_secret_is_long_enough() -> None:
    assert len(SECRET) >= 32
