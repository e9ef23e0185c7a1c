"""What a request costs: exempt, a fixed price, a computed price, held then captured, or billed
by the handler itself. Patterns are compiled once; the first matching route wins.

``Pricing(meter="/v1/*")`` meters only the paths it names (plus priced ``routes`` and routes
decorated with :func:`priced`): every other path passes through, no credential needed, nothing
billed. Without ``meter`` every path is metered at ``default_cost`` but the built-in exempt
list (health, docs, metrics, signup and auth routes, webhooks) and exempt routes.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal, TypeVar

from starlette.requests import HTTPConnection
from starlette.types import Scope

from .errors import ConfigurationError
from .money import cost_to_micros

__all__ = ["DEFAULT_EXEMPT", "Mode", "Price", "PricedRoute", "Pricing", "Route", "priced"]

log = logging.getLogger("credit_middleware.pricing")

#: ``fixed``/``computed``: debit before the handler; ``hold``: reserve ``cost`` before, capture
#: what the handler reports in ``request.state.credit_cost`` after; ``handler``: identity and
#: rate limit only, the handler bills itself; ``exempt``: the middleware does nothing.
Mode = Literal["fixed", "hold", "handler", "exempt"]
_MODES = ("fixed", "hold", "handler", "exempt")

CostFn = Callable[[HTTPConnection], "Decimal | int | str | Awaitable[Decimal | int | str]"]
F = TypeVar("F", bound=Callable[..., Any])

#: Never metered unless a route says otherwise. ``Pricing(exempt=[...])`` adds to this list;
#: ``Pricing(default_exempt=())`` drops it.
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
    "/login",
    "/logout",
    "/token",
    "/auth/*",  # registration, login, password reset, e-mail verification (fastapi-users, ...)
    "/.well-known/*",
    "/webhooks/*",
)

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


def _compile(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("^"):
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise ConfigurationError(f"route pattern {pattern!r} is not a regex: {exc}") from None
    return re.compile(fnmatch.translate(pattern))


def _micros(value: object, what: str) -> int:
    try:
        return cost_to_micros(value, field=what)[0]
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def _check(route: Route) -> None:
    if route.mode not in _MODES:
        raise ConfigurationError(f"route {route.pattern!r}: mode must be one of {_MODES}")
    if callable(route.cost) and route.mode not in ("fixed", "hold"):
        raise ConfigurationError(f"route {route.pattern!r}: a cost callable needs mode fixed")
    if route.cost is not None and not callable(route.cost):
        _micros(route.cost, f"cost of {route.pattern!r}")


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
    the middleware reads the price from the app's routes before the first request is priced,
    so it is known before the handler runs. Priced FastAPI routes get their 401/402/429/503
    answers documented in OpenAPI.
    """
    declared = Route("", cost, mode, None, limits, name)
    _check(declared)

    def mark(endpoint: F) -> F:
        setattr(endpoint, PRICE_ATTRIBUTE, declared)
        return endpoint

    return mark


_CACHE_SIZE = 4096  # paths whose price is remembered
_CACHED_PATH = 512  # longest path remembered


