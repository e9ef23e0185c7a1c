"""The Redis rate limiter's cost and layout: one round trip for all of a request's limits and
its header figures, every key of a request in one Redis Cluster slot, a flushed script cache
survived (NOSCRIPT: loaded again)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from _redis_servers import Servers, cluster_port, require_binaries
from redis.crc import key_slot

from credit_middleware.limits.ratelimit import RateLimiter

pytestmark = pytest.mark.anyio

STRATEGIES = ["moving-window", "sliding-window-counter", "fixed-window"]


class Counting:
    """Counts the commands every redis.asyncio client sends (each is one round trip here)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[str] = []
        execute: Any = aioredis.Redis.execute_command

        async def count(client: Any, *args: Any, **kwargs: Any) -> Any:
            self.sent.append(str(args[0]))
            return await execute(client, *args, **kwargs)

        monkeypatch.setattr(aioredis.Redis, "execute_command", count)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_one_round_trip_per_request_for_all_limits_and_headers(
    redis_client: Any, strategy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = RateLimiter(
        tiers={"trial": "2/minute;100/hour;1000/day"},
        strategy=strategy,
        redis=redis_client,
        key_prefix=redis_client.test_prefix + "rl",
    )
    await limiter.hit("warm", "trial")  # the script is loaded now (or was)
    counting = Counting(monkeypatch)
    verdicts = [await limiter.hit("acct", "trial") for _ in range(3)]
    assert counting.sent == ["EVALSHA"] * 3  # the old code sent 6 per request (hit + stats)
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert [s.remaining for s in verdicts[1].states] == [0, 98, 998]
    # the refusal spent no slot of the hour or the day, and is answered from memory now
    assert [s.remaining for s in verdicts[2].states] == [0, 98, 998]
    assert 1 <= verdicts[2].retry_after <= 60
    await limiter.hit("acct", "trial")
    assert counting.sent == ["EVALSHA"] * 3


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_every_key_of_a_request_is_in_one_cluster_slot(
    redis_client: Any, strategy: Any
) -> None:
    prefix = redis_client.test_prefix + "slot"
    limiter = RateLimiter(
        tiers={"trial": "5/minute;50/hour;500/day"},
        strategy=strategy,
        redis=redis_client,
        key_prefix=prefix,
    )
    await limiter.hit("we{ir}d/id", "trial", route="/v1/{item}", route_limits="3/second;9/day")
    await limiter.hit("we{ir}d/id", "trial")
    keys = [k async for k in redis_client.scan_iter(match=prefix + "*")]
    assert len(keys) >= 5
    assert len({key_slot(k) for k in keys}) == 1, keys


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[int]:
    missing = require_binaries()
    if missing:
        pytest.skip(f"needs {missing}")
    servers = Servers(tmp_path)
    port = cluster_port()
    servers.start(port)
    try:
        yield port
    finally:
        servers.stop_all()


async def test_a_flushed_script_cache_is_reloaded(
    private_redis: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=private_redis)
    try:
        limiter = RateLimiter(tiers={"trial": "3/minute"}, redis=client, on_redis_error="refuse")
        counting = Counting(monkeypatch)
        assert (await limiter.hit("a", "trial")).states[0].remaining == 2
        assert counting.sent == ["EVAL"]  # the first call runs (and caches) the script
        await client.script_flush()  # as after a restart or a failover to a fresh replica
        assert (await limiter.hit("a", "trial")).states[0].remaining == 1
        # NOSCRIPT, then EVAL again: two round trips (SCRIPT LOAD and a retry would be three)
        assert counting.sent == ["EVAL", "SCRIPT FLUSH", "EVALSHA", "EVAL"]
    finally:
        await client.aclose()


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="asyncio.timeout is Python 3.11+: on 3.10 the write bound is a wait_for task too",
)
async def test_our_clients_commands_run_in_the_callers_task(redis_client: object) -> None:
    """redis-py bounds each write with ``asyncio.wait_for`` (a task per command on Python
    3.11); the client made from a URL bounds it in the caller's task."""
    import asyncio

    from credit_middleware import redis_from_url

    loop = asyncio.get_running_loop()
    made: list[object] = []
    factory = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: object, **kwargs: object) -> object:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)  # type: ignore[arg-type]

    ours = redis_from_url("redis://127.0.0.1:6379/0", timeout=0.5)
    plain = aioredis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=0.5)
    try:
        await ours.ping()
        await plain.ping()  # both connected
        loop.set_task_factory(counting)  # type: ignore[arg-type]
        for _ in range(10):
            await ours.ping()
        mine = len(made)
        for _ in range(10):
            await plain.ping()
        theirs = len(made) - mine
    finally:
        loop.set_task_factory(factory)
        await ours.aclose()
        await plain.aclose()
    assert mine == 0
    assert theirs >= 10  # what it replaces (if redis-py stops needing it, this says so)


async def test_a_write_to_a_stopped_redis_times_out_and_disconnects(private_redis: int) -> None:
    """The write bound still holds: a Redis that stopped reading (SIGSTOP) fills the socket
    buffers, and a large write then fails within the timeout instead of hanging."""
    import os
    import signal

    from redis.exceptions import TimeoutError as RedisTimeout

    from credit_middleware import redis_from_url

    client = redis_from_url(f"redis://127.0.0.1:{private_redis}/0", timeout=0.3)
    try:
        pid = int((await client.info("server"))["process_id"])
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(RedisTimeout):
                await client.set("big", b"x" * (64 << 20))  # more than loopback buffers hold
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await client.ping()  # a new connection: the timed-out one was dropped
    finally:
        await client.aclose()
