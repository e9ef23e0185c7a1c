"""A Starlette API that gives every new user 5.0 trial credits and bills 0.001 a call.

Run it: ``uvicorn examples.app:app``. Configuration comes from the environment (only here, at
the edge): ``CREDIT_DATABASE_URL`` (default ``sqlite:///./credits.db``), ``CREDIT_REDIS_URL``
(default none: in-memory limits), ``CREDIT_JWT_SECRET``, ``CREDIT_TRIAL_AMOUNT`` (5.0),
``CREDIT_CALL_COST`` (0.001), ``CREDIT_RATE_LIMIT`` (``60/minute;1000/day``) and
``CREDIT_ADMIN_TOKEN`` (unset: no admin routes; set: the admin API and dashboard at ``/admin``,
guarded by that bearer token). Prometheus metrics are served at ``/metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from credit_middleware import (
    Identity,
    Ledger,
    LocalLocks,
    Provisioner,
    RedisLocks,
    TrialPolicy,
    close_redis,
    redis_from_url,
)
from credit_middleware.admin import admin_app, bearer_token_guard
from credit_middleware.errors import AccountNotFound
from credit_middleware.metrics import PrometheusObserver, metrics_app
from credit_middleware.middleware import CreditMiddleware
from credit_middleware.pricing import Pricing
from credit_middleware.pricing import Route as Priced
from credit_middleware.signup import provision_credits
from examples.chat import chat_route, warm_up

log = logging.getLogger("examples.app")

DEV_SECRET = "dev-only-secret-change-me-0123456789abcdef"  # noqa: S105 - the dev default


@dataclass
class Settings:
    """The example's configuration; ``from_env`` reads the ``CREDIT_*`` variables."""

    database_url: str = "sqlite:///./credits.db"
    redis_url: str | None = None
    jwt_secret: str = DEV_SECRET
    trial_amount: Decimal = Decimal("5.0")
    call_cost: Decimal = Decimal("0.001")
    rate_limit: str = "60/minute;1000/day"
    admin_token: str | None = None
    middleware: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        env = os.environ
        values: dict[str, Any] = {
            "database_url": env.get("CREDIT_DATABASE_URL", cls.database_url),
            "redis_url": env.get("CREDIT_REDIS_URL") or None,
            "jwt_secret": env.get("CREDIT_JWT_SECRET") or DEV_SECRET,
            "trial_amount": Decimal(env.get("CREDIT_TRIAL_AMOUNT", "5.0")),
            "call_cost": Decimal(env.get("CREDIT_CALL_COST", "0.001")),
            "rate_limit": env.get("CREDIT_RATE_LIMIT", cls.rate_limit),
            "admin_token": env.get("CREDIT_ADMIN_TOKEN") or None,
        }
        middleware = overrides.pop("middleware", {})
        values.update(overrides)
        if values["jwt_secret"] == DEV_SECRET:
            log.warning(
                "CREDIT_JWT_SECRET is not set: using a development secret, never in production"
            )
        return cls(**values, middleware=middleware)


