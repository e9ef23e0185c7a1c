"""How ``admin_app``'s options become a guard: bearer checks for scripts, sessions for people.

* ``token="..."``: scripts send ``Authorization: Bearer <token>``; people sign in with the token
  as the password; the session key is derived from the token.
* ``authorize=<check>``: any async check of the request (the old way), bearer-style.
* ``login=<check>`` (e.g. ``credentials_login({"ops": "..."})``) with ``session_secret=``:
  people sign in with those credentials.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigurationError
from ._guard import Authorize, bearer_token_guard
from ._login import Login, token_login
from ._session import Sessions

__all__ = ["AuthConfig", "build_auth"]


@dataclass(frozen=True, slots=True)
class AuthConfig:
    authorize: Authorize | None
    sessions: Sessions | None
    login: Login | None


def build_auth(
    *,
    token: str | None,
    authorize: Authorize | None,
    login: Login | None,
    session_secret: str | bytes | None,
    session_ttl: float,
    secure_cookie: bool | None,
    clock: Callable[[], float] = time.time,
) -> AuthConfig:
    if token is not None:
        checked = bearer_token_guard(token)  # validates the token's length
        authorize = authorize if authorize is not None else checked
        login = login if login is not None else token_login(token)
        if session_secret is None:
            session_secret = Sessions.derive(token.strip())
    if authorize is None and login is None:
        raise ConfigurationError(
            "admin_app needs authorize=<async check>, e.g. bearer_token_guard(token), or"
            " token=<admin token> (scripts and browser sign-in); nothing is open by default"
        )
    if login is not None and not callable(login):
        raise ConfigurationError("login must be an async callable(user, password) -> bool")
    sessions = None
    if login is not None:
        if session_secret is None:
            raise ConfigurationError(
                "browser sign-in (login=) needs session_secret=<at least 32 bytes>,"
                " e.g. secrets.token_urlsafe(32), the same in every process"
            )
        sessions = Sessions(session_secret, ttl=session_ttl, secure=secure_cookie, clock=clock)
    elif session_secret is not None:
        raise ConfigurationError("session_secret= needs login= (or token=) to sign anyone in")
    return AuthConfig(authorize, sessions, login)
