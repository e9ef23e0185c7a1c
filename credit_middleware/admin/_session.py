"""Browser sessions for the admin app: a signed cookie, its CSRF token, and how to check both.

The cookie holds ``v1.<user>.<expires>.<session id>.<signature>``: an HMAC-SHA256 over the rest,
keyed by the session secret, so it cannot be forged or extended, and it says when it ends (the
server checks that too; the cookie's Max-Age only tidies the browser). It is ``HttpOnly``
(no script reads it), ``SameSite=Strict`` (no other site's page sends it) and ``Secure`` on
https. Nothing is stored server-side: signing out clears the cookie; changing the secret (or
the admin token it is derived from) ends every session at once.

Writes made with a session also need a CSRF token (a synchronizer token derived from the session
id with the same key): the form field ``csrf`` or the ``X-CSRF-Token`` header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigurationError

__all__ = ["COOKIE", "LOGIN_COOKIE", "Session", "Sessions"]

COOKIE = "cm_admin_session"
LOGIN_COOKIE = "cm_admin_login"
_MIN_SECRET = 32
_MAX_COOKIE = 512


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in operator: who, until when (epoch seconds), and the session's id."""

    user: str
    expires: int
    sid: str


class Sessions:
    """Issues and checks session cookies and their CSRF tokens.

    ``secret`` must hold at least 32 bytes (``derive(token)`` makes one from the admin token).
    ``ttl`` is the session's lifetime in seconds; ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        ttl: float = 8 * 3600,
        secure: bool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else secret
        if not isinstance(key, bytes) or len(key) < _MIN_SECRET:
            raise ConfigurationError(
                f"the admin session secret must hold at least {_MIN_SECRET} bytes"
                " (e.g. secrets.token_urlsafe(32))"
            )
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 60 <= ttl <= 7 * 86400:
            raise ConfigurationError("session_ttl must be between 60 seconds and 7 days")
        if secure not in (None, True, False):
            raise ConfigurationError("secure_cookie must be True, False or None (auto: https)")
        self._key = hashlib.sha256(b"credit-middleware admin session v1\x00" + key).digest()
        self.ttl = int(ttl)
        self.secure = secure
        self.clock = clock

    @staticmethod
    def derive(token: str) -> bytes:
        """A session secret derived from the admin token (rotating the token ends sessions)."""
        return hmac.new(token.encode("utf-8"), b"credit-middleware admin cookie", "sha256").digest()

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode("ascii"), hashlib.sha256).digest())

    def issue(self, user: str) -> tuple[str, Session]:
        expires = int(self.clock()) + self.ttl
        session = Session(user, expires, secrets.token_urlsafe(16))
        body = f"v1.{_b64(user.encode('utf-8'))}.{expires}.{session.sid}"
        return f"{body}.{self._sign(body)}", session

    def read(self, value: str | None) -> Session | None:
        """The session a cookie value proves, or None (forged, altered, expired, malformed)."""
        if not value or len(value) > _MAX_COOKIE:
            return None
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != "v1":
            return None
        body, signature = ".".join(parts[:4]), parts[4]
        try:
            good = hmac.compare_digest(self._sign(body), signature)
        except (TypeError, UnicodeEncodeError):
            return None
        if not good or not parts[2].isdigit():
            return None
        expires = int(parts[2])
        if expires <= self.clock():
            return None
        try:
            user = _unb64(parts[1]).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return Session(user, expires, parts[3])

    def csrf(self, session: Session) -> str:
        return self._sign(f"csrf.{session.sid}")

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        if not given:
            return False
        try:
            return hmac.compare_digest(self.csrf(session), given)
        except (TypeError, UnicodeEncodeError):
            return False

    def cookie(self, scheme: str, path: str, name: str, value: str, max_age: int) -> str:
        """A ``Set-Cookie`` value with the attributes every admin cookie carries."""
        secure = self.secure if self.secure is not None else scheme in ("https", "wss")
        parts = [
            f"{name}={value}",
            f"Path={path}",
            f"Max-Age={max_age}",
            "HttpOnly",
            "SameSite=Strict",
        ]
        if secure:
            parts.append("Secure")
        return "; ".join(parts)
