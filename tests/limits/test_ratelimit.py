"""Rate limits with ``limits``: strategies, tiers, route overrides, shared Redis, IETF fields."""

from __future__ import annotations

import time
from typing import Any

import pytest

import credit_middleware.limits.memory as memory_module
import credit_middleware.limits.ratelimit as ratelimit_module
from credit_middleware import ConfigurationError
from credit_middleware.limits.ratelimit import (
    LimitState,
    RateLimiter,
    Strategy,
    Verdict,
    rate_limit_headers,
)

pytestmark = pytest.mark.anyio

STRATEGIES: list[Strategy] = ["moving-window", "sliding-window-counter", "fixed-window"]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_each_strategy_limits_per_account(strategy: Any) -> None:
    limiter = RateLimiter(tiers={"trial": "3/minute;10/day"}, strategy=strategy)
    verdicts = [await limiter.hit("a", "trial") for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    denied = verdicts[-1]
    assert denied.exceeded == "3-per-minute"
    assert 1 <= denied.retry_after <= 60
    assert (await limiter.hit("b", "trial")).allowed  # another account has its own budget
    day = verdicts[0].states[1]
    assert (day.name, day.quota, day.window) == ("10-per-day", 10, 86400)


async def test_tiers_default_and_route_limits() -> None:
    limiter = RateLimiter(tiers={"trial": "1/minute", "pro": "5/minute"}, default="2/minute")
    assert [(await limiter.hit("p", "pro")).allowed for _ in range(5)] == [True] * 5
    assert [(await limiter.hit("t", "trial")).allowed for _ in range(2)] == [True, False]
    assert [(await limiter.hit("u", "unknown")).allowed for _ in range(3)] == [True, True, False]
    # a route with its own limits counts apart from the tier's budget
    assert (await limiter.hit("t", "trial", route="/v1/chat", route_limits="2/minute")).allowed
    unlimited = RateLimiter(tiers={}, default=None)
    assert (await unlimited.hit("x", "trial")).states == ()


def test_bad_configuration() -> None:
    with pytest.raises(ConfigurationError):
        RateLimiter(tiers={"trial": "lots"})
    with pytest.raises(ConfigurationError):
        RateLimiter(strategy="leaky")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RateLimiter(on_redis_error="ignore")  # type: ignore[arg-type]


def test_header_fields() -> None:
    verdict = Verdict(
        False,
        (
            LimitState("60-per-minute", 60, 60, 0, 12),
            LimitState("1000-per-day", 1000, 86400, 940, 80000),
        ),
        12,
        "60-per-minute",
    )
    headers = dict(rate_limit_headers(verdict, legacy=True))
    assert headers["RateLimit-Policy"] == '"60-per-minute";q=60;w=60, "1000-per-day";q=1000;w=86400'
    assert headers["RateLimit"] == '"60-per-minute";r=0;t=12, "1000-per-day";r=940;t=80000'
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("60", "0")
    assert rate_limit_headers(Verdict(True, ())) == []


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_two_limiters_share_one_redis_budget(redis_client: Any, strategy: Any) -> None:
    prefix = redis_client.test_prefix + "rl"
    a = RateLimiter(
        tiers={"trial": "5/minute"}, redis=redis_client, key_prefix=prefix, strategy=strategy
    )
    b = RateLimiter(
        tiers={"trial": "5/minute"}, redis=redis_client, key_prefix=prefix, strategy=strategy
    )
    results = []
    for i in range(8):
        results.append((await (a if i % 2 else b).hit("shared", "trial")).allowed)
    assert results.count(True) == 5
    assert results[5:] == [False, False, False]
    keys = [k async for k in redis_client.scan_iter(match=redis_client.test_prefix + "*")]
    assert keys  # the limiter's keys live under the test prefix


async def test_redis_refuse_policy_raises_backend_unavailable() -> None:
    from credit_middleware import BackendUnavailable, redis_from_url

    dead = redis_from_url("redis://127.0.0.1:1/0", timeout=0.2)
    limiter = RateLimiter(redis=dead, on_redis_error="refuse")
    try:
        for _ in range(2):  # the second is refused without another connection attempt
            with pytest.raises(BackendUnavailable):
                await limiter.hit("x", "trial")
    finally:
        await dead.aclose()


def test_redis_url_scheme_is_checked() -> None:
    from credit_middleware import redis_from_url

    with pytest.raises(ConfigurationError):
        redis_from_url("http://127.0.0.1:6379")


async def test_switching_strategy_on_live_keys_does_not_break(redis_client: Any) -> None:
    from credit_middleware.events import Observer

    class Flag(Observer):
        degraded_seen = False

        def degraded(self, backend: str, degraded: bool) -> None:
            Flag.degraded_seen = True

    prefix = redis_client.test_prefix + "rl"
    for strategy in STRATEGIES:
        limiter = RateLimiter(
            redis=redis_client, key_prefix=prefix, strategy=strategy, observer=Flag()
        )
        assert (await limiter.hit("same", "trial")).allowed
    assert not Flag.degraded_seen


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_retry_storm_does_not_drain_the_daily_budget(
    backend: str, redis_client: Any
) -> None:
    """A request is counted only if every limit has room, so 50 calls against 3/minute spend 3
    of the day's 100, not 50 (and the refusal is answered locally until it ends)."""
    redis = redis_client if backend == "redis" else None
    prefix = redis_client.test_prefix + "storm"
    tiers = {"trial": "3/minute;100/day", "day": "100/day"}
    limiter = RateLimiter(tiers=tiers, redis=redis, key_prefix=prefix)
    verdicts = [await limiter.hit("storm", "trial") for _ in range(50)]
    assert [v.allowed for v in verdicts] == [True] * 3 + [False] * 47
    # the same day limit, read through a tier that has only it: 100 - 3 - this call
    other = RateLimiter(tiers=tiers, redis=redis, key_prefix=prefix) if redis else limiter
    (day,) = (await other.hit("storm", "day")).states
    assert (day.name, day.remaining) == ("100-per-day", 96)


class _Time:
    """Stands in for the ``time`` module where the memory limits read it: a hand-moved clock
    (wall and monotonic time move together)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


async def test_a_remembered_refusal_counts_down_and_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    import limits.storage.memory

    clock = _Time()
    for module in (limits.storage.memory, memory_module, ratelimit_module):
        monkeypatch.setattr(module, "time", clock)
    limiter = RateLimiter(tiers={"trial": "2/second;50/day"})
    assert [(await limiter.hit("a", "trial")).allowed for _ in range(2)] == [True, True]
    first = await limiter.hit("a", "trial")
    again = await limiter.hit("a", "trial")
    assert not first.allowed and not again.allowed
    assert again.exceeded == "2-per-second" and again.retry_after == 1
    assert [s.name for s in again.states] == ["2-per-second", "50-per-day"]  # headers stay full
    assert again.states[1].reset <= first.states[1].reset
    assert (await limiter.hit("b", "trial")).allowed  # other accounts are not affected
    clock.offset += 1.05  # the second-long window has passed: counted again, allowed
    ok = await limiter.hit("a", "trial")
    assert ok.allowed and ok.states[1].remaining == 50 - 3  # the refused call spent nothing


async def test_what_spends_a_slot(ledger: Any) -> None:
    """The README's rule: whatever reaches the ledger spends a slot (served calls, 402s,
    replays); a 401 and the 429 itself spend none."""
    from _middleware_helpers import bearer, build_app, client

    from credit_middleware import Provisioner

    app = build_app(provisioner=Provisioner(ledger), tiers={"trial": "3/minute"}, cost="3")
    keyed = {**bearer("slots"), "Idempotency-Key": "k-1"}
    async with client(app) as c:
        for _ in range(5):
            assert (await c.get("/v1/echo")).status_code == 401  # no identity: nothing to count
        served = await c.get("/v1/echo", headers=keyed)
        replayed = await c.get("/v1/echo", headers=keyed)
        poor = await c.get("/v1/echo", headers=bearer("slots"))
        limited = await c.get("/v1/echo", headers=bearer("slots"))
    assert served.status_code == 200 and replayed.headers["idempotent-replayed"] == "true"
    assert poor.status_code == 402  # a ledger round trip: it spent the third slot
    assert limited.status_code == 429
