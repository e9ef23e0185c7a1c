"""The one-round-trip Redis scripts against `limits`' own Redis strategies, on the same random
hit sequences (hypothesis), on a real Redis.

The reference is `limits` counting a request all or nothing, as the scripts do: ``test()`` every
limit, ``hit()`` every limit only if all have room, then ``get_window_stats()`` each. Both sides
must answer the same: allowed, which limits had room, remaining, and reset.

Time: the moving window takes its timestamps from the client, so both sides read one injected
clock. The fixed window and the sliding-window counter live in Redis TTLs (the server's clock);
there, time is moved by rewriting every key's TTL on both sides alike (``warp``, before every
step), each TTL taken back to the whole 10 s it was set to, so the milliseconds that really pass
during a step never decide an answer (see ``SET_AT``).
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

#: Windows in whole multiples of UNIT (10 s) and time moved in whole UNITs, so that what decides
#: an answer lies far (in real milliseconds) from where ``warp`` puts each TTL; quotas small, so
#: that sequences exhaust them.
UNIT = 10
LIMIT_SETS = {
    "moving-window": [
        "2/100 seconds",
        "1/50 seconds;3/10 minutes",
        "1/10 seconds;2/100 seconds;4/10 minutes",
    ],
    "fixed-window": ["2/100 seconds", "1/50 seconds;3/10 minutes", "2/10 minutes;3/10 hours"],
    "sliding-window-counter": [
        "2/100 seconds",
        "1/50 seconds;3/10 minutes",
        "3/200 seconds;5/10 minutes",
    ],
}
#: Where ``warp`` sets a TTL inside its UNIT: 0.16 of a UNIT above the whole UNIT below. The
#: answers of the TTL strategies change where a TTL is a multiple of a window over a count (up to
#: 6): in UNITs, at fractions 0, 1/6, 1/5, 1/4, ... The widest gap is (0, 1/6): set at 0.16, a TTL
#: may run down 1.6 s of real time during a step (a busy CI machine) before any answer changes.
SET_AT = 0.16
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
        """Move the Redis clock ``seconds`` (whole UNITs) forward for every key of both sides:
        each TTL is taken up to the whole UNIT it stands in (a step runs it down by less than
        ``SET_AT`` of a UNIT), shortened (deleted when it runs out), and set at ``SET_AT`` of a
        UNIT above the whole UNIT below."""
        unit_ms = UNIT * 1000
        keys = [k async for k in self.client.scan_iter(match=f"{self.mine_prefix[:-5]}*")]
        for key in keys:
            ttl = await self.client.pttl(key)
            if ttl < 0:
                continue
            left = math.ceil(ttl / unit_ms) - seconds // UNIT
            if left <= 0:
                await self.client.delete(key)
            else:
                await self.client.pexpire(key, round((left - 1 + SET_AT) * unit_ms))

    async def close(self) -> None:
        keys = [k async for k in self.client.scan_iter(match=f"{self.mine_prefix[:-5]}*")]
        if keys:
            await self.client.delete(*keys)


STEP = st.tuples(
    st.integers(0, 2),  # limit set
    st.sampled_from(["alice", "alice", "bob"]),
    st.sampled_from(["*", "*", "/v1/chat"]),
    # seconds to move first, in whole UNITs
    st.sampled_from([0] * 8 + [UNIT * n for n in (1, 2, 4, 5, 9, 10, 11, 30, 61)]),
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
