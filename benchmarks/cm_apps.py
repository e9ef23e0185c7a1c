"""The app with ``CreditMiddleware``, configured for each middleware variant.

- ``cm_embedded``: no URLs, i.e. the embedded default (SQLite file + in-memory limits);
- ``cm_pg_hot`` / ``cm_pg_cold``: PostgreSQL + Redis, every ``/work`` call debits 0.001;
  hot reuses users whose accounts exist, cold sends a new user on every request;
- ``cm_pg_keyed``: the hot path with an ``Idempotency-Key`` of its own on every call (the
  key claimed with the charge, the response stored for replays);
- ``cm_pg_ratelimit``: PostgreSQL + Redis, ``/work`` in ``handler`` mode (identity and rate
  limit, no metering) — the comparison with slowapi.

All verify the same HS256 bearer token and count against the same single limit as slowapi.
"""

from __future__ import annotations

import inspect
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp

from .apps import routes
from .common import (
    JWT_AUDIENCE,
    JWT_ISSUER,
    JWT_SECRET,
    PRICE,
    RATE_LIMIT,
    STRATEGY,
    WORK_PATH,
    BenchEnv,
)

CM_VARIANTS = ("cm_embedded", "cm_pg_hot", "cm_pg_keyed", "cm_pg_cold", "cm_pg_ratelimit")


def available() -> str | None:
    """None when the middleware can be benchmarked, else why not."""
    try:
        from credit_middleware.middleware import CreditMiddleware
    except Exception as exc:  # not written yet, or broken mid-edit
        return f"credit_middleware.middleware does not import: {exc!r}"
    params = dict(inspect.signature(CreditMiddleware.__init__).parameters)
    try:  # the middleware's keyword options are those of Credits, which it builds from them
        from credit_middleware import Credits

        params.update(inspect.signature(Credits).parameters)
    except ImportError:
        pass
    missing = [p for p in middleware_kwargs_names() if p not in params]
    if missing:
        return f"CreditMiddleware lacks the options {missing}"
    return None


def middleware_kwargs_names() -> tuple[str, ...]:
    return ("database_url", "redis_url", "pricing", "jwt_secret", "tiers", "limits")


def middleware_kwargs(env: BenchEnv) -> dict[str, Any]:
    from credit_middleware import pricing as pr
    from credit_middleware.config import Lifecycle, Limits

    Pricing = pr.Pricing
    Route = getattr(pr, "PricedRoute", None) or pr.Route
    embedded = env.variant == "cm_embedded"
    if env.variant == "cm_pg_ratelimit":
        pricing = Pricing(routes=[Route(WORK_PATH, mode="handler")])
    else:
        pricing = Pricing(default_cost=PRICE)
    return {
        "database_url": f"sqlite:///{env.sqlite_path}" if embedded else env.database_url,
        "redis_url": None if embedded else env.redis_url,
        "pricing": pricing,
        "jwt_secret": JWT_SECRET,
        "jwt_issuer": JWT_ISSUER,
        "jwt_audience": JWT_AUDIENCE,
        "tiers": {"trial": RATE_LIMIT},
        "limits": Limits(default=RATE_LIMIT, strategy=STRATEGY),
        "key_prefix": f"{env.prefix}cm:",
        # the orchestrator migrates once, before any server starts
        "lifecycle": Lifecycle(auto_migrate=False),
    }


def cm_app(env: BenchEnv) -> ASGIApp:
    from credit_middleware.middleware import CreditMiddleware

    app = Starlette(routes=routes())
    app.add_middleware(CreditMiddleware, **middleware_kwargs(env))
    return app


async def prepare(env: BenchEnv, users: list[str]) -> None:
    """Migrate the variant's ledger and open ``users`` with their trial (the hot path's
    accounts exist before the first measured request)."""
    from credit_middleware import Ledger, Provisioner

    url = f"sqlite:///{env.sqlite_path}" if env.variant == "cm_embedded" else env.database_url
    async with Ledger(url) as ledger:
        await ledger.migrate()
        provisioner = Provisioner(ledger)
        for user in users:
            await provisioner.ensure_account(user, layer="admin")
