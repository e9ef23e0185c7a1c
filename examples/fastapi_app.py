"""The same API as ``examples/app.py``, on FastAPI: ``uvicorn examples.fastapi_app:app``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from credit_middleware import CreditMiddleware
from examples.app import Services, Settings


def create_app(**overrides: Any) -> FastAPI:
    """Build the app; keyword overrides replace environment settings (tests use them)."""
    settings = Settings.from_env(**overrides)
    services = Services(settings)
    app = FastAPI(lifespan=services.credits.lifespan)
    app.state.services = services

    @app.post("/auth/register", status_code=201)
    async def register(request: Request) -> JSONResponse:
        return await services.register(request)

    @app.get("/v1/echo")
    async def echo(request: Request, msg: str = "") -> dict[str, str]:
        return {"msg": msg, "balance": str(request.state.credit_balance)}

    @app.get("/credits/balance")
    async def balance(request: Request) -> Response:
        return await services.balance(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(CreditMiddleware, credits=services.credits)
    return app


app = create_app()
