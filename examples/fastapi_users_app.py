"""fastapi-users' own example app (SQLAlchemy, JWT bearer), with credit-middleware adopted.

``uvicorn examples.fastapi_users_app:app``. The fastapi-users parts follow its documented
example (users in SQLite through aiosqlite, ``/auth/register``, ``/auth/jwt/login``,
``/auth/forgot-password``, ``/auth/verify``, ``/users/me``); the lines marked ``# credits``
are the whole adoption (the README counts them). Environment: ``CREDIT_DATABASE_URL``
(default ``sqlite:///./credits.db``), ``CREDIT_REDIS_URL`` (default none: in-memory limits),
``CREDIT_JWT_SECRET`` (the secret fastapi-users signs its JWTs with, 32 bytes or more),
``CREDIT_ADMIN_TOKEN`` (set: the admin app at ``/admin``), ``USERS_DATABASE_URL`` (default
``sqlite+aiosqlite:///./users.db``) and the other ``CREDIT_*`` variables of ``Credits``.
Only ``GET /v1/echo`` is metered; registration, login, password reset, verification, the
docs and the admin app need no credits.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas
from fastapi_users.authentication import AuthenticationBackend, BearerTransport, JWTStrategy
from fastapi_users.db import SQLAlchemyBaseUserTableUUID, SQLAlchemyUserDatabase
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from credit_middleware import CreditMiddleware, Credits  # credits

log = logging.getLogger("examples.fastapi_users_app")
DEV_SECRET = "dev-only-secret-change-me-0123456789abcdef"  # noqa: S105 - the dev default


class Base(DeclarativeBase):
    pass


class User(SQLAlchemyBaseUserTableUUID, Base):
    pass


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


class UserUpdate(schemas.BaseUserUpdate):
    pass


def create_app(*, environ: Mapping[str, str] | None = None) -> FastAPI:
    """The app, configured from ``environ`` (default: the process environment; tests pass
    their own). Tokens that a real app would e-mail (password reset, verification) are kept
    in ``app.state.outbox``."""
    env = os.environ if environ is None else environ
    secret = env.get("CREDIT_JWT_SECRET") or DEV_SECRET  # one secret for both  # credits
    if secret == DEV_SECRET:
        log.warning("CREDIT_JWT_SECRET is not set: using a development secret, never in production")
    url = env.get("USERS_DATABASE_URL", "sqlite+aiosqlite:///./users.db")
    engine = create_async_engine(url)
    session_maker = async_sessionmaker(engine, expire_on_commit=False)
    outbox: list[tuple[str, str, str]] = []  # (kind, email, token)
    tokens = {"jwt_secret": secret, "jwt_audience": "fastapi-users:auth"}  # its JWTs  # credits
    credits = Credits.from_env(env, meter="/v1/*", **tokens)  # credits

    async def get_async_session() -> AsyncGenerator[AsyncSession, None]:
        async with session_maker() as session:
            yield session

    async def get_user_db(
        session: AsyncSession = Depends(get_async_session),  # noqa: B008 - FastAPI's idiom
    ) -> AsyncGenerator[SQLAlchemyUserDatabase[User, uuid.UUID], None]:
        yield SQLAlchemyUserDatabase(session, User)

    class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
        reset_password_token_secret = secret
        verification_token_secret = secret

        async def on_after_register(self, user: User, request: Request | None = None) -> None:
            log.info("user %s has registered", user.id)
            await credits.provision(user.id, email=user.email, request=request)  # credits

        async def on_after_forgot_password(
            self, user: User, token: str, request: Request | None = None
        ) -> None:
            outbox.append(("reset", user.email, token))

        async def on_after_request_verify(
            self, user: User, token: str, request: Request | None = None
        ) -> None:
            outbox.append(("verify", user.email, token))

    async def get_user_manager(
        user_db: SQLAlchemyUserDatabase[User, uuid.UUID] = Depends(get_user_db),  # noqa: B008
    ) -> AsyncGenerator[UserManager, None]:
        yield UserManager(user_db)

    def get_jwt_strategy() -> JWTStrategy[User, uuid.UUID]:
        return JWTStrategy(secret=secret, lifetime_seconds=3600)

    auth_backend = AuthenticationBackend(
        name="jwt",
        transport=BearerTransport(tokenUrl="auth/jwt/login"),
        get_strategy=get_jwt_strategy,
    )
    fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [auth_backend])
    current_active_user = fastapi_users.current_user(active=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.state.outbox = outbox
    app.state.credits = credits
    app.include_router(
        fastapi_users.get_auth_router(auth_backend), prefix="/auth/jwt", tags=["auth"]
    )
    app.include_router(
        fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth", tags=["auth"]
    )
    app.include_router(fastapi_users.get_reset_password_router(), prefix="/auth", tags=["auth"])
    app.include_router(fastapi_users.get_verify_router(UserRead), prefix="/auth", tags=["auth"])
    app.include_router(
        fastapi_users.get_users_router(UserRead, UserUpdate), prefix="/users", tags=["users"]
    )

    @app.get("/authenticated-route")
    async def authenticated_route(user: User = Depends(current_active_user)) -> dict[str, str]:  # noqa: B008
        return {"message": f"Hello {user.email}!"}

    @app.get("/v1/echo")
    async def echo(request: Request, msg: str = "") -> dict[str, str]:
        return {"msg": msg, "balance": str(request.state.credit_balance)}

    if env.get("CREDIT_ADMIN_TOKEN"):  # credits
        app.mount("/admin", credits.admin(token=env["CREDIT_ADMIN_TOKEN"]))  # credits
    app.add_middleware(CreditMiddleware, credits=credits)  # credits
    return app


app = create_app()
