"""The old import path of :mod:`credit_middleware.integrations.litellm.routes` (kept for users)."""

from __future__ import annotations

from .litellm.routes import (
    Deployment,
    PRICE_KEYS,
    deployments,
    proxy_router,
    reachable,
    served_by,
)

__all__ = [
    "Deployment",
    "PRICE_KEYS",
    "deployments",
    "proxy_router",
    "reachable",
    "served_by",
]
