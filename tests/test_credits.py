"""Credits: one configuration shared by the middleware and signup, validated when it is built
(with a message that says what to change), read from CREDIT_* variables, owning its lifespan."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

import httpx
import pytest
from _middleware_helpers import SECRET, Recorder, bearer, build_app, client, middleware_of
from fastapi import FastAPI

from credit_middleware import (
    BackendUnavailable,
    ConfigurationError,
    CreditMiddleware,
    Credits,
    Ledger,
    Observer,
    Pricing,
    Provisioner,
    TrialPolicy,
)
from credit_middleware.config import Billing, Faults, Idempotency, Limits
from credit_middleware.limits.ratelimit import RateLimiter

pytestmark = pytest.mark.anyio
DEAD_PG = "postgresql://u@127.0.0.1:1/db"  # nothing listens there


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"timeout": 0}, "timeout must be positive"),
        ({"timeout": -1.0}, "timeout must be positive"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"jwt_secret": "short"}, "at least 32 bytes"),
        ({"jwt_secret": SECRET, "jwks_url": "https://idp/certs"}, "exactly one"),
        ({"jwt_audience": "api"}, "need jwt_secret or jwks_url"),
        ({"redis_url": "redis://x", "redis": object()}, "not both"),
        ({"pricing": Pricing(), "meter": "/v1/*"}, "give meter/cost to Pricing"),
        ({"rate_limiter": RateLimiter(), "tiers": {"trial": "1/minute"}}, "drop rate_limiter"),
        ({"trusted_proxies": ["not-an-ip"]}, "trusted_proxies"),
        ({"billing": Billing(hold_timeout=10), "idempotency": Idempotency(ttl=20)}, "shorter"),
        ({"rate_limiter": RateLimiter(), "limits": Limits(default=None)}, "drop rate_limiter"),
        ({"rate_limiter": RateLimiter(), "faults": Faults(on_redis_error="refuse")}, "drop rate"),
        ({"database_url": "mysql://x/y"}, "unsupported database URL"),
    ],
)
def test_bad_options_are_refused_at_construction(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Credits(**options)


def test_conflicting_objects_are_refused(sqlite_url: str, tmp_path: Any) -> None:
    a, b = Ledger(sqlite_url), Ledger(f"sqlite:///{tmp_path}/other.db")
    with pytest.raises(ConfigurationError, match="different ledgers"):
        Credits(ledger=a, provisioner=Provisioner(b))
    with pytest.raises(ConfigurationError, match="policy= differs"):
        Credits(provisioner=Provisioner(a), policy=TrialPolicy(amount=Decimal(100)))
    with pytest.raises(ConfigurationError, match="not both"):
        Credits(database_url=sqlite_url, ledger=a)
    with pytest.raises(ConfigurationError, match="drop database_url"):
        Credits(database_url=sqlite_url, provisioner=Provisioner(a))
    with pytest.raises(ConfigurationError, match="resolver"):
        Credits(resolver=object(), jwt_secret=SECRET)  # type: ignore[arg-type]
    same = Credits(ledger=a, provisioner=Provisioner(a, TrialPolicy(amount=Decimal(7))))
    assert same.policy.amount == Decimal(7)


async def test_the_middleware_validates_the_same_way(ledger: Ledger) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not reached")

    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        CreditMiddleware(app, jwt_secret="short")
    with pytest.raises(ConfigurationError, match="timeout must be positive"):
        CreditMiddleware(app, timeout=0)
    with pytest.raises(ConfigurationError, match="unexpected keyword"):
        CreditMiddleware(app, jwt_sercet=SECRET)
    credits = Credits(provisioner=Provisioner(ledger))
    with pytest.raises(ConfigurationError, match="Credits"):
        CreditMiddleware(app, credits=credits, jwt_secret=SECRET)


def test_from_env_reads_credit_variables(sqlite_url: str) -> None:
    env = {
        "CREDIT_DATABASE_URL": sqlite_url,
        "CREDIT_JWT_SECRET": SECRET,
        "CREDIT_JWT_AUDIENCE": "fastapi-users:auth",
        "CREDIT_METER": "/v1/*, /v2/*",
        "CREDIT_TRIAL_AMOUNT": "100",
        "CREDIT_RATE_LIMIT": "5/minute",
        "CREDIT_TIMEOUT": "2.5",
        "CREDIT_REDIS_URL": "",  # empty is unset
    }
    credits = Credits.from_env(env)
    assert credits.ledger.url == sqlite_url
    assert credits.policy.amount == Decimal(100)
    assert credits.timeout == 2.5
    assert credits.redis is None
    assert credits.pricing.price({"type": "http", "path": "/v2/x"}) is not None
    assert credits.pricing.price({"type": "http", "path": "/users/me"}) is None
    assert Credits.from_env(env, timeout=1.0).timeout == 1.0  # arguments win
    with pytest.raises(ConfigurationError, match="CREDIT_TIMEOUT"):
        Credits.from_env({"CREDIT_TIMEOUT": "soon"})
    with pytest.raises(ConfigurationError, match="CREDIT_TIERS"):
        Credits.from_env({"CREDIT_TIERS": "[1]"})
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        Credits.from_env({"CREDIT_JWT_SECRET": "short"})


async def test_policy_and_database_url_are_honoured(sqlite_url: str) -> None:
    async with Credits(database_url=sqlite_url, policy=TrialPolicy(amount=Decimal(100))) as c:
        result = await c.provision("p100", email="p@example.com")
        assert result is not None and result.granted
    async with Ledger(sqlite_url) as ledger:
        assert (await ledger.balance("p100")).available == Decimal(100)


async def test_one_credits_shared_by_signup_and_the_middleware(ledger_url: str) -> None:
    """The issue's failure: provisioned in one ledger, debited in another. Here both are one."""
    credits = Credits(database_url=ledger_url, jwt_secret=SECRET, meter="/v1/*")
    app = build_app(credits=credits)
    async with credits, client(app) as c:
        await credits.provision("shared", email="s@example.com")  # as on_after_register would
        r = await c.get("/v1/echo", headers=bearer("shared"))
        assert r.status_code == 200, r.text
        assert r.headers["credit-balance"] == "4.999"
    async with Ledger(ledger_url) as ledger:
        history = await ledger.history("shared")
        assert [e.layer for e in reversed(history)] == ["signup", "request"]
        assert (await ledger.verify()).ok


