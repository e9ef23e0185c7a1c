"""The same API as ``examples/app.py``, on FastAPI, shaped as FastAPI apps grow: its metered
routes in an ``APIRouter``, CORS for a browser frontend on another origin (``CORS_ORIGINS``,
comma-separated), and the credit middleware's one line added last, outside CORS (its work still
runs inside it). Run it: ``uvicorn examples.fastapi_app:app`` (behind a proxy at ``/api``:
``uvicorn --root-path /api examples.fastapi_app:app``, nothing else changes)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from credit_middleware import CreditMiddleware
from examples.app import Services, Settings


def create_app(**overrides: Any) -> FastAPI:
    """Build the app; keyword overrides replace environment settings (tests use them)."""
    settings = Settings.from_env(**overrides)
    services = Services(settings)
    app = FastAPI(lifespan=services.credits.lifespan)
    app.state.services = services
    v1 = APIRouter(prefix="/v1", tags=["v1"])

    @app.post("/auth/register", status_code=201)
    async def register(request: Request) -> JSONResponse:
        return await services.register(request)

    @v1.get("/echo")
    async def echo(request: Request, msg: str = "") -> dict[str, str]:
        return {"msg": msg, "balance": str(request.state.credit_balance)}

    @app.get("/credits/balance")
    async def balance(request: Request) -> Response:
        return await services.balance(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(v1)
    origins = [o.strip() for o in os.environ.get("CORS_ORIGINS", "").split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_headers=["Authorization", "Content-Type"]
        )
    app.add_middleware(CreditMiddleware, credits=services.credits)  # the one line, added last
    return app


app = create_app()
