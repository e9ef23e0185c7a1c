"""Who is calling: identity resolvers (scope user, bearer JWT, API key, trusted header)."""

from __future__ import annotations

from .default import default_resolver
from .jwt import JWTResolver
from .resolvers import (
    ApiKeyLookup,
    ApiKeyResolver,
    ChainResolver,
    HeaderResolver,
    Identity,
    IdentityResolver,
    InvalidCredentials,
    ScopeUserResolver,
    TrustedProxies,
    header,
)

__all__ = [
    "ApiKeyLookup",
    "ApiKeyResolver",
    "ChainResolver",
    "HeaderResolver",
    "Identity",
    "IdentityResolver",
    "InvalidCredentials",
    "JWTResolver",
    "ScopeUserResolver",
    "TrustedProxies",
    "default_resolver",
    "header",
]
