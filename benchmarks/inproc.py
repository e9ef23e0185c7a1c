"""The app's own cost per request, without HTTP: ``python -m benchmarks.inproc N [--profile]``.

Builds the variant's app (``CREDIT_BENCH_*`` env), runs its lifespan, then calls it N times
with a prepared scope on one connection's worth of concurrency (one request at a time).
Prints one JSON line: wall and CPU (process time: this process only, so waiting on
PostgreSQL/Redis is not counted, their client-side work is) per request in µs. With
``--profile``, a cProfile summary of the loop goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import itertools
import json
import os
import pstats
import sys
import time
from collections.abc import Iterator
from typing import Any

from .apps import build
from .common import WORK_PATH, BenchEnv, make_token

N_USERS = 64
TRACED = 50  # requests of the round-trip count pass


@contextlib.contextmanager
def count_round_trips() -> Iterator[dict[str, int]]:
    """Count PostgreSQL statements (asyncpg), Redis round trips (commands sent one by one, and
    pipelines) and tasks created (each one more trip through the event loop) while the block
    runs: patched in, so never during a timed loop."""
    import asyncpg.connection
    import redis.asyncio.client as rc
    import redis.client as sync_rc

    counts = {"postgres": 0, "redis": 0, "tasks": 0}
    loop = asyncio.get_running_loop()
    factory = loop.get_task_factory()

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        counts["tasks"] += 1
        if factory is not None:
            return factory(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    saved = (asyncpg.connection.Connection._do_execute, rc.Redis.execute_command)
    saved_pipe = rc.Pipeline.execute
    saved_sync = sync_rc.Redis.execute_command

    def wrap_sync(*args: Any, **kwargs: Any) -> Any:  # slowapi talks to Redis synchronously
        counts["redis"] += 1
        return saved_sync(*args, **kwargs)

    def wrap(orig: Any, key: str) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return await orig(*args, **kwargs)

        return wrapper

    asyncpg.connection.Connection._do_execute = wrap(saved[0], "postgres")
    rc.Redis.execute_command = wrap(saved[1], "redis")
    rc.Pipeline.execute = wrap(saved_pipe, "redis")
    sync_rc.Redis.execute_command = wrap_sync
    loop.set_task_factory(counting_factory)
    try:
        yield counts
    finally:
        loop.set_task_factory(factory)
        asyncpg.connection.Connection._do_execute, rc.Redis.execute_command = saved
        rc.Pipeline.execute = saved_pipe
        sync_rc.Redis.execute_command = saved_sync


async def _lifespan(app: Any) -> tuple[asyncio.Task[None], asyncio.Queue[Any], asyncio.Queue[Any]]:
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    message = await outbox.get()
    if message["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"lifespan startup failed: {message}")
    return task, inbox, outbox


def _headers(user: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"host", b"127.0.0.1"),
        (b"authorization", f"Bearer {make_token(user)}".encode()),
        (b"x-bench-user", user.encode()),
    ]


async def measure(n: int, profile: bool) -> dict[str, Any]:
    env = BenchEnv.from_env()
    app = build(env)
    task, inbox, outbox = await _lifespan(app)
    if env.variant == "cm_pg_cold":
        tag = f"inproc-cold-{os.getpid()}-"
        headers = [_headers(f"{tag}{i}") for i in range(n + 200 + TRACED)]
    else:
        headers = [_headers(f"{env.variant}-{i}") for i in range(N_USERS)]
    base = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": WORK_PATH,
        "raw_path": WORK_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    statuses: dict[int, int] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    keyed = env.variant == "cm_pg_keyed"
    run_tag = f"inproc-{os.getpid()}-{time.time_ns()}-"
    calls = itertools.count()

    async def once(i: int) -> None:
        scope = dict(base)
        scope["headers"] = headers[i % len(headers)]
        if keyed:  # a key of its own for every call, never one sent before
            key = f"{run_tag}{next(calls)}".encode()
            scope["headers"] = [*scope["headers"], (b"idempotency-key", key)]
        await app(scope, receive, send)

    warm = 200 if env.variant == "cm_pg_cold" else min(500, max(100, n // 10))
    for i in range(warm):
        await once(n + i if env.variant == "cm_pg_cold" else i)
    statuses.clear()
    prof = cProfile.Profile() if profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    for i in range(n):
        await once(i)
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    status = {str(k): v for k, v in statuses.items()}
    with count_round_trips() as trips:
        for i in range(TRACED):
            await once(n + 200 + i if env.variant == "cm_pg_cold" else i)
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await task
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(
            os.environ.get("CREDIT_BENCH_PROFILE_SORT", "tottime")
        ).print_stats(30)
        print(buf.getvalue(), file=sys.stderr)
    return {
        "n": n,
        "wall_us": wall / n * 1e6,
        "cpu_us": cpu / n * 1e6,
        "status": status,
        "postgres_statements_per_request": trips["postgres"] / TRACED,
        "redis_round_trips_per_request": trips["redis"] / TRACED,
        "tasks_per_request": trips["tasks"] / TRACED,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    print(json.dumps(asyncio.run(measure(n, "--profile" in sys.argv))))


if __name__ == "__main__":
    main()
