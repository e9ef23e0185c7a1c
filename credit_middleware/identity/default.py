"""The middleware's default chain of identity resolvers, built from its options."""

from __future__ import annotations

from ..errors import ConfigurationError
from .jwt import JWTResolver
from .resolvers import (
    ApiKeyLookup,
    ApiKeyResolver,
    ChainResolver,
    HeaderResolver,
    IdentityResolver,
    ScopeUserResolver,
    TrustedProxies,
)

__all__ = ["default_resolver"]


def default_resolver(
    *,
    jwt_secret: str | None = None,
    jwks_url: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    api_key_lookup: ApiKeyLookup | None = None,
    proxies: TrustedProxies | None = None,
    user_header: str | None = None,
) -> ChainResolver:
    """The middleware's chain: ``scope["user"]``, then a bearer JWT (if a secret or JWKS URL is
    given), an API key (if a lookup is given), a trusted header (if named)."""
    chain: list[IdentityResolver] = [ScopeUserResolver()]
    if jwt_secret or jwks_url:
        chain.append(
            JWTResolver(secret=jwt_secret, jwks_url=jwks_url, issuer=issuer, audience=audience)
        )
    if api_key_lookup is not None:
        chain.append(ApiKeyResolver(api_key_lookup))
    if user_header:
        if not proxies:
            raise ConfigurationError("user_header needs trusted_proxies (who may set it)")
        chain.append(HeaderResolver(proxies, header=user_header))
    return ChainResolver(*chain)
