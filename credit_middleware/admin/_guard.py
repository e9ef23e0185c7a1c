"""Who may use the admin app: a caller-supplied async check in front of every route.

Nothing is open by default. The guard answers before routing, so an unauthorised caller learns
nothing, not even which paths exist: 401 without credentials, 403 with wrong ones, the same
short body every time.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConfigurationError
from ..problems import ProblemResponse

__all__ = ["AdminGuard", "Authorize", "bearer_token_guard"]

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


def _refusal(status: int) -> ProblemResponse:
    reason, title = ("unauthenticated", "Authentication required")
    headers = {"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"}
    if status == 403:
        reason, title = ("forbidden", "Forbidden")
        headers = {"Cache-Control": "no-store"}
    body = {"type": _BASE + reason, "title": title, "status": status}
    return ProblemResponse(body, status_code=status, headers=headers)


class AdminGuard:
    """Pure ASGI: runs ``authorize`` on every HTTP request before ``app`` sees it."""

    def __init__(self, app: ASGIApp, *, authorize: Authorize) -> None:
        if not callable(authorize):
            raise ConfigurationError(
                "the admin app needs authorize=<async check>, e.g. bearer_token_guard(token);"
                " nothing is open by default"
            )
        self.app = app
        self.authorize = authorize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return  # websockets: none served here
        request = Request(scope, receive)
        try:
            allowed = await self.authorize(request) is True
        except Exception:  # a failing guard is a closed door, never an open one
            log.exception("admin authorize check failed; refusing")
            allowed = False
        if allowed:
            await self.app(scope, receive, send)
            return
        has_credentials = "authorization" in request.headers
        await _refusal(403 if has_credentials else 401)(scope, receive, send)