class Services:
    """What the routes share: the ledger, the provisioner, a toy user store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ledger = Ledger(settings.database_url)
        self.redis: Any = None
        if settings.redis_url:  # redis://, rediss://, redis+sentinel:// or redis+cluster://
            self.redis = redis_from_url(settings.redis_url, timeout=1.0)
        locks = RedisLocks(self.redis) if self.redis is not None else LocalLocks()
        policy = TrialPolicy(amount=settings.trial_amount)
        # one observer for everything: Prometheus counters and the dashboard's recent refusals
        self.observer = PrometheusObserver()
        self.provisioner = Provisioner(self.ledger, policy, locks=locks, observer=self.observer)
        self.users: dict[str, tuple[str, bytes, bytes]] = {}  # email -> (id, salt, hash)
        self._migrated = False
        self._lock = asyncio.Lock()

    async def ready(self) -> None:
        self.ledger.reopen()  # after an earlier lifespan's close(), as when tests restart it
        async with self._lock:
            if not self._migrated:
                await self.ledger.migrate()
                self._migrated = True

    async def close(self) -> None:
        await self.ledger.close()
        if self.redis is not None:
            await close_redis(self.redis)

    def token(self, user_id: str, email: str | None, *, lifetime: int = 3600) -> str:
        claims = {"sub": user_id, "email": email, "email_verified": False}
        claims["exp"] = int(time.time()) + lifetime  # type: ignore[assignment]
        return jwt.encode(claims, self.settings.jwt_secret, algorithm="HS256")

    def add_user(self, email: str, password: str) -> str | None:
        """Create a user; None when the e-mail is taken."""
        if email in self.users:
            return None
        salt = secrets.token_bytes(16)
        digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
        user_id = uuid.uuid4().hex
        self.users[email] = (user_id, salt, digest)
        return user_id

    @provision_credits(lambda self: self.provisioner)  # eager layer, within a 200 ms budget
    async def register(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        email = body.get("email") if isinstance(body, dict) else None
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(email, str) or "@" not in email or len(email) > 320:
            return JSONResponse({"error": "a valid email is required"}, status_code=400)
        if not isinstance(password, str) or not 8 <= len(password) <= 1024:
            return JSONResponse({"error": "password must be 8-1024 characters"}, status_code=400)
        user_id = self.add_user(email, password)
        if user_id is None:
            return JSONResponse({"error": "email already registered"}, status_code=409)
        try:  # the schema is normally migrated at startup; registration never fails for it
            await self.ready()
        except Exception:
            log.exception("ledger not ready; the first request will provision")
        return JSONResponse({"user_id": user_id, "token": self.token(user_id, email)}, 201)

    async def balance(self, request: Request) -> JSONResponse:
        identity: Identity = request.state.credit_identity
        try:
            bal = await self.ledger.balance(identity.account_id)
        except AccountNotFound:
            await self.provisioner.ensure_account(identity, layer="request")
            bal = await self.ledger.balance(identity.account_id)
        return JSONResponse({"balance": str(bal.available), "tier": bal.tier})


async def echo(request: Request) -> JSONResponse:
    return JSONResponse(
        {"msg": request.query_params.get("msg", ""), "balance": str(request.state.credit_balance)}
    )


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def create_app(**overrides: Any) -> Starlette:
    """Build the app; keyword overrides replace environment settings (tests use them).
    Nothing connects until the first request."""
    settings = Settings.from_env(**overrides)
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.ready()
        await warm_up(app)  # LiteLLM imported now, in a thread, not by the first chat request
        yield
        await services.close()

    routes: list[BaseRoute] = [
        Route("/auth/register", services.register, methods=["POST"]),
        Route("/v1/echo", echo),
        chat_route(services.provisioner),  # metered by its LLM cost
        Route("/credits/balance", services.balance),
        Route("/healthz", healthz),
        Route("/metrics", metrics_app(services.observer)),
    ]
    if settings.admin_token:
        guard = bearer_token_guard(settings.admin_token)
        admin = admin_app(services.ledger, authorize=guard, refusals=services.observer)
        routes.append(Mount("/admin", admin))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.services = services
    app.add_middleware(CreditMiddleware, **middleware_options(settings, services))
    return app


def middleware_options(settings: Settings, services: Services) -> dict[str, Any]:
    """The one line's arguments, shared with the FastAPI example."""
    options: dict[str, Any] = {
        "provisioner": services.provisioner,
        "observer": services.observer,
        "redis": services.redis,
        "jwt_secret": settings.jwt_secret,
        "tiers": {"trial": settings.rate_limit},
        "default_limits": settings.rate_limit,
        "pricing": Pricing(
            default_cost=settings.call_cost,
            routes=[
                Priced("/credits/*", mode="handler"),
                Priced("/v1/chat/completions", mode="handler"),  # billed by its LLM cost
                Priced("/admin", mode="exempt"),  # guarded by its own bearer token
                Priced("/admin/*", mode="exempt"),
            ],
        ),
    }
    options.update(settings.middleware)
    return options


app = create_app()