async def test_lifespan_migrates_and_closes_once_for_two_users(sqlite_url: str) -> None:
    credits = Credits(database_url=sqlite_url, jwt_secret=SECRET, meter="/v1/*")
    app = FastAPI(lifespan=credits.lifespan)  # and the middleware: two users of one Credits

    @app.get("/v1/echo")
    async def echo() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(CreditMiddleware, credits=credits)
    async with app.router.lifespan_context(app):
        assert credits.migrated
        async with client(app) as c:
            assert (await c.get("/v1/echo", headers=bearer("l"))).status_code == 200
    with pytest.raises(BackendUnavailable):
        await credits.ledger.balance("l")  # closed: no stray connection outlives the app
    async with credits:  # a second lifespan reopens it
        assert (await credits.ledger.balance("l")).available == Decimal("4.999")


async def test_a_database_down_at_startup_delays_nothing_and_recovers(sqlite_url: str) -> None:
    credits = Credits(database_url=DEAD_PG, timeout=0.5)
    async with credits:  # starts: the migration failed and is left to first use
        assert not credits.migrated
        with pytest.raises(BackendUnavailable):
            await credits.ready()
        assert await credits.provision("u1") is None  # signup goes on; retried later


async def test_a_raising_observer_never_turns_a_refusal_into_a_500(ledger: Ledger) -> None:
    class Broken(Observer):
        def refused(self, status: int, reason: str) -> None:
            raise RuntimeError("metrics are down")

        def ledger_op(self, kind: str, outcome: str) -> None:
            raise RuntimeError("metrics are down")

        def provisioned(self, layer: str, outcome: str) -> None:
            raise RuntimeError("metrics are down")

    app = build_app(provisioner=Provisioner(ledger), observer=Broken())
    async with client(app) as c:
        assert (await c.get("/v1/echo")).status_code == 401
        assert (await c.get("/v1/echo", headers={"Authorization": "Bearer x.y.z"})).status_code == (
            401
        )
        assert (await c.get("/v1/echo", headers=bearer("obs"))).status_code == 200


