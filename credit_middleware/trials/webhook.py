"""IdP webhook receiver: provision users as the identity provider reports their registration.

A small ASGI app to mount (``Mount("/hooks/idp", app=WebhookReceiver(...))`` or
``Route(..., endpoint=receiver, methods=["POST"])``). It accepts Keycloak event-listener JSON
(``{"type": "REGISTER", "userId": ..., "realmId": ..., "ipAddress": ..., "details": {"email":
...}}``) and a generic ``{"event": "user.created", "user_id": ...}``. Keycloak's ``VERIFY_EMAIL``
and a generic ``user.email_verified`` say the user's e-mail is verified now: a trial denied for
an unverified e-mail is granted then (once), without waiting for the user's next request.

Every delivery is signed: ``X-Credit-Timestamp: <unix seconds>`` and ``X-Credit-Signature:
sha256=<hex HMAC-SHA256 of "<timestamp>." + raw body>`` with a shared secret. The timestamp
is inside the signed material, so an old delivery cannot be replayed with a fresh one; within
the tolerance a replay is harmless because provisioning is idempotent. Nothing is written for a
refused delivery; a ledger outage answers 503 so the IdP retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..errors import ConfigurationError, InvalidAccountId
from ..identity.resolvers import Identity
from .provisioning import Provisioner

__all__ = ["WebhookReceiver", "parse_event", "sign"]

log = logging.getLogger("credit_middleware.webhook")

_PROBLEM = "urn:credit-middleware:problem:"
SIGNATURE_HEADER = "x-credit-signature"
TIMESTAMP_HEADER = "x-credit-timestamp"


class _Malformed(ValueError):
    """The delivery is not a registration event we can read (answered 400)."""


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The signature header value for ``body`` sent at ``timestamp`` (for senders and tests)."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    mac = hmac.new(key, f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes ``²`` and other digits ``int`` refuses."""
    return text.isascii() and text.isdigit()


