"""The app shapes the conformance contract runs over: each a factory that builds an app the way
its kind of user builds it, with the credit middleware added by the README's one line.

To add a shape, append one :class:`Shape` to :data:`SHAPES`. Its ``build(credits)`` returns the
app with ``credits`` in place of its own configuration. The contract needs of it:

- ``priced``: a GET the app serves with 200 at exactly ``price`` credits (the contract gives
  each account a trial of two such calls, then expects a 402);
- ``unserved``: a metered GET the app answers with a 4xx (it must not be billed);
- ``login(client, name)``: the account id and request headers of a logged-in user called
  ``name`` (by default a bearer JWT for the account ``name`` signed with :data:`SECRET`; an
  app with its own login signs up and logs in through it, and its account is whatever id the
  app's tokens carry);
- ``meter``: what ``Credits(meter=...)`` meters for it (default ``/v1/*``);
- ``root_path``: a ``--root-path`` the server adds (the requests' paths are below it);
- ``cors_origin``: an origin the app's CORS middleware allows, if it has one;
- ``websocket``, ``stream``: a metered WebSocket route (it sends one message, then waits for
  one) and a streamed GET, both at ``price``, if the app has them.
"""

from __future__ import annotations

import base64
import json
import secrets
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from _middleware_helpers import SECRET, token
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from credit_middleware import CreditMiddleware, Credits, priced

__all__ = ["ORIGIN", "SECRET", "SHAPES", "Shape"]

ORIGIN = "https://frontend.example.com"
PRICE = "0.25"
Login = Callable[[httpx.AsyncClient, str], Awaitable[tuple[str, dict[str, str]]]]


async def bearer_login(client: httpx.AsyncClient, name: str) -> tuple[str, dict[str, str]]:
    return name, {"Authorization": f"Bearer {token(name, secret=SECRET)}"}


async def session_login(client: httpx.AsyncClient, name: str) -> tuple[str, dict[str, str]]:
    return name, {"X-Session": name}  # read by the app's AuthenticationMiddleware backend


@dataclass(frozen=True)
class Shape:
    name: str
    build: Callable[[Credits], ASGIApp]
    priced: str = "/v1/priced"
    price: Decimal = Decimal(PRICE)
    unserved: str = "/v1/missing"
    login: Login = bearer_login
    meter: str = "/v1/*"
    root_path: str = ""
    cors_origin: str | None = None
    websocket: str | None = None
    stream: str | None = None

    def __str__(self) -> str:
        return self.name


# ------------------------------------------------------------------ endpoints


@priced(PRICE)
async def paid(request: Request) -> JSONResponse:
    return JSONResponse({"account": request.state.credit_account_id, "padding": "x" * 600})


@priced(PRICE)
def paid_sync(request: Request) -> JSONResponse:  # a plain def: run in a thread
    return JSONResponse({"account": request.state.credit_account_id})


@priced(PRICE)
async def streamed(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"chunk {i}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


@priced(PRICE)
async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"account": websocket.state.credit_account_id})
    await websocket.receive_text()
    await websocket.close()


def starlette_routes() -> list[Any]:
    return [
        Route("/v1/priced", paid),
        Route("/v1/stream", streamed),
        WebSocketRoute("/v1/ws", socket),
    ]


def adopt(app: Any, credits: Credits) -> Any:
    app.add_middleware(CreditMiddleware, credits=credits)  # the README's one line, added last
    return app


