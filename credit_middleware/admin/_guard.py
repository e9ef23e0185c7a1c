"""Who may use the admin app: a caller-supplied async check, or a signed-in browser session.

Nothing is open by default. The guard answers before routing, so an unauthorised caller learns
nothing, not even which paths exist: 401 without credentials, 403 with wrong ones, the same
short body every time. With sign-in configured, a browser asking for a page without a session
is sent to the login form instead; a write made with a session must come from the app's own
origin and carry the session's CSRF token (checked here for ``/api/*``, by the form handler
for the HTML forms).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConfigurationError
from ..problems import ProblemResponse
from ._session import COOKIE, Session, Sessions

__all__ = ["AdminGuard", "Authorize", "Operator", "bearer_token_guard", "operator_of"]

log = logging.getLogger("credit_middleware.admin")

#: ``authorize(request) -> bool``: True lets the request through.
Authorize = Callable[[Request], Awaitable[bool]]

_MIN_TOKEN = 16
_BASE = "urn:credit-middleware:problem:"


def bearer_token_guard(token: str) -> Authorize:
    """A guard accepting ``Authorization: Bearer <token>``, compared in constant time.

    The token must be at least 16 characters: an admin token is a secret, not a password.
    """
    if not isinstance(token, str) or len(token.strip()) < _MIN_TOKEN:
        raise ConfigurationError(
            f"the admin bearer token must be a string of at least {_MIN_TOKEN} characters"
        )
    expected = token.strip().encode("utf-8")

    async def authorize(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected)

    return authorize


_SAFE = ("GET", "HEAD", "OPTIONS")
#: Paths the guard lets through unauthenticated: the sign-in form checks credentials itself.
_OPEN = ("/login",)
_SCOPE_KEY = "credit_admin.operator"


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is making an admin request: ``via`` is ``"bearer"`` (a script) or ``"session"``."""

    user: str
    via: str
    session: Session | None = None


def operator_of(request: Request) -> Operator:
    """The operator the guard let through (``bearer`` for a custom ``authorize`` check)."""
    found = request.scope.get(_SCOPE_KEY)
    return found if isinstance(found, Operator) else Operator("bearer", "bearer")


def route_path(scope: Scope) -> str:
    """The path inside the mount (what the admin app's routes see)."""
    path: str = scope["path"]
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def mount_root(scope: Scope) -> str:
    """Where the admin app is mounted (``/admin``), or ``""`` at the top."""
    return str(scope.get("root_path", "")).rstrip("/")


def _same_origin(request: Request) -> bool:
    """A write from a browser names its page's origin; it must be this host (SameSite=Strict
    already keeps other sites' cookies out; this is the second lock)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True  # not a browser form post (browsers send Origin on POST)
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _refusal(status: int) -> ProblemResponse:
    reason, title = ("unauthenticated", "Authentication required")
    headers = {"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"}
    if status == 403:
        reason, title = ("forbidden", "Forbidden")
        headers = {"Cache-Control": "no-store"}
    body = {"type": _BASE + reason, "title": title, "status": status}
    return ProblemResponse(body, status_code=status, headers=headers)


class AdminGuard:
    """Pure ASGI: lets a request through when ``authorize`` accepts it or it carries a valid
    session cookie (``sessions``); refuses everything else before the app sees it."""

    #: The mount answers for itself: a billing middleware in front must exempt ``/admin/*``.
    billing_exempt = True

    def __init__(
        self,
        app: ASGIApp,
        *,
        authorize: Authorize | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        if authorize is None and sessions is None:
            raise ConfigurationError(
                "the admin app needs authorize=<async check> (e.g. bearer_token_guard(token))"
                " or a sign-in (token= or login=); nothing is open by default"
            )
        if authorize is not None and not callable(authorize):
            raise ConfigurationError("authorize must be an async callable(request) -> bool")
        self.app = app
        self.authorize = authorize
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return  # websockets: none served here
        request = Request(scope, receive)
        path = route_path(scope)
        if self.sessions is not None and path in _OPEN:
            await self.app(scope, receive, send)
            return
        if await self._authorized(request):
            scope[_SCOPE_KEY] = Operator("bearer", "bearer")
            await self.app(scope, receive, send)
            return
        session = self.sessions.read(request.cookies.get(COOKIE)) if self.sessions else None
        if session is not None and self.sessions is not None:
            if request.method not in _SAFE and not self._write_ok(request, path, session):
                await _refusal(403)(scope, receive, send)
                return
            scope[_SCOPE_KEY] = Operator(session.user, "session", session)
            await self.app(scope, receive, send)
            return
        has_credentials = "authorization" in request.headers
        if self.sessions is not None and not has_credentials and _wants_page(request):
            query = scope.get("query_string", b"").decode("latin-1")
            back = path + ("?" + query if query else "")
            target = mount_root(scope) + "/login?next=" + quote(back, safe="/")
            await RedirectResponse(target, status_code=303)(scope, receive, send)
            return
        await _refusal(403 if has_credentials else 401)(scope, receive, send)

    async def _authorized(self, request: Request) -> bool:
        if self.authorize is None:
            return False
        try:
            return await self.authorize(request) is True
        except Exception:  # a failing guard is a closed door, never an open one
            log.exception("admin authorize check failed; refusing")
            return False

    def _write_ok(self, request: Request, path: str, session: Session) -> bool:
        assert self.sessions is not None
        if not _same_origin(request):
            return False
        if path.startswith("/api/"):  # JSON writes: the token travels in a header
            return self.sessions.csrf_ok(session, request.headers.get("x-csrf-token"))
        return True  # HTML forms: their handlers check the csrf field (see _forms)


def _wants_page(request: Request) -> bool:
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", "")
