"""Bearer JWTs: HS256 with a shared secret, or RS256/ES256 with keys from a JWKS.

JWKS keys are cached and refetched when a token names an unknown ``kid`` (key rotation, the
way Keycloak's realm certs rotate) — at most once per ``min_refresh`` seconds, so a flood of
forged ``kid``s cannot turn into a flood of fetches — and at the latest every ``refresh``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.types import Scope

from .._extras import optional
from ..errors import BackendUnavailable, ConfigurationError
from .resolvers import Identity, InvalidCredentials, _make_identity, header

__all__ = ["JWTResolver"]

_HMAC = ("HS256", "HS384", "HS512")
_ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "ES512", "EdDSA")


def _jwt() -> Any:
    return optional("jwt", "JWT needs PyJWT", "jwt")


class JWTResolver:
    """``Authorization: Bearer <jwt>`` → :class:`Identity` (``sub`` is the account id).

    Give ``secret`` (HMAC) or ``jwks_url`` / ``jwks`` (public keys), not both. ``exp`` and
    ``sub`` are required; ``nbf`` is checked when present; ``issuer`` and ``audience`` when
    configured. ``email``, ``email_verified`` and (if ``tier_claim``) the tier are kept.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        jwks_url: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        algorithms: Sequence[str] | None = None,
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        leeway: float = 0.0,
        tier_claim: str | None = "tier",
        max_length: int = 8192,
        refresh: float = 3600.0,
        min_refresh: float = 30.0,
        timeout: float = 3.0,
        cache_size: int = 4096,
        cache_ttl: float = 60.0,
    ) -> None:
        self._jwt = _jwt()
        if sum(x is not None for x in (secret, jwks_url, jwks)) != 1:
            raise ConfigurationError("JWTResolver needs exactly one of secret, jwks_url, jwks")
        if secret is not None:
            self._secret: bytes | None = secret.encode() if isinstance(secret, str) else secret
            if len(self._secret) < 32:
                raise ConfigurationError("a JWT HMAC secret must be at least 32 bytes long")
            allowed: tuple[str, ...] = _HMAC
        else:
            self._secret = None
            allowed = _ASYMMETRIC
        algs = tuple(algorithms or (("HS256",) if secret is not None else ("RS256", "ES256")))
        bad = [a for a in algs if a not in allowed]
        if bad:  # mixing families is how key-confusion attacks work
            raise ConfigurationError(f"algorithms {bad} do not fit this key type: use {allowed}")
        self._algs = list(algs)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._tier_claim = tier_claim
        self._max = max_length
        self._jwks_url = jwks_url
        self._refresh = refresh
        self._min_refresh = min_refresh
        self._timeout = timeout
        # token -> (claims, valid until): a token already verified is not parsed and checked
        # again on every request. An entry lives until the token's exp or cache_ttl, whichever
        # is sooner, so a key withdrawn from the JWKS stops working within cache_ttl.
        self._verified: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._keys: dict[str | None, Any] = {}
        self._fetched = float("-inf")
        self._lock = asyncio.Lock()
        if jwks is not None:
            self._load(jwks)
            self._fetched = float("inf")

    def _load(self, data: Mapping[str, Any]) -> None:
        try:
            keyset = self._jwt.PyJWKSet.from_dict(dict(data))
        except self._jwt.PyJWTError as exc:
            raise BackendUnavailable("jwks", f"unusable key set: {exc}") from None
        self._keys = {k.key_id: k for k in keyset.keys}

    async def _fetch(self) -> None:
        assert self._jwks_url is not None
        client = self._jwt.PyJWKClient(self._jwks_url, cache_jwk_set=False, timeout=self._timeout)
        try:
            data = await asyncio.wait_for(asyncio.to_thread(client.fetch_data), self._timeout + 1)
        except (asyncio.TimeoutError, self._jwt.PyJWTError, OSError) as exc:
            raise BackendUnavailable("jwks", repr(exc)) from None
        self._load(data)

    async def _key(self, kid: str | None) -> Any:
        stale = time.monotonic() - self._fetched
        if self._jwks_url is not None and (
            stale > self._refresh or (kid not in self._keys and stale > self._min_refresh)
        ):
            async with self._lock:  # one fetch for a herd of requests
                if time.monotonic() - self._fetched > self._min_refresh:
                    try:
                        await self._fetch()
                    except BackendUnavailable:
                        if not self._keys:
                            raise  # nothing to check tokens with
                    self._fetched = time.monotonic()
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        if key is None:
            raise InvalidCredentials("token signed with an unknown key")
        return key.key

    async def resolve(self, scope: Scope) -> Identity | None:
        value = header(scope, b"authorization")
        if value is None:
            return None
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = token.strip()
        if not token:
            raise InvalidCredentials("empty bearer token")
        if len(token) > self._max:
            raise InvalidCredentials("bearer token is too long")
        return self._identity(await self.decode(token))

    async def decode(self, token: str) -> dict[str, Any]:
        """Verify a token and return its claims; :class:`InvalidCredentials` if it is bad."""
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None:
            if now < cached[1]:
                return cached[0]
            del self._verified[token]
        claims = await self._verify(token)
        if self._cache_size > 0 and len(token) <= 4096:
            exp = claims.get("exp")
            until = now + self._cache_ttl
            if isinstance(exp, (int, float)) and not isinstance(exp, bool):
                until = min(until, exp + self._leeway)
            self._verified[token] = (claims, until)
            while len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        return claims

    async def _verify(self, token: str) -> dict[str, Any]:
        jwt = self._jwt
        try:
            head = jwt.get_unverified_header(token)
            if head.get("alg") not in self._algs:
                raise InvalidCredentials(f"token algorithm {head.get('alg')!r} is not accepted")
            key = self._secret if self._secret is not None else await self._key(head.get("kid"))
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self._algs,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidCredentials("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidCredentials("token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise InvalidCredentials("token issuer is not accepted") from None
        except jwt.InvalidAudienceError:
            raise InvalidCredentials("token audience is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidCredentials(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidCredentials("token signature is invalid") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidCredentials("malformed token") from None
        return claims

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        sub = claims.get("sub")
        if not isinstance(sub, str):
            raise InvalidCredentials("token subject must be a string")
        email = claims.get("email")
        verified = claims.get("email_verified")
        tier = claims.get(self._tier_claim) if self._tier_claim else None
        return _make_identity(
            sub,
            source="jwt",
            email=email if isinstance(email, str) and len(email) <= 320 else None,
            email_verified=verified if isinstance(verified, bool) else None,
            tier=tier if isinstance(tier, str) and 0 < len(tier) <= 64 else None,
            claims=claims,
        )