async def test_402_carries_the_balance(ledger: Ledger) -> None:
    policy = TrialPolicy(amount=Decimal("0.002"))
    app = build_app(provisioner=Provisioner(ledger, policy))
    async with client(app) as c:
        codes = [await c.get("/v1/echo", headers=bearer("poor")) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 402]
    assert codes[2].headers["credit-balance"] == "0"
    assert codes[2].json()["available"] == "0"


async def test_fastapi_test_pattern_without_lifespan(sqlite_url: str) -> None:
    """FastAPI's documented pattern: AsyncClient + ASGITransport, no lifespan at all."""
    app = FastAPI()

    @app.get("/v1/echo")
    async def echo() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(CreditMiddleware, database_url=sqlite_url, jwt_secret=SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/v1/echo", headers=bearer("nolife"))).status_code == 200
    await middleware_of(app).aclose()


async def test_signup_logs_a_missing_user_id(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    from credit_middleware import provision_credits

    credits = Credits(provisioner=Provisioner(ledger))

    @provision_credits(credits)
    async def register() -> dict[str, str]:
        return {"email": "nobody@example.com"}

    with caplog.at_level(logging.WARNING, "credit_middleware.trials.signup"):
        await register()
    assert "no 'user_id' or 'id'" in caplog.text
    await asyncio.sleep(0)


async def test_recorder_sees_events_through_the_guard(ledger: Ledger) -> None:
    rec = Recorder()
    app = build_app(provisioner=Provisioner(ledger), observer=rec)
    async with client(app) as c:
        await c.get("/v1/echo")
    assert (401, "unauthenticated") in rec.of("refused")


_NO_LIFESPAN_SCRIPT = """
import asyncio, sys, time, jwt, httpx
from fastapi import FastAPI
from credit_middleware import CreditMiddleware
app = FastAPI()
@app.get("/v1/echo")
async def echo() -> dict:
    return {"ok": True}
app.add_middleware(CreditMiddleware, database_url=sys.argv[1], jwt_secret=sys.argv[2])
async def main() -> None:
    tok = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, sys.argv[2], algorithm="HS256")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/v1/echo", headers={"Authorization": f"Bearer {tok}"})
        print(r.status_code, flush=True)
asyncio.run(main())
"""


def test_fastapi_test_pattern_process_exits(sqlite_url: str) -> None:
    """No lifespan, nothing closed by hand: the process still exits (a test run ends)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _NO_LIFESPAN_SCRIPT, sqlite_url, SECRET],
            capture_output=True,
            text=True,
            timeout=30,  # a hang detector, not a timing: it exits in about a second
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit after its last request")
    assert done.stdout.strip() == "200", done.stderr
    assert done.returncode == 0, done.stderr


def test_the_guard_forwards_every_observer_hook() -> None:
    from credit_middleware.events import guarded

    hooks = [n for n, v in vars(Observer).items() if callable(v) and not n.startswith("_")]
    seen: list[str] = []

    class Inner(Observer):
        def __getattribute__(self, name: str) -> Any:
            if name in hooks:
                return lambda *args: seen.append(name)
            return super().__getattribute__(name)

    guard = guarded(Inner())
    for hook in hooks:
        getattr(guard, hook)(*(["x"] * 2 if hook != "request_overhead" else [0.1]))
    assert seen == hooks