def _str(value: Any, name: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise _Malformed(f"{name} is missing")
        return None
    if not isinstance(value, str):
        raise _Malformed(f"{name} must be a string")
    return value


def parse_event(event: Mapping[str, Any]) -> Identity | None:
    """The identity a registration event is about; None for event types that are ignored.

    Raises ValueError for a body that is not a readable event.
    """
    if "type" in event and "event" not in event:  # Keycloak event listener
        if event["type"] not in ("REGISTER", "VERIFY_EMAIL"):
            return None
        details = event.get("details")
        details = {} if details is None else details
        if not isinstance(details, Mapping):
            raise _Malformed("details must be an object")
        user_id = _str(event.get("userId"), "userId", required=True)
        email = _str(details.get("email"), "details.email")
        client_ip = _str(event.get("ipAddress"), "ipAddress")
        verified = True if event["type"] == "VERIFY_EMAIL" else None
    elif "event" in event:
        if event["event"] not in ("user.created", "user.email_verified"):
            return None
        user_id = _str(event.get("user_id"), "user_id", required=True)
        email = _str(event.get("email"), "email")
        client_ip = _str(event.get("client_ip", event.get("ip")), "client_ip")
        verified = event.get("email_verified")
        if verified is not None and not isinstance(verified, bool):
            raise _Malformed("email_verified must be a boolean")
        if event["event"] == "user.email_verified":
            if verified is False:
                raise _Malformed("a user.email_verified event with email_verified false")
            verified = True
    else:
        raise _Malformed("not an event: expected a 'type' or an 'event' member")
    assert user_id is not None
    try:
        return Identity(
            account_id=user_id,
            email=email,
            email_verified=verified,
            client_ip=client_ip,
            source="webhook",
        )
    except InvalidAccountId as exc:
        raise _Malformed(f"user id: {exc}") from None


def _problem(status: int, reason: str, title: str, detail: str, **headers: str) -> Response:
    """An RFC 9457 problem response with a stable ``type``."""
    body = {"type": _PROBLEM + reason, "title": title, "status": status, "detail": detail}
    return JSONResponse(
        body, status_code=status, headers=headers or None, media_type="application/problem+json"
    )


class WebhookReceiver:
    """ASGI app receiving signed registration events and provisioning with ``layer="webhook"``.

    ``secret`` may be a list, to rotate secrets without downtime (any one verifies).
    ``realms`` limits Keycloak events to those realms. ``parse`` turns a JSON event into an
    :class:`Identity` (None to ignore it; ValueError for a malformed one).
    """

    def __init__(
        self,
        provisioner: Provisioner,
        *,
        secret: str | bytes | Sequence[str | bytes],
        tolerance: float = 300.0,
        max_body: int = 65_536,
        timeout: float = 5.0,
        realms: Iterable[str] | None = None,
        parse: Callable[[Mapping[str, Any]], Identity | None] = parse_event,
        defer_unverified: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        secrets = [secret] if isinstance(secret, (str, bytes)) else list(secret)
        keys = [s.encode("utf-8") if isinstance(s, str) else s for s in secrets]
        if not keys or any(len(k) < 16 for k in keys):
            raise ConfigurationError("webhook secret must be at least 16 bytes (use 32 random)")
        if tolerance <= 0 or max_body <= 0 or timeout <= 0:
            raise ConfigurationError("tolerance, max_body and timeout must be positive")
        self.provisioner = provisioner
        self._keys = keys
        self._tolerance = tolerance
        self._max_body = max_body
        self._timeout = timeout
        self._realms = frozenset(realms) if realms is not None else None
        self._parse = parse
        self._defer_unverified = defer_unverified
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        response = await self._handle(scope, receive)
        if response is not None:
            await response(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive) -> Response | None:
        if scope["method"] != "POST":
            return _problem(
                405, "method-not-allowed", "Method not allowed", "POST only", allow="POST"
            )
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not _digits(declared) or len(declared) > 20:
                return _problem(400, "invalid-request", "Malformed request", "bad Content-Length")
            if int(declared) > self._max_body:
                return self._too_large()
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self._max_body:
                return self._too_large()
            if not message.get("more_body", False):
                break
        refusal = self._verify(headers, bytes(body))
        if refusal is not None:
            return refusal
        try:
            event = json.loads(body)
            if not isinstance(event, dict):
                raise _Malformed("the body must be a JSON object")
            if self._realms is not None:
                realm = _str(event.get("realmId"), "realmId")
                if realm not in self._realms:
                    return JSONResponse({"status": "ignored", "reason": "realm"}, status_code=202)
            ident = self._parse(event)
        except RecursionError:  # nested deeper than the JSON parser goes
            return _problem(400, "invalid-request", "Malformed event", "nested too deeply")
        except ValueError as exc:  # JSONDecodeError and _Malformed are ValueErrors
            return _problem(400, "invalid-request", "Malformed event", str(exc)[:200])
        if ident is None:
            return JSONResponse({"status": "ignored"}, status_code=202)
        policy = self.provisioner.policy
        if self._defer_unverified and policy.require_verified_email and not ident.email_verified:
            # Left to the lazy layer, which sees the token's email_verified once it is true.
            self.provisioner.observer.provisioned("webhook", "deferred")
            return JSONResponse({"status": "deferred", "account_id": ident.account_id}, 202)
        try:
            result = await asyncio.wait_for(
                self.provisioner.ensure_account(ident, layer="webhook"), self._timeout
            )
        except Exception as exc:  # ledger down or slow: let the IdP retry the delivery
            log.warning("webhook provisioning failed: %r", exc)
            return _problem(
                503,
                "ledger-unavailable",
                "Billing temporarily unavailable",
                "provisioning failed; retry the delivery",
                **{"retry-after": "30"},
            )
        status = "granted" if result.granted else "existing"  # granted: a late trial
        if result.created:
            status = "created" if result.granted else "denied"
        body_out: dict[str, Any] = {"status": status, "account_id": result.account_id}
        body_out["granted"] = result.granted
        if result.reason:
            body_out["trial_denied"] = result.reason
        return JSONResponse(body_out, status_code=200)

    def _too_large(self) -> Response:
        return _problem(
            413, "payload-too-large", "Payload too large", f"at most {self._max_body} bytes"
        )

    def _verify(self, headers: Headers, body: bytes) -> Response | None:
        given = headers.get(SIGNATURE_HEADER, "")
        stamp = headers.get(TIMESTAMP_HEADER, "")
        if not given or not stamp:
            return self._unsigned("missing signature or timestamp header")
        if not _digits(stamp) or len(stamp) > 12:
            return self._unsigned("malformed timestamp")
        timestamp = int(stamp)
        offered = [p.strip() for p in given.split(",")][:4]
        good = any(
            hmac.compare_digest(sign(key, body, timestamp).encode(), sig.encode())
            for key in self._keys
            for sig in offered
        )
        if not good:
            return self._unsigned("signature does not match")
        if abs(self._clock() - timestamp) > self._tolerance:
            return _problem(
                401, "stale-signature", "Stale delivery", "timestamp outside the tolerance"
            )
        return None

    @staticmethod
    def _unsigned(detail: str) -> Response:
        return _problem(401, "invalid-signature", "Invalid signature", detail)
