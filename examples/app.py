"""A Starlette API that gives every new user 5.0 trial credits and bills 0.001 a call.

Run it: ``uvicorn examples.app:app``. Configuration comes from the environment (only here, at
the edge): ``CREDIT_DATABASE_URL`` (default ``sqlite:///./credits.db``), ``CREDIT_REDIS_URL``
(default none: in-memory limits), ``CREDIT_JWT_SECRET``, ``CREDIT_TRIAL_AMOUNT`` (5.0),
``CREDIT_CALL_COST`` (0.001), ``CREDIT_RATE_LIMIT`` (``60/minute;1000/day``) and
``CREDIT_ADMIN_TOKEN`` (unset: no admin routes; set: the admin API and dashboard at ``/admin``,
guarded by that token: a bearer token for scripts, the sign-in password for people).
Prometheus metrics are served at ``/metrics``.
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
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from credit_middleware import (
    BackendUnavailable,
    CreditMiddleware,
    Credits,
    Identity,
    PricedRoute,
    Pricing,
    TrialPolicy,
    provision_credits,
)
from credit_middleware.config import Limits
from credit_middleware.errors import AccountNotFound
from credit_middleware.metrics import PrometheusObserver, metrics_app
from credit_middleware.problems import ledger_down
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
    """What the routes share: one :class:`Credits` (ledger, provisioner, limits, identity) and
    a toy user store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # one observer for everything: Prometheus counters and the dashboard's recent refusals
        self.observer = PrometheusObserver()
        options: dict[str, Any] = {
            "database_url": settings.database_url,
            "redis_url": settings.redis_url,  # redis://, rediss://, redis+sentinel://, ...
            "policy": TrialPolicy(amount=settings.trial_amount),
            "jwt_secret": settings.jwt_secret,
            "tiers": {"trial": settings.rate_limit},
            "limits": Limits(default=settings.rate_limit),
            "pricing": Pricing(
                default_cost=settings.call_cost,
                meter="/v1/*",
                routes=[
                    PricedRoute("/credits/*", mode="handler"),  # identity and limits, no price
                    PricedRoute("/v1/chat/completions", mode="handler"),  # its LLM cost
                ],
            ),
            "observer": self.observer,
        }
        options.update(settings.middleware)
        self.credits = Credits(**options)
        self.ledger = self.credits.ledger
        self.provisioner = self.credits.provisioner
        self.redis = self.credits.redis
        self.users: dict[str, tuple[str, bytes, bytes]] = {}  # email -> (id, salt, hash)

    async def ready(self) -> None:
        """Migrate now (the app also starts, and migrates later, while the database is down)."""
        await self.credits.ready()

    async def close(self) -> None:
        await self.credits.aclose()

    def token(self, user_id: str, email: str | None, *, lifetime: int = 3600) -> str:
        claims = {"sub": user_id, "email": email, "email_verified": False}
        claims["exp"] = int(time.time()) + lifetime  # type: ignore[assignment]
        return jwt.encode(claims, self.settings.jwt_secret, algorithm="HS256")

    async def add_user(self, email: str, password: str) -> str | None:
        """Create a user; None when the e-mail is taken. scrypt runs off the event loop."""
        if email in self.users:
            return None
        salt = secrets.token_bytes(16)
        digest = await asyncio.to_thread(
            hashlib.scrypt, password.encode(), salt=salt, n=2**14, r=8, p=1
        )
        if email in self.users:  # registered while we were hashing
            return None
        user_id = uuid.uuid4().hex
        self.users[email] = (user_id, salt, digest)
        return user_id

    @provision_credits(lambda self: self.credits)  # eager layer, within a 200 ms budget
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
        user_id = await self.add_user(email, password)
        if user_id is None:
            return JSONResponse({"error": "email already registered"}, status_code=409)
        return JSONResponse({"user_id": user_id, "token": self.token(user_id, email)}, 201)

    async def balance(self, request: Request) -> Response:
        identity: Identity = request.state.credit_identity
        try:
            try:
                bal = await self.ledger.balance(identity.account_id)
            except AccountNotFound:
                await self.provisioner.ensure_account(identity, layer="request")
                bal = await self.ledger.balance(identity.account_id)
        except BackendUnavailable:  # an outage is a 503 with Retry-After, never a 500
            return ledger_down()
        return JSONResponse({"balance": str(bal.available), "tier": bal.tier})


async def echo(request: Request) -> JSONResponse:
    return JSONResponse(
        {"msg": request.query_params.get("msg", ""), "balance": str(request.state.credit_balance)}
    )


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def create_app(**overrides: Any) -> Starlette:
    """Build the app; keyword overrides replace environment settings (tests use them).
    Nothing connects until the first request, and the app starts while the database is
    down (metered routes answer 503 with Retry-After until it is back)."""
    settings = Settings.from_env(**overrides)
    services = Services(settings)
    credits = services.credits

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with credits:  # migrates (not failing while the database is down), then closes
            await warm_up(app)  # LiteLLM imported now, in a thread, not by the first chat request
            yield

    routes: list[BaseRoute] = [
        Route("/auth/register", services.register, methods=["POST"]),
        Route("/v1/echo", echo),
        chat_route(services.provisioner),  # metered by its LLM cost
        Route("/credits/balance", services.balance),
        Route("/healthz", healthz),
        Route("/metrics", metrics_app(services.observer)),
    ]
    if settings.admin_token:  # exempt from billing wherever it is mounted; its own guard
        routes.append(Mount("/admin", credits.admin(token=settings.admin_token)))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.services = services
    app.add_middleware(CreditMiddleware, credits=credits)
    return app


app = create_app()
