"""Who signed up: the new user read from a signup handler's result (its ``user_id`` or ``id``,
its e-mail) and the request (the client's address, through the trusted proxies), or built from
what a hook such as fastapi-users' ``on_after_register`` knows (:func:`identity_for`)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..identity.resolvers import Identity, TrustedProxies

__all__ = ["AccountIdGetter", "default_account_id", "identity_for"]

#: Reads the new user from the handler's result and the request: an account id, a full
#: :class:`Identity`, or None when there is nobody to provision (e.g. the signup was refused).
AccountIdGetter = Callable[[Any, "Request | None"], "str | Identity | None"]

_MAX_BODY = 65_536


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _payload(result: Any) -> Any:
    """The data a handler returned; a Response's JSON body if it is one (and a success)."""
    if isinstance(result, Response):
        if not 200 <= result.status_code < 300:
            return None
        body = getattr(result, "body", None)  # streaming responses have none
        if not isinstance(body, bytes) or not body or len(body) > _MAX_BODY:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None
    return result


def _user_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, uuid.UUID)):
        return str(value)
    return value if isinstance(value, str) else None


def default_account_id(result: Any, request: Request | None) -> str | Identity | None:
    """The ``user_id`` key or attribute of the handler's result (or of its JSON body), else
    its ``id`` (what fastapi-users and most ORMs return); ints and UUIDs become strings."""
    data = _payload(result)
    if data is None:
        return None
    for name in ("user_id", "id"):
        found = _user_id(_field(data, name))
        if found is not None:
            return found
    return None


def identity_for(
    user: Identity | str | int | Any,
    *,
    email: str | None = None,
    email_verified: bool | None = None,
    tier: str | None = None,
    client_ip: str | None = None,
    request: Any = None,
    proxies: TrustedProxies | None = None,
) -> Identity:
    """An :class:`Identity` for a new user: an id (``str``/``int``/``UUID``) or an identity,
    with what the signup knows. The client address comes from ``request`` through the
    trusted ``proxies`` (the client's, not the proxy's) unless ``client_ip`` is given."""
    if isinstance(user, Identity):
        ident = user
    else:
        account_id = _user_id(user)
        if account_id is None:
            raise ValueError(f"a user id must be a str, int or UUID, not {type(user).__name__}")
        ident = Identity(account_id, source="signup")
    changes: dict[str, Any] = {}
    if email is not None and ident.email is None:
        changes["email"] = email
    if email_verified is not None and ident.email_verified is None:
        changes["email_verified"] = email_verified
    if tier is not None and ident.tier is None:
        changes["tier"] = tier
    if ident.client_ip is None:
        if client_ip is None and request is not None:
            client_ip = _client_ip(request, proxies)
        if client_ip is not None:
            changes["client_ip"] = client_ip
    return dataclasses.replace(ident, **changes) if changes else ident


def _client_ip(request: Any, proxies: TrustedProxies | None) -> str | None:
    scope = getattr(request, "scope", None)
    if not isinstance(scope, Mapping):
        return None
    return (proxies or TrustedProxies()).client_ip(scope)  # type: ignore[arg-type]


def _identity(
    getter: AccountIdGetter,
    result: Any,
    request: Request | None,
    proxies: TrustedProxies | None = None,
) -> Identity | None:
    found = getter(result, request)
    if found is None:
        return None
    ident = Identity.of(found)
    changes: dict[str, Any] = {}
    data = _payload(result)
    if ident.email is None:
        email = _field(data, "email") if data is not None else None
        if email is None and request is not None:
            email = _field(_request_json(request), "email")
        if isinstance(email, str) and "@" in email:
            changes["email"] = email
    if ident.email_verified is None and data is not None:
        verified = _field(data, "email_verified")
        if isinstance(verified, bool):
            changes["email_verified"] = verified
    if ident.client_ip is None and request is not None:
        client_ip = _client_ip(request, proxies)  # behind a proxy: the client's, not the proxy's
        if client_ip is not None:
            changes["client_ip"] = client_ip
    if ident.source == "unknown":
        changes["source"] = "signup"
    return dataclasses.replace(ident, **changes) if changes else ident


def _request_json(request: Request) -> Any:
    """The request's JSON body if the handler (or FastAPI) already read it and it is small;
    never reads the stream itself, so a slow client cannot stall the signup here."""
    body = getattr(request, "_body", None)
    if not isinstance(body, bytes) or not body or len(body) > _MAX_BODY:
        return None
    if "json" not in request.headers.get("content-type", ""):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None
