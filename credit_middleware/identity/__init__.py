"""Who is calling: identity resolvers (scope user, bearer JWT, API key, trusted header)."""

from __future__ import annotations

from .resolvers import (
    ApiKeyResolver,
    ChainResolver,
    HeaderResolver,
    Identity,
    IdentityResolver,
    InvalidCredentials,
    ScopeUserResolver,
    TrustedProxies,
    default_resolver,
    header,
)

__all__ = [
    "ApiKeyResolver",
    "ChainResolver",
    "HeaderResolver",
    "Identity",
    "IdentityResolver",
    "InvalidCredentials",
    "ScopeUserResolver",
    "TrustedProxies",
    "default_resolver",
    "header",
]
