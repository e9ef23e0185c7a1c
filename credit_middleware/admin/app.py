"""The admin API and pages: accounts, balance, history, grant, refund, adjust, tier, purchase,
verify, report, usage per route, CSV exports; a dashboard and account pages for people.

Mount it (``Mount("/admin", app=admin_app(ledger, token=...))``); every route sits behind
the guard (a bearer token for scripts, a signed session cookie for a signed-in browser).
Amounts travel as decimal strings of credits (``"2.5"``): a JSON number is refused, because a
float is not money. Every write needs an idempotency key (the ``Idempotency-Key``
header or an ``idempotency_key`` field); the same key twice moves money once. Errors are
``application/problem+json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConfigurationError
from ..ledger import Ledger
from ._api import Api, RefusalSource, problems
from ._auth import build_auth
from ._guard import AdminGuard, Authorize
from ._inputs import Problem
from ._login import Login, LoginRoutes
from ._tier_api import TierWrites
from .pages import Pages

__all__ = ["RefusalSource", "admin_app"]

_problems = problems
log = logging.getLogger("credit_middleware.admin")


def admin_app(
    ledger: Ledger,
    *,
    token: str | None = None,
    authorize: Authorize | None = None,
    login: Login | None = None,
    session_secret: str | bytes | None = None,
    session_ttl: float = 8 * 3600,
    secure_cookie: bool | None = None,
    tiers: Iterable[str] | None = None,
    refusals: RefusalSource | None = None,
    title: str = "Credit usage",
    clock: Callable[[], float] = time.time,
    prepare: Callable[[], Awaitable[None]] | None = None,
) -> ASGIApp:
    """The admin API, pages and dashboard as one ASGI app, behind a required guard.

    ``token`` (16+ characters) serves both scripts (``Authorization: Bearer``) and people (the
    login form takes it as the password; sessions are signed with a key derived from it).
    ``authorize`` is any async request check; ``login`` + ``session_secret`` sign people in
    with other credentials (``credentials_login``). ``tiers`` lists the tier names an operator
    may choose (the middleware's ``tiers`` keys); ``refusals`` feeds "recent refusals".
    ``prepare`` runs before an authorised request is served (``Credits.admin`` passes its
    ``ready``); by default the ledger is migrated on the first one, so the admin app works
    before (or without) the app's lifespan and its first metered request.
    Mount it at a path the billing middleware exempts (``/admin`` and ``/admin/*``):
    ``AdminGuard.billing_exempt`` marks it.
    """
    auth = build_auth(
        token=token,
        authorize=authorize,
        login=login,
        session_secret=session_secret,
        session_ttl=session_ttl,
        secure_cookie=secure_cookie,
        clock=clock,
    )
    if not isinstance(ledger, Ledger):
        raise ConfigurationError("admin_app needs a credit_middleware.Ledger")
    names = tuple(tiers or ())
    if not all(isinstance(t, str) and t for t in names):
        raise ConfigurationError("tiers must be tier names (the keys of the middleware's tiers)")
    api = Api(ledger, refusals, title)
    pages = Pages(ledger, auth.sessions, title, names)
    writes = TierWrites(ledger, auth.sessions, names)
    api.pages, api.writes = pages, writes
    routes = [
        Route("/", api.dashboard, methods=["GET"]),
        Route("/accounts", _problems(pages.accounts, pages), methods=["GET"]),
        Route("/account", _problems(pages.account, pages), methods=["GET"]),
        Route("/account/tier", _problems(writes.form, pages), methods=["POST"]),
        Route("/usage", _problems(pages.usage, pages), methods=["GET"]),
        Route("/export/history.csv", _problems(api.history_csv), methods=["GET"]),
        Route("/export/usage.csv", _problems(api.usage_csv), methods=["GET"]),
        Route("/export/accounts.csv", _problems(api.accounts_csv), methods=["GET"]),
        Route("/api/report", api.report, methods=["GET"]),
        Route("/api/verify", api.verify, methods=["GET"]),
        Route("/api/refusals", api.refusals, methods=["GET"]),
        Route("/api/usage", api.usage, methods=["GET"]),
        Route("/api/accounts", api.search, methods=["GET"]),
        Route("/api/accounts/{rest:path}", api.accounts, methods=["GET", "POST"]),
    ]
    if auth.sessions is not None and auth.login is not None:
        sign_in = LoginRoutes(auth.sessions, auth.login, title)
        routes.append(Route("/login", sign_in.page, methods=["GET", "POST"]))
        routes.append(Route("/logout", sign_in.logout, methods=["POST"]))
    ready = _Ready(Starlette(routes=routes), prepare or _migrate_once(ledger))
    return AdminGuard(ready, authorize=auth.authorize, sessions=auth.sessions)


def _migrate_once(ledger: Ledger) -> Callable[[], Awaitable[None]]:
    done = False

    async def migrate() -> None:
        nonlocal done
        if not done:
            await ledger.migrate()  # safe when several processes (or requests) do it at once
            done = True

    return migrate


class _Ready:
    """Serves a request only once the ledger's schema is there: a 503 problem (the ledger is
    not ready, retry) while it can't be, never a 500 for a table not made yet."""

    def __init__(self, app: ASGIApp, prepare: Callable[[], Awaitable[None]]) -> None:
        self.app = app
        self.prepare = prepare

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                await self.prepare()
            except Exception as exc:  # unreachable, or refused (a role without rights)
                log.warning("admin: the ledger is not ready: %r", exc)
                detail = "the ledger is unavailable or its schema is not migrated yet"
                if isinstance(exc, ConfigurationError):
                    detail = str(exc)
                refusal = Problem(503, "ledger-unavailable", detail).response()
                refusal.headers["Retry-After"] = "5"
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
