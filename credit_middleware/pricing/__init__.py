"""What a request costs: route prices, declared with ``@priced`` or configured, documented in OpenAPI."""

from __future__ import annotations

from .priced import (
    DEFAULT_EXEMPT,
    EXEMPT_ATTRIBUTE,
    Mode,
    PRICE_ATTRIBUTE,
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
    "Mode",
    "PRICE_ATTRIBUTE",
    "Price",
    "PricedRoute",
    "Pricing",
    "Route",
    "UnpricedRoute",
    "priced",
]
