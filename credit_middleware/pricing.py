"""What a request costs: exempt, a fixed price, a computed price, held then captured, or billed
by the handler itself. Patterns are compiled once; the first matching route wins."""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from starlette.requests import HTTPConnection
from starlette.types import Scope

from .errors import ConfigurationError
from .money import cost_to_micros

__all__ = ["DEFAULT_EXEMPT", "Mode", "Price", "PricedRoute", "Pricing", "Route"]

#: ``fixed``/``computed``: debit before the handler; ``hold``: reserve ``cost`` before, capture
#: what the handler reports in ``request.state.credit_cost`` after; ``handler``: identity and
#: rate limit only, the handler bills itself; ``exempt``: the middleware does nothing.
Mode = Literal["fixed", "hold", "handler", "exempt"]

CostFn = Callable[[HTTPConnection], "Decimal | int | str | Awaitable[Decimal | int | str]"]

DEFAULT_EXEMPT: tuple[str, ...] = (
    "/health",
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
    "/docs",
    "/docs/*",
    "/redoc",
    "/openapi.json",
    "/favicon.ico",
    "/signup",
    "/register",
    "/auth/register",
    "/auth/signup",
    "/webhooks/*",
)


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


def _compile(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("^"):
        return re.compile(pattern)
    return re.compile(fnmatch.translate(pattern))


def _micros(value: object, what: str) -> int:
    try:
        return cost_to_micros(value, field=what)[0]
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


class Pricing:
    """Route → :class:`Price`. Paths not matching any route cost ``default_cost`` (0.001).

    A HEAD request is priced as the GET of the same path unless ``head_as_get=False`` (then a
    route must list ``HEAD`` in its methods to match it).
    """

    def __init__(
        self,
        *,
        default_cost: Decimal | int | str = Decimal("0.001"),
        routes: Iterable[Route] = (),
        exempt: Iterable[str] = DEFAULT_EXEMPT,
        default_mode: Mode = "fixed",
        head_as_get: bool = True,
    ) -> None:
        self._head_as_get = head_as_get
        self.default_micros = _micros(default_cost, "default_cost")
        self._exempt = [_compile(p) for p in exempt]
        self._default = Price(default_mode, self.default_micros, "default")
        self._routes: list[tuple[re.Pattern[str], frozenset[str] | None, Price]] = []
        for r in routes:
            if r.mode not in ("fixed", "hold", "handler", "exempt"):
                raise ConfigurationError(f"route {r.pattern!r}: unknown mode {r.mode!r}")
            fn = r.cost if callable(r.cost) else None
            if fn is not None and r.mode not in ("fixed", "hold"):
                raise ConfigurationError(f"route {r.pattern!r}: a cost callable needs mode fixed")
            micros = (
                self.default_micros
                if r.cost is None or fn is not None
                else _micros(r.cost, f"cost of {r.pattern!r}")
            )
            methods = frozenset(m.upper() for m in r.methods) if r.methods else None
            price = Price(r.mode, micros, r.name or r.pattern, r.limits, fn)
            self._routes.append((_compile(r.pattern), methods, price))

    def price(self, scope: Scope) -> Price | None:
        """The request's price, or None when it is exempt."""
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        if method == "HEAD" and self._head_as_get:
            method = "GET"  # a HEAD is a GET without its body: the same route, the same price
        for regex, methods, price in self._routes:
            if (methods is None or method in methods) and regex.match(path):
                return None if price.mode == "exempt" else price
        if any(regex.match(path) for regex in self._exempt):
            return None
        return self._default