class Pricing:
    """Route → :class:`Price`.

    ``meter``: patterns billed ``default_cost`` (0.001) a call; ``routes``: prices per route;
    ``exempt``: more paths never metered (added to ``default_exempt``, the built-in list).
    ``default_mode`` decides the paths nothing lists: ``None`` (the default) exempts them when
    ``meter`` names what is metered, and meters them (``"fixed"``) otherwise; ``"exempt"``
    meters only what is listed, ``"fixed"`` every path.

    A HEAD request is priced as the GET of the same path unless ``head_as_get=False`` (then a
    route must list ``HEAD`` in its methods to match it).
    """

    def __init__(
        self,
        *,
        default_cost: Decimal | int | str = Decimal("0.001"),
        routes: Iterable[Route] = (),
        meter: str | Iterable[str] = (),
        exempt: Iterable[str] = (),
        default_exempt: Iterable[str] = DEFAULT_EXEMPT,
        default_mode: Mode | None = None,
        document: bool = True,
        head_as_get: bool = True,
    ) -> None:
        if default_mode is not None and default_mode not in _MODES:
            raise ConfigurationError(f"default_mode must be one of {_MODES} or None")
        if isinstance(exempt, str) or isinstance(default_exempt, str):
            raise ConfigurationError("exempt and default_exempt are lists of patterns")
        self.default_micros = _micros(default_cost, "default_cost")
        self._exempt = [_compile(p) for p in (*default_exempt, *exempt)]
        self._default_mode = default_mode
        self._document = document
        self._head_as_get = head_as_get
        self._routes: list[tuple[re.Pattern[str], frozenset[str] | None, Price]] = []
        # (path, method) -> its price: a path's answer is the same until a route is added, and
        # working it out matches every exempt pattern (about twenty) on every metered request
        self._cache: dict[tuple[str, str], Price | None] = {}
        for r in routes:
            self.add(r)
        patterns = [meter] if isinstance(meter, str) else list(meter)
        self._metered = [(_compile(p), Price("fixed", self.default_micros, p)) for p in patterns]
        self._seen: set[int] = set()

    def add(self, route: Route, *, first: bool = False) -> None:
        """Price one more route (``first``: before those already listed)."""
        _check(route)
        fn = route.cost if callable(route.cost) else None
        micros = (
            self.default_micros
            if route.cost is None or fn is not None
            else _micros(route.cost, f"cost of {route.pattern!r}")
        )
        methods = frozenset(m.upper() for m in route.methods) if route.methods else None
        price = Price(route.mode, micros, route.name or route.pattern, route.limits, fn)
        entry = (_compile(route.pattern), methods, price)
        self._cache.clear()
        if first:
            self._routes.insert(0, entry)
        else:
            self._routes.append(entry)

    @property
    def default_mode(self) -> Mode:
        """What a path nothing lists gets (see the class docstring)."""
        if self._default_mode is not None:
            return self._default_mode
        return "exempt" if self._metered else "fixed"

    def price(self, scope: Scope) -> Price | None:
        """The request's price, or None when it is exempt."""
        app = scope.get("app")
        if app is not None and id(app) not in self._seen:
            self.discover(app)
        return self.price_of(scope.get("path", ""), scope.get("method", "GET"))

    def price_of(self, path: str, method: str = "GET") -> Price | None:
        """The price of a path and method, or None when it is exempt."""
        key = (path, method)
        try:
            return self._cache[key]
        except KeyError:
            pass
        price = self._find(path, method)
        if len(path) <= _CACHED_PATH:  # bounded: unseen paths (ids in them) can't grow it
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = price
        return price

    def _find(self, path: str, method: str) -> Price | None:
        if method == "HEAD" and self._head_as_get:
            method = "GET"  # a HEAD is a GET without its body: the same route, the same price
        for regex, methods, price in self._routes:
            if (methods is None or method in methods) and regex.match(path):
                return None if price.mode == "exempt" else price
        if any(regex.match(path) for regex in self._exempt):
            return None
        for regex, price in self._metered:
            if regex.match(path):
                return price
        mode = self.default_mode
        return None if mode == "exempt" else Price(mode, self.default_micros, "default")

    def discover(self, app: Any) -> None:
        """Read the prices declared on an app's routes (:func:`priced`), exempt mounts of apps
        marked ``billing_exempt`` (the admin app), and document priced FastAPI routes.

        Called once per app, with the first request (or lifespan) that names it."""
        self._seen.add(id(app))
        from ._discover import walk

        declared, exempt_mounts, api_routes = walk(app)
        for pattern in exempt_mounts:
            self.add(Route(pattern, mode="exempt", name="mount"), first=True)
        for pattern, methods, route in declared:
            self.add(replace(route, pattern=pattern, methods=methods), first=True)
        if declared or exempt_mounts:
            log.info(
                "pricing: %d priced route(s), %d exempt mount(s) found on the app",
                len(declared),
                len(exempt_mounts),
            )
        if self._document:
            from ._discover import document

            document(app, api_routes, self)
