"""How a price is declared: a priced :class:`Route` (a pattern in the central list) or the
:func:`priced` decorator next to an endpoint, and the :class:`Price` decided for a request.

:class:`~credit_middleware.pricing.Pricing` decides which applies to a request.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeVar

from starlette.requests import HTTPConnection
from starlette.types import Scope

from ..errors import ConfigurationError
from ..money import cost_to_micros

__all__ = [
    "EXEMPT_ATTRIBUTE",
    "MODES",
    "PRICE_ATTRIBUTE",
    "CostFn",
    "Mode",
    "Price",
    "PricedRoute",
    "Route",
    "check",
    "compile_pattern",
    "micros_of",
    "priced",
]

#: ``fixed``/``computed``: debit before the handler; ``hold``: reserve ``cost`` before, capture
#: what the handler reports in ``request.state.credit_cost`` after; ``handler``: identity and
#: rate limit only, the handler bills itself; ``exempt``: the middleware does nothing.
Mode = Literal["fixed", "hold", "handler", "exempt"]
MODES = ("fixed", "hold", "handler", "exempt")

CostFn = Callable[[HTTPConnection], "Decimal | int | str | Awaitable[Decimal | int | str]"]
F = TypeVar("F", bound=Callable[..., Any])

#: The attribute :func:`priced` sets on an endpoint, and an ASGI app sets to be exempt when
#: mounted (the admin app does).
PRICE_ATTRIBUTE = "__credit_price__"
EXEMPT_ATTRIBUTE = "billing_exempt"


@dataclass(frozen=True)
class Route:
    """A priced route. ``pattern``: a path with ``*`` wildcards, or a regex starting with ``^``.

    ``cost`` is credits (Decimal/int/str) or a callable of the request returning them (sync or
    async); ``None`` means the default cost. ``limits`` overrides the tier's rate limits here
    (a ``limits`` string such as ``"10/minute"``).
    """

    pattern: str
    cost: Decimal | int | str | CostFn | None = None
    mode: Mode = "fixed"
    methods: Sequence[str] | None = None
    limits: str | None = None
    name: str | None = None


#: The name to export at package level, where ``Route`` would clash with Starlette's.
PricedRoute = Route


@dataclass(frozen=True, slots=True)
class Price:
    """The price decided for one request (``micros`` is None for a callable cost)."""

    mode: Mode
    micros: int
    route: str
    limits: str | None = None
    cost_fn: CostFn | None = None

    async def resolve(self, scope: Scope) -> int:
        """The price in µc, calling the cost function if there is one (rounded up)."""
        if self.cost_fn is None:
            return self.micros
        value = self.cost_fn(HTTPConnection(scope))
        if inspect.isawaitable(value):
            value = await value
        return cost_to_micros(value)[0]


def compile_pattern(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("^"):
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise ConfigurationError(f"route pattern {pattern!r} is not a regex: {exc}") from None
    return re.compile(fnmatch.translate(pattern))


def micros_of(value: object, what: str) -> int:
    try:
        return cost_to_micros(value, field=what)[0]
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def check(route: Route) -> None:
    if route.mode not in MODES:
        raise ConfigurationError(f"route {route.pattern!r}: mode must be one of {MODES}")
    if callable(route.cost) and route.mode not in ("fixed", "hold"):
        raise ConfigurationError(f"route {route.pattern!r}: a cost callable needs mode fixed")
    if route.cost is not None and not callable(route.cost):
        micros_of(route.cost, f"cost of {route.pattern!r}")


def priced(
    cost: Decimal | int | str | CostFn | None = None,
    *,
    mode: Mode = "fixed",
    limits: str | None = None,
    name: str | None = None,
) -> Callable[[F], F]:
    """Declare an endpoint's price next to it: ``@priced("0.01")`` (credits a call),
    ``@priced(mode="hold", cost="0.05")``, ``@priced(mode="exempt")``.

    The endpoint is returned unchanged (FastAPI's signature and dependencies are untouched);
    the middleware finds the endpoint the router will call before the handler runs, and
    prices the request by this declaration (wherever the route is: included routers, mounts).
    Priced FastAPI routes get their 401/402/429/503 answers documented in OpenAPI.
    """
    declared = Route("", cost, mode, None, limits, name)
    check(declared)

    def mark(endpoint: F) -> F:
        setattr(endpoint, PRICE_ATTRIBUTE, declared)
        return endpoint

    return mark
