"""The one-round-trip Redis scripts against `limits`' own Redis strategies, on the same random
hit sequences (hypothesis), on a real Redis.

The reference is `limits` counting a request all or nothing, as the scripts do: ``test()`` every
limit, ``hit()`` every limit only if all have room, then ``get_window_stats()`` each. Both sides
must answer the same: allowed, which limits had room, remaining, and reset.

Time: the moving window takes its timestamps from the client, so both sides read one injected
clock. The fixed window and the sliding-window counter live in Redis TTLs (the server's clock);
there, time is moved by rewriting every key's TTL on both sides alike (``warp``), each TTL
rounded to the whole second it was set to, so the milliseconds that really pass between two
calls never decide an answer.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import redis.asyncio as aioredis
from conftest import REDIS_URL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limits import parse_many
from limits.aio import strategies as lstrategies
from limits.aio.storage.redis import redispy

from credit_middleware._redis import limits_storage
from credit_middleware.limits.redis_scripts import RedisCounter

pytestmark = pytest.mark.redis

LIMIT_SETS = {  # windows in whole seconds; quotas small, so that sequences exhaust them
    "moving-window": ["2/10 seconds", "1/5 seconds;3/minute", "1/second;2/10 seconds;4/minute"],
    "fixed-window": ["2/10 seconds", "1/5 seconds;3/minute", "2/minute;3/hour"],
    "sliding-window-counter": ["2/10 seconds", "1/5 seconds;3/minute", "3/20 seconds;5/minute"],
}
TAGS = {"moving-window": "mw", "fixed-window": "fw", "sliding-window-counter": "swc"}


def _redis() -> Any:
    return aioredis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


@contextmanager
def _clock(now: list[float]) -> Any:
    """`limits` reads ``time.time()`` in its Redis bridge (moving-window timestamps, and to
    turn a TTL into a reset time) and in its strategies: give it ours."""
    fake = SimpleNamespace(time=lambda: now[0])
    with mock.patch.object(redispy, "time", fake), mock.patch.object(lstrategies, "time", fake):
        yield


class Pair:
    """The script and the `limits` reference, each under a key prefix of its own."""

    def __init__(self, client: Any, strategy: str, run: str) -> None:
        self.client = client
        self.mine_prefix, self.ref_prefix = f"{run}:mine", f"{run}:ref"
        self.mine = RedisCounter(client, strategy, self.mine_prefix, TAGS[strategy])
        cls: Any = lstrategies.STRATEGIES[strategy]
        self.ref = cls(limits_storage(client, key_prefix=self.ref_prefix))
        self.tag = TAGS[strategy]

    async def step(self, spec: str, account: str, route: str, now: float) -> None:
        items = tuple(parse_many(spec))
        allowed, counted = await self.mine.count(items, account, route, now)
        ids = (self.tag, account, route)
        fits = [await self.ref.test(item, *ids) for item in items]
        if all(fits):
            for item in items:
                assert await self.ref.hit(item, *ids)
        stats = [await self.ref.get_window_stats(item, *ids) for item in items]
        assert allowed == all(fits), (spec, counted, stats)
        assert [c[0] for c in counted] == fits
        assert [c[1] for c in counted] == [s.remaining for s in stats], (spec, counted, stats)
        moving = self.tag == "mw"
        for (_, _, left), s in zip(counted, stats, strict=True):
            # moving window: the same clock, the same figure; TTL strategies: limits reads TTL
            # in whole seconds (rounded), the script PTTL
            ref_left = s.reset_time - now
            if moving:
                assert left == pytest.approx(ref_left, abs=1e-6), (spec, s)
            if self.tag == "swc" and ref_left == 0 < left:
                # limits' reset is a TTL modulo a period: read (in a call of its own) exactly
                # on a period's end it says 0, a millisecond earlier a whole period
                continue
            assert abs(max(0, math.ceil(left)) - max(0, math.ceil(ref_left))) <= 1, (spec, s)

    async def warp(self, seconds: int) -> None:
        """Move the Redis clock ``seconds`` forward for every key of both sides: each TTL is
        rounded to its whole second, shortened (deleted when it runs out), and set 137 ms short
        of a whole second: the real time that passes during a step (a few ms) then never moves a
        TTL across a point where an answer changes (TTLs that are multiples of a window's
        expiry over a count up to 6 all lie at least 29 ms away from there)."""
        keys = [k async for k in self.client.scan_iter(match=f"{self.mine_prefix[:-5]}*")]
        for key in keys:
            ttl = await self.client.pttl(key)
            if ttl < 0:
                continue
            left = round(ttl / 1000) - seconds
            if left <= 0:
                await self.client.delete(key)
            else:
                await self.client.pexpire(key, left * 1000 - 137)

    async def close(self) -> None:
        keys = [k async for k in self.client.scan_iter(match=f"{self.mine_prefix[:-5]}*")]
        if keys:
            await self.client.delete(*keys)


STEP = st.tuples(
    st.integers(0, 2),  # limit set
    st.sampled_from(["alice", "alice", "bob"]),
    st.sampled_from(["*", "*", "/v1/chat"]),
    st.sampled_from([0] * 8 + [1, 2, 4, 5, 9, 10, 11, 30, 61]),  # seconds to move first
)


def _run(strategy: str, steps: Sequence[tuple[int, str, str, int]], ms: Sequence[int]) -> None:
    async def go() -> None:
        client = _redis()
        try:
            await client.ping()
        except (OSError, aioredis.RedisError) as exc:
            await client.aclose()
            pytest.skip(f"redis unreachable: {exc!r}")
        pair = Pair(client, strategy, f"cmtest:{secrets.token_hex(4)}:rls")
        now = [1_800_000_000.0]
        try:
            with _clock(now):
                for (which, account, route, seconds), extra_ms in zip(steps, ms, strict=False):
                    if strategy == "moving-window":
                        now[0] = round(now[0] + seconds + extra_ms / 1000, 3)
                    else:
                        await pair.warp(seconds)
                    spec = LIMIT_SETS[strategy][which]
                    await pair.step(spec, account, route, now[0])
        finally:
            await pair.close()
            await client.aclose()

    asyncio.run(go())


SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    steps=st.lists(STEP, min_size=8, max_size=24),
    ms=st.lists(st.integers(0, 999), min_size=24, max_size=24),
)
def test_moving_window_script_matches_limits(steps: Any, ms: Any) -> None:
    _run("moving-window", steps, ms)


@SETTINGS
@given(steps=st.lists(STEP, min_size=8, max_size=24))
def test_fixed_window_script_matches_limits(steps: Any) -> None:
    _run("fixed-window", steps, [0] * len(steps))


@SETTINGS
@given(steps=st.lists(STEP, min_size=8, max_size=24))
def test_sliding_window_counter_script_matches_limits(steps: Any) -> None:
    _run("sliding-window-counter", steps, [0] * len(steps))
