"""The apps under test: the bare app, the hand-written floor, slowapi, and the middleware.

Every variant serves the same trivial endpoint (``GET /work``: a 2-byte text response) so the
difference against ``bare`` in the same run is the cost of what wraps it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .common import (
    FREE_PATH,
    HEALTH_PATH,
    PRICE_MICROS,
    RATE_LIMIT,
    STRATEGY,
    WORK_PATH,
    BenchEnv,
)

FLOOR_TABLE = "bench_floor_accounts"
FLOOR_DEBIT = (
    f"UPDATE {FLOOR_TABLE} SET balance = balance - $2 "
    "WHERE id = $1 AND balance >= $2 RETURNING balance"
)
FLOOR_DDL = (
    f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (id text PRIMARY KEY, balance bigint NOT NULL)"
)


async def work(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("up")


def routes() -> list[Route]:
    return [Route(WORK_PATH, work), Route(FREE_PATH, work), Route(HEALTH_PATH, health)]


def bare_app(env: BenchEnv) -> ASGIApp:
    return Starlette(routes=routes())


def bench_user(scope: Scope) -> str | None:
    """The benchmark user, from the ``x-bench-user`` header (what the floor keys on)."""
    for key, value in scope["headers"]:
        if key == b"x-bench-user":
            return value.decode("latin-1")
    return None


class _Holder:
    pool: Any = None
    redis: Any = None


class FloorMiddleware:
    """The least a correct durable implementation must do: one Redis round trip (INCR and
    EXPIRE pipelined) for the rate limit, one guarded debit in PostgreSQL, then the app.

    No identity verification (the loader sends the user in a plain header), no headers on the
    response, no provisioning: this is the lower bound, not a competitor.
    """

    def __init__(self, app: ASGIApp, *, holder: _Holder, prefix: str) -> None:
        self.app = app
        self.holder = holder
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        user = bench_user(scope)
        if user is None:
            await JSONResponse({"error": "no user"}, 401)(scope, receive, send)
            return
        key = f"{self.prefix}floor:{user}:{int(time.time()) // 60}"
        pipe = self.holder.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = await pipe.execute()
        if count > 1_000_000:
            await JSONResponse({"error": "rate limited"}, 429)(scope, receive, send)
            return
        balance = await self.holder.pool.fetchval(FLOOR_DEBIT, user, PRICE_MICROS)
        if balance is None:
            await JSONResponse({"error": "insufficient credits"}, 402)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def floor_app(env: BenchEnv) -> ASGIApp:
    import asyncpg
    import redis.asyncio as aioredis

    holder = _Holder()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        holder.pool = await asyncpg.create_pool(env.database_url, min_size=10, max_size=10)
        holder.redis = aioredis.Redis.from_url(env.redis_url)
        try:
            yield
        finally:
            await holder.pool.close()
            await holder.redis.aclose()

    app = Starlette(routes=routes(), lifespan=lifespan)
    app.add_middleware(FloorMiddleware, holder=holder, prefix=env.prefix)
    return app


def slowapi_app(env: BenchEnv) -> ASGIApp:
    """slowapi as its docs show it, with its pure ASGI middleware (the faster of its two) and
    the same limit, strategy and Redis as the middleware's variants; keyed on the same user as
    the others. (It used to get ``fixed-window``, one INCR, against the middleware's moving
    window: that compared two strategies, not two implementations.)"""
    from slowapi import Limiter
    from slowapi.middleware import SlowAPIASGIMiddleware

    def key_func(request: Request) -> str:
        return request.headers.get("x-bench-user", "anonymous")

    limiter = Limiter(
        key_func=key_func,
        default_limits=[RATE_LIMIT],
        storage_uri=env.redis_url,
        key_prefix=f"{env.prefix}slowapi",
        strategy=STRATEGY,
        headers_enabled=False,
    )
    app = Starlette(routes=routes())
    app.state.limiter = limiter
    limiter.exempt(health)
    app.add_middleware(SlowAPIASGIMiddleware)
    return app


def build(env: BenchEnv) -> ASGIApp:
    if env.variant.startswith("cm_"):
        from .cm_apps import cm_app

        return cm_app(env)
    factories: dict[str, Callable[[BenchEnv], ASGIApp]] = {
        "bare": bare_app,
        "floor": floor_app,
        "slowapi": slowapi_app,
    }
    return factories[env.variant](env)
