"""The old import path of :mod:`credit_middleware.integrations.litellm.routes` (kept for users)."""

from __future__ import annotations

from .litellm.routes import (
    PRICE_KEYS,
    Deployment,
    deployments,
    proxy_router,
    reachable,
    served_by,
)

__all__ = [
    "PRICE_KEYS",
    "Deployment",
    "deployments",
    "proxy_router",
    "reachable",
    "served_by",
]
