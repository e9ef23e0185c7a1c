"""What a request costs: route prices, declared with ``@priced`` or configured, and
documented in OpenAPI."""

from __future__ import annotations

from .priced import (
    DEFAULT_EXEMPT,
    EXEMPT_ATTRIBUTE,
    PRICE_ATTRIBUTE,
    Mode,
    Price,
    PricedRoute,
    Pricing,
    Route,
    UnpricedRoute,
    priced,
)

__all__ = [
    "DEFAULT_EXEMPT",
    "EXEMPT_ATTRIBUTE",
    "PRICE_ATTRIBUTE",
    "Mode",
    "Price",
    "PricedRoute",
    "Pricing",
    "Route",
    "UnpricedRoute",
    "priced",
]