class Session(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-session")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def cors(app: Any) -> None:
    app.add_middleware(
        CORSMiddleware, allow_origins=[ORIGIN], allow_headers=["Authorization", "X-Session"]
    )


# ------------------------------------------------------------------ shapes


def starlette_app(credits: Credits) -> Any:
    return adopt(Starlette(routes=starlette_routes()), credits)


def fastapi_routers(credits: Credits) -> Any:
    items = APIRouter(prefix="/items", tags=["items"])

    @items.get("/{item_id}")
    @priced(PRICE)
    async def read_item(item_id: int, request: Request) -> dict[str, Any]:
        return {"id": item_id, "account": request.state.credit_account_id}

    @items.get("/sync/{item_id}")
    @priced(PRICE)
    def read_item_sync(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    api = APIRouter(prefix="/v1")
    api.include_router(items)
    app = FastAPI()
    app.include_router(api)
    return adopt(app, credits)


def mounted_inner(credits: Credits) -> Any:
    sub = adopt(FastAPI(routes=starlette_routes()), credits)  # metered where it is mounted
    return Starlette(routes=[Mount("/api", app=sub)])


def mounted_outer(credits: Credits) -> Any:
    return adopt(Starlette(routes=[Mount("/api", app=FastAPI(routes=starlette_routes()))]), credits)


def root_path_of_the_app(credits: Credits) -> Any:
    with warnings.catch_warnings():  # FastAPI 0.12x+ prefers the server's --root-path
        warnings.simplefilter("ignore")
        app = FastAPI(root_path="/api", routes=starlette_routes())
    return adopt(app, credits)


def cors_inside(credits: Credits) -> Any:
    app = Starlette(routes=starlette_routes())
    cors(app)
    return adopt(app, credits)  # added after CORS: outside it


def cors_outside(credits: Credits) -> Any:
    app = adopt(Starlette(routes=starlette_routes()), credits)
    cors(app)  # added after the credit middleware: outside it
    return app


def auth_inside(credits: Credits) -> Any:
    app = Starlette(
        routes=starlette_routes(),
        middleware=[Middleware(AuthenticationMiddleware, backend=Session())],
    )
    cors(app)
    return adopt(app, credits)


def auth_outside(credits: Credits) -> Any:
    app = adopt(Starlette(routes=starlette_routes()), credits)
    app.add_middleware(AuthenticationMiddleware, backend=Session())
    return app


def gzip(credits: Credits) -> Any:
    app = Starlette(
        routes=starlette_routes(), middleware=[Middleware(GZipMiddleware, minimum_size=100)]
    )
    return adopt(app, credits)


def sync_endpoints(credits: Credits) -> Any:
    return adopt(Starlette(routes=[Route("/v1/priced", paid_sync)]), credits)


def fullstack(credits: Credits) -> Any:
    """examples/fullstack: a backend shaped like FastAPI's full-stack template (SQLModel,
    its own login and signup, routers under ``/api/v1``, CORS), on a SQLite file of its own."""
    from sqlmodel import SQLModel

    from examples.fullstack.core.config import Settings
    from examples.fullstack.main import create_app

    # one in-memory database shared by the pool's connections (its sync routes run in threads)
    name = f"fullstack-{secrets.token_hex(4)}"
    settings = Settings(
        database_url=f"sqlite:///file:{name}?mode=memory&cache=shared&uri=true",
        secret_key=SECRET,
        cors_origins=(ORIGIN,),
    )
    app = create_app(settings, environ={}, credits=credits)
    SQLModel.metadata.create_all(app.state.engine)  # what its Alembic migration makes
    return app


async def fullstack_login(client: httpx.AsyncClient, name: str) -> tuple[str, dict[str, str]]:
    """Sign up (which provisions the trial) and log in through the app's own routes."""
    email, password = f"{name}@example.com", "correct horse battery staple"
    r = await client.post("/api/v1/users/signup", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    r = await client.post(
        "/api/v1/login/access-token", data={"username": email, "password": password}
    )
    assert r.status_code == 200, r.text
    access = str(r.json()["access_token"])
    return _sub(access), {"Authorization": f"Bearer {access}"}


def _sub(jwt: str) -> str:
    """The account a token names: its ``sub`` (read, not verified: the app just signed it)."""
    payload = jwt.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


SHAPES: list[Shape] = [
    Shape("starlette", starlette_app, websocket="/v1/ws", stream="/v1/stream"),
    Shape("fastapi-nested-routers", fastapi_routers, priced="/v1/items/7", unserved="/v1/items/x"),
    Shape("fastapi-sync-in-router", fastapi_routers, priced="/v1/items/sync/3"),
    Shape(
        "sub-app-metering-itself",
        mounted_inner,
        priced="/api/v1/priced",
        unserved="/api/v1/missing",
        websocket="/api/v1/ws",
        stream="/api/v1/stream",
    ),
    Shape(
        "sub-app-metered-from-outside",
        mounted_outer,
        priced="/api/v1/priced",
        unserved="/api/v1/missing",
        meter="/api/v1/*",
        websocket="/api/v1/ws",
    ),
    Shape("root-path-of-the-server", starlette_app, root_path="/api", websocket="/v1/ws"),
    Shape(
        "root-path-of-the-app",
        root_path_of_the_app,
        priced="/api/v1/priced",
        unserved="/api/v1/missing",
        stream="/api/v1/stream",
    ),
    Shape("cors-inside", cors_inside, cors_origin=ORIGIN, websocket="/v1/ws"),
    Shape("cors-outside", cors_outside, cors_origin=ORIGIN),
    Shape("auth-inside", auth_inside, login=session_login, cors_origin=ORIGIN, websocket="/v1/ws"),
    Shape("auth-outside", auth_outside, login=session_login, websocket="/v1/ws"),
    Shape("gzip", gzip, stream="/v1/stream"),
    Shape("sync-endpoint", sync_endpoints),
    Shape(
        "fullstack-template",
        fullstack,
        priced="/api/v1/items/",
        price=Decimal("0.001"),  # the default price of what it meters
        unserved="/api/v1/items/00000000-0000-4000-8000-000000000000",
        login=fullstack_login,
        meter="/api/v1/items*",
        cors_origin=ORIGIN,
    ),
]
