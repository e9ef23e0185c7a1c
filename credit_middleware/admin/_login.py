"""Signing in from a browser: the login form, its check, the session cookie, signing out.

The form is protected against login CSRF by a double-submit nonce (a short-lived cookie that
must match a hidden field). Wrong credentials are answered after the same work as right ones,
and an app instance refuses sign-ins for a minute after 20 failures within one (a brute-force
brake; the admin token has at least 16 characters anyway).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..errors import ConfigurationError
from ._guard import mount_root, operator_of
from ._html import esc, html_page, page
from ._inputs import Problem, form_body
from ._session import COOKIE, LOGIN_COOKIE, Sessions

__all__ = ["Login", "LoginRoutes", "checked_form", "credentials_login", "token_login"]

log = logging.getLogger("credit_middleware.admin")

#: ``login(username, password) -> bool``: True signs the operator in as ``username``.
Login = Callable[[str, str], Awaitable[bool]]

_MIN_PASSWORD = 12
_FAILURES, _WINDOW = 20, 60.0


def token_login(token: str) -> Login:
    """Sign in with the admin token as the password (any user name, shown as given)."""
    expected = token.strip().encode("utf-8")

    async def login(username: str, password: str) -> bool:
        return hmac.compare_digest(password.strip().encode("utf-8", "surrogateescape"), expected)

    return login


def credentials_login(users: Mapping[str, str]) -> Login:
    """Sign in with one of the configured ``{user: password}`` pairs (passwords of at least
    12 characters), compared in constant time."""
    if not users or not all(
        isinstance(u, str) and u and isinstance(p, str) and len(p) >= _MIN_PASSWORD
        for u, p in users.items()
    ):
        raise ConfigurationError(
            f"credentials_login needs {{user: password}} with passwords of >= {_MIN_PASSWORD}"
            " characters"
        )
    table = {u: p.encode("utf-8") for u, p in users.items()}
    decoy = secrets.token_bytes(32)

    async def login(username: str, password: str) -> bool:
        expected = table.get(username)
        ok = hmac.compare_digest(
            password.encode("utf-8", "surrogateescape"), expected if expected else decoy
        )
        return ok and expected is not None

    return login


async def checked_form(request: Request, sessions: Sessions | None) -> dict[str, str]:
    """The posted form, after checking its CSRF token when the request came with a session."""
    data = await form_body(request)
    operator = operator_of(request)
    if operator.via == "session":
        assert sessions is not None and operator.session is not None
        if not sessions.csrf_ok(operator.session, data.get("csrf")):
            raise Problem(403, "csrf-failed", "the form is stale or forged: reload the page")
    return data


def _safe_next(root: str, raw: str | None) -> str:
    """Only a path inside the admin app: never another site (``//evil``, ``https://...``)."""
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw:
        return root + "/"
    return root + raw


class LoginRoutes:
    """``GET/POST /login`` and ``POST /logout``."""

    def __init__(self, sessions: Sessions, login: Login, title: str) -> None:
        self.sessions = sessions
        self.check = login
        self.title = title
        self._failures: deque[float] = deque()

    def _form(
        self, request: Request, error: str = "", status: int = 200, nxt: str | None = None
    ) -> Response:
        nonce = secrets.token_urlsafe(16)
        root = mount_root(request.scope)
        nxt = nxt if nxt is not None else request.query_params.get("next", "/")
        message = f'<p class="error" id="login-error">{esc(error)}</p>' if error else ""
        body = (
            f'<div class="login box"><h1>{esc(self.title)}: sign in</h1>{message}'
            f'<form method="post" action="{esc(root)}/login" id="login">'
            f'<input type="hidden" name="nonce" value="{esc(nonce)}">'
            f'<input type="hidden" name="next" value="{esc(nxt)}">'
            '<label for="username">User</label>'
            '<input id="username" name="username" autocomplete="username" value="admin">'
            '<label for="password">Password or admin token</label>'
            '<input id="password" name="password" type="password"'
            ' autocomplete="current-password" required>'
            '<p><button type="submit" id="sign-in">Sign in</button></p></form></div>'
        )
        cookie = self.sessions.cookie(
            request.url.scheme, root or "/", LOGIN_COOKIE, nonce, max_age=600
        )
        return html_page(page(f"{self.title}: sign in", body), status, {"Set-Cookie": cookie})

    async def page(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._submit(request)
        return self._form(request)

    async def _submit(self, request: Request) -> Response:
        try:
            data = await form_body(request)
        except Problem as exc:
            return self._form(request, exc.detail, exc.status)
        nxt = data.get("next", "/")
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(nonce, data.get("nonce", "")):
            return self._form(request, "The sign-in form expired; please try again.", 403, nxt)
        now = time.monotonic()
        while self._failures and self._failures[0] < now - _WINDOW:
            self._failures.popleft()
        if len(self._failures) >= _FAILURES:
            return self._form(request, "Too many failed sign-ins; wait a minute.", 429, nxt)
        user = data.get("username", "").strip() or "admin"
        password = data.get("password", "")
        if len(user) > 64 or "\x00" in user + password or len(password) > 1024:
            return self._form(request, "Wrong user or password.", 401, nxt)
        try:
            ok = await self.check(user, password) is True
        except Exception:  # a failing check signs nobody in
            log.exception("admin login check failed; refusing")
            ok = False
        if not ok:
            self._failures.append(now)
            log.warning("admin sign-in refused")
            return self._form(request, "Wrong user or password.", 401, nxt)
        value, _ = self.sessions.issue(user)
        root = mount_root(request.scope)
        response = RedirectResponse(_safe_next(root, nxt), status_code=303)
        scheme = request.url.scheme
        response.headers.append(
            "Set-Cookie",
            self.sessions.cookie(scheme, root or "/", COOKIE, value, self.sessions.ttl),
        )
        response.headers.append(
            "Set-Cookie", self.sessions.cookie(scheme, root or "/", LOGIN_COOKIE, "", 0)
        )
        response.headers["Cache-Control"] = "no-store"
        log.info("admin signed in (user %r)", user)
        return response

    async def logout(self, request: Request) -> Response:
        try:
            await checked_form(request, self.sessions)
        except Problem as exc:
            return exc.response()
        root = mount_root(request.scope)
        response = RedirectResponse(root + "/login", status_code=303)
        response.headers.append(
            "Set-Cookie", self.sessions.cookie(request.url.scheme, root or "/", COOKIE, "", 0)
        )
        return response
