"""The app: ``create_app(settings)``; ``app`` is the one ``uvicorn`` serves.

Adopting credit-middleware takes the lines marked ``# credits`` here and in ``api/routes``:
one ``Credits`` on the app's own secret (its JWTs' ``sub`` is the user id, which is the
account) and database, the middleware, ``@provision_credits`` on signup and ``@priced`` on
the item route that costs more. Everything under ``/api/v1/items`` is metered; login, signup,
the users' routes, the health check and the docs are not.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.cors import CORSMiddleware

from credit_middleware import CreditMiddleware, Credits  # credits

from .api.main import api_router
from .core.config import Settings
from .core.db import make_engine


def custom_generate_unique_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    credits: Credits | None = None,
) -> FastAPI:
    """The app on ``settings`` (default: from ``environ``, the process environment by
    default); the ``CREDIT_*`` variables of ``environ`` configure the credits, unless a test
    hands in a ``credits`` of its own (it must check the app's tokens: its ``jwt_secret`` is
    the app's ``secret_key``)."""
    env = os.environ if environ is None else environ
    settings = settings or Settings.from_env(env)
    if credits is None:
        ledger = env.get("CREDIT_DATABASE_URL") or settings.ledger_url  # credits
        credits = Credits.from_env(  # credits
            env,  # credits
            database_url=ledger,  # credits
            meter=f"{settings.api_v1_str}/items*",  # credits
            jwt_secret=settings.secret_key,  # credits: the app's own tokens
        )  # credits

    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()  # the pool's connections, closed with the app

    app = FastAPI(
        title=settings.project_name,
        openapi_url=f"{settings.api_v1_str}/openapi.json",
        generate_unique_id_function=custom_generate_unique_id,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.credits = credits  # credits
    # inside CORS: preflights pass untouched and refusals carry the CORS headers
    app.add_middleware(CreditMiddleware, credits=credits)  # credits
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Credit-Balance", "Credit-Cost", "Retry-After"],
        )
    app.include_router(api_router, prefix=settings.api_v1_str)
    return app


app = create_app()
