"""Who is calling: the :class:`Identity` every provisioning layer works from, and the resolvers
that find it in a request.

Resolvers are chained: each returns an :class:`Identity`, ``None`` ("no credential of mine
here, ask the next one"), or raises :class:`InvalidCredentials` ("a credential of mine is here
and it is bad" — the chain stops, the caller gets a 401 and nothing is created).
"""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from starlette.types import Scope

from ..errors import BackendUnavailable, ConfigurationError, CreditError, InvalidAccountId
from ..money import check_account_id

__all__ = [
    "ApiKeyResolver",
    "ChainResolver",
    "HeaderResolver",
    "Identity",
    "IdentityResolver",
    "InvalidCredentials",
    "ScopeUserResolver",
    "TrustedProxies",
    "header",
]

#: Longest header value a resolver reads; longer is refused, never parsed.
MAX_CREDENTIAL_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller, resolved from a token, an API key, a header or a signup.

    ``account_id`` is the stable subject (the IdP's ``sub``), not the e-mail: e-mails change.
    """

    account_id: str
    email: str | None = None
    email_verified: bool | None = None
    tier: str | None = None
    client_ip: str | None = None
    source: str = "unknown"
    claims: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_account_id(self.account_id)

    def seen_from(self, client_ip: str | None) -> Identity:
        """This identity with the client address it was seen from (itself if it has it)."""
        if client_ip == self.client_ip:
            return self
        return Identity(
            account_id=self.account_id,
            email=self.email,
            email_verified=self.email_verified,
            tier=self.tier,
            client_ip=client_ip,
            source=self.source,
            claims=self.claims,
        )

    @classmethod
    def of(cls, value: Identity | str) -> Identity:
        return value if isinstance(value, Identity) else cls(account_id=value)


class InvalidCredentials(CreditError):
    """A credential was presented and is forged, expired, malformed or unknown (a 401)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class IdentityResolver(Protocol):
    async def resolve(self, scope: Scope) -> Identity | None:
        """The caller's identity, None if this resolver's credential is absent."""


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header (``name`` lower-case), or None.

    Raises :class:`InvalidCredentials` for a value that is too long or not ASCII: a
    credential is never guessed at from undecodable bytes.
    """
    for key, value in scope.get("headers", ()):
        if key == name:
            if len(value) > MAX_CREDENTIAL_LENGTH:
                raise InvalidCredentials(f"the {name.decode()} header is too long")
            try:
                return str(value.decode("ascii"))
            except UnicodeDecodeError:
                raise InvalidCredentials(f"the {name.decode()} header is not ASCII") from None
    return None


def _make_identity(account_id: object, *, source: str, **fields: Any) -> Identity:
    try:
        return Identity(account_id=account_id, source=source, **fields)  # type: ignore[arg-type]
    except InvalidAccountId as exc:
        raise InvalidCredentials(f"unusable account id: {exc}") from None


class TrustedProxies:
    """Which peers may speak for the client (forwarded address, identity headers).

    Empty by default: ``X-Forwarded-For`` is then never read, and the client address is the
    TCP peer. Entries are addresses or networks (``10.0.0.0/8``).
    """

    def __init__(
        self, proxies: Iterable[str] = (), *, forwarded_header: str = "x-forwarded-for"
    ) -> None:
        if isinstance(proxies, str):
            raise ConfigurationError("trusted_proxies is a list of addresses or networks")
        try:
            self._nets = tuple(ipaddress.ip_network(p.strip(), strict=False) for p in proxies)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigurationError(f"trusted_proxies: {exc}") from None
        self._header = forwarded_header.lower().encode("latin-1")

    def __bool__(self) -> bool:
        return bool(self._nets)

    def trusts(self, host: str | None) -> bool:
        if not host or not self._nets:
            return False
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self._nets)

    def client_ip(self, scope: Scope) -> str | None:
        """The client address: the peer's, or from a trusted proxy the nearest untrusted hop
        of the forwarded chain (read right to left, so a client can't forge its way in)."""
        client = scope.get("client")
        peer: str | None = str(client[0]) if client else None
        if not self.trusts(peer):
            return peer
        raw = None
        for key, value in scope.get("headers", ()):
            if key == self._header:
                raw = value
        if raw is None or len(raw) > MAX_CREDENTIAL_LENGTH:
            return peer
        hops = [h.strip() for h in str(raw.decode("latin-1")).split(",")]
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer
            if not self.trusts(hop):
                return hop
        return peer


class ScopeUserResolver:
    """The user Starlette's ``AuthenticationMiddleware`` put in ``scope["user"]``: its
    ``identity``, or its ``display_name`` when its class leaves ``identity`` unimplemented
    (Starlette's ``BaseUser`` raises ``NotImplementedError`` for both)."""

    async def resolve(self, scope: Scope) -> Identity | None:
        user = scope.get("user")
        if user is None or not _user_attribute(user, "is_authenticated"):
            return None
        for name in ("identity", "display_name"):
            account_id = _user_attribute(user, name)
            if isinstance(account_id, (int, uuid.UUID)) and not isinstance(account_id, bool):
                account_id = str(account_id)
            if account_id:
                return _make_identity(account_id, source="scope_user")
        raise InvalidCredentials(
            f"request.user ({type(user).__name__}) has neither an identity nor a display_name"
        )


def _user_attribute(user: object, name: str) -> Any:
    try:
        return getattr(user, name, None)
    except NotImplementedError:
        return None


class HeaderResolver:
    """A user id in a header set by a trusted proxy (``X-User-ID``); ignored from anyone else."""

    def __init__(
        self,
        proxies: TrustedProxies | Iterable[str],
        *,
        header: str = "x-user-id",
        email_header: str | None = None,
        tier_header: str | None = None,
    ) -> None:
        self._proxies = proxies if isinstance(proxies, TrustedProxies) else TrustedProxies(proxies)
        self._header = header.lower().encode("latin-1")
        self._email = email_header.lower().encode("latin-1") if email_header else None
        self._tier = tier_header.lower().encode("latin-1") if tier_header else None

    async def resolve(self, scope: Scope) -> Identity | None:
        client = scope.get("client")
        if not self._proxies.trusts(client[0] if client else None):
            return None
        account_id = _header_of(scope, self._header)
        if account_id is None:
            return None
        email = _header_of(scope, self._email) if self._email else None
        tier = _header_of(scope, self._tier) if self._tier else None
        return _make_identity(account_id, source="header", email=email, tier=tier)


def _header_of(scope: Scope, name: bytes) -> str | None:
    # A trusted proxy may pass UTF-8 ids (Starlette decodes headers as latin-1; we do not).
    for key, value in scope.get("headers", ()):
        if key == name:
            if len(value) > MAX_CREDENTIAL_LENGTH:
                raise InvalidCredentials("an identity header is too long")
            try:
                return str(value.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidCredentials("an identity header is not UTF-8") from None
    return None


ApiKeyLookup = Callable[[str], Awaitable["Identity | None"]]


class ApiKeyResolver:
    """An API key in a header, resolved by your own async ``lookup`` (None = unknown key)."""

    def __init__(
        self, lookup: ApiKeyLookup, *, header: str = "x-api-key", timeout: float = 2.0
    ) -> None:
        self._lookup = lookup
        self._header = header.lower().encode("latin-1")
        self._timeout = timeout

    async def resolve(self, scope: Scope) -> Identity | None:
        key = header(scope, self._header)
        if key is None:
            return None
        key = key.strip()
        if not key or len(key) > 512:
            raise InvalidCredentials("malformed API key")
        try:
            found = await asyncio.wait_for(self._lookup(key), self._timeout)
        except asyncio.TimeoutError:
            raise BackendUnavailable("api-key lookup", "timed out") from None
        except InvalidAccountId as exc:  # the key's owner has an unusable id: not our outage
            raise InvalidCredentials(f"unusable account id: {exc}") from None
        if found is None:
            raise InvalidCredentials("unknown API key")
        return found if found.source != "unknown" else replace(found, source="api_key")


class ChainResolver:
    """Ask each resolver in turn; the first identity wins, the first bad credential stops."""

    def __init__(self, *resolvers: IdentityResolver) -> None:
        self.resolvers = resolvers

    async def resolve(self, scope: Scope) -> Identity | None:
        for resolver in self.resolvers:
            found = await resolver.resolve(scope)
            if found is not None:
                return found
        return None
