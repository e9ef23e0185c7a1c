"""What a request costs: exempt, a fixed price, a computed price, held then captured, or billed
by the handler itself (the declarations are in :mod:`.declare`). Patterns are compiled once;
the first matching route wins, after a price declared on the endpoint the router will call.

``Pricing(meter="/v1/*")`` meters only the paths it names (plus priced ``routes`` and routes
decorated with :func:`priced`): every other path passes through, no credential needed, nothing
billed. Without ``meter`` every path is metered at ``default_cost`` but the built-in exempt
list (health, docs, metrics, signup and auth routes, webhooks) and exempt routes.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, Literal

from starlette.types import Scope

from ..errors import ConfigurationError
from .declare import (
    EXEMPT_ATTRIBUTE,
    MODES,
    PRICE_ATTRIBUTE,
    Mode,
    Price,
    PricedRoute,
    Route,
    check,
    compile_pattern,
    micros_of,
    priced,
)
from .openapi import document
from .routing import UnknownRoute, route_path, served

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

_CACHE_SIZE = 4096  # paths whose price is remembered (per app)
_CACHED_PATH = 512  # longest path remembered
_MISS = object()


def _nothing() -> None:
    return None


#: an attribute of the credit middleware's class: a mounted app that has it in its own
#: middleware meters itself, and the middleware of the app it is mounted in leaves it alone
METERS_ITSELF = "__credit_meters__"


class UnpricedRoute(ConfigurationError):
    """A metered request whose route cannot be priced (fail closed: it is refused)."""

    def __init__(self, route: str, why: str) -> None:
        super().__init__(f"route {route} cannot be priced: {why}")
        self.route = route


class Pricing:
    """Route → :class:`Price`.

    ``meter``: patterns billed ``default_cost`` (0.001) a call; ``routes``: prices per route;
    ``exempt``: more paths never metered (added to ``default_exempt``, the built-in list).
    ``default_mode`` decides the paths nothing lists: ``None`` (the default) exempts them when
    ``meter`` names what is metered, and meters them (``"fixed"``) otherwise; ``"exempt"``
    meters only what is listed, ``"fixed"`` every path.

    Patterns match the path the app's router matches: inside ``root_path`` (set by the server,
    the app or a mount), relative to the app the middleware is added to. The route the router
    will serve is found as the router finds it (mounts, hosts, FastAPI's included routers), and
    an endpoint decorated with :func:`priced` is priced by its decorator. The router's own
    trailing-slash redirect is not metered (the request it redirects to is).

    A HEAD request is priced as the GET of the same path unless ``head_as_get=False`` (then a
    route must list ``HEAD`` in its methods to match it). ``websockets="exempt"`` leaves every
    WebSocket connection unmetered; by default one on a metered path is identified, rate
    limited and billed once per accepted connection, at the price of its route.
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
        websockets: Literal["connection", "exempt"] = "connection",
    ) -> None:
        if default_mode is not None and default_mode not in MODES:
            raise ConfigurationError(f"default_mode must be one of {MODES} or None")
        if isinstance(exempt, str) or isinstance(default_exempt, str):
            raise ConfigurationError("exempt and default_exempt are lists of patterns")
        if websockets not in ("connection", "exempt"):
            raise ConfigurationError("websockets must be 'connection' or 'exempt'")
        self.default_micros = micros_of(default_cost, "default_cost")
        self._exempt = [compile_pattern(p) for p in (*default_exempt, *exempt)]
        self._default_mode = default_mode
        self._document = document
        self._head_as_get = head_as_get
        self.websockets = websockets
        self._routes: list[tuple[re.Pattern[str], frozenset[str] | None, Price]] = []
        # per app: (type, path, method) -> its price. A path's answer is the same until a
        # route is added, and working it out asks the app's routes and matches every exempt
        # pattern (about twenty) on every metered request
        self._apps: weakref.WeakKeyDictionary[Any, dict[Any, Price | None]] = (
            weakref.WeakKeyDictionary()
        )
        self._by_id: dict[int, tuple[weakref.ref[Any], dict[Any, Price | None]]] = {}
        self._cache: dict[Any, Price | None] = {}  # requests that name no app
        self._last: tuple[Callable[[], Any], dict[Any, Price | None]] = (_nothing, {})
        for r in routes:
            self.add(r)
        patterns = [meter] if isinstance(meter, str) else list(meter)
        self._metered = [
            (compile_pattern(p), Price("fixed", self.default_micros, p)) for p in patterns
        ]

    def add(self, route: Route, *, first: bool = False) -> None:
        """Price one more route (``first``: before those already listed)."""
        check(route)
        fn = route.cost if callable(route.cost) else None
        micros = (
            self.default_micros
            if route.cost is None or fn is not None
            else micros_of(route.cost, f"cost of {route.pattern!r}")
        )
        methods = frozenset(m.upper() for m in route.methods) if route.methods else None
        price = Price(route.mode, micros, route.name or route.pattern, route.limits, fn)
        entry = (compile_pattern(route.pattern), methods, price)
        self._cache.clear()
        self._apps.clear()
        self._by_id.clear()
        self._last = (_nothing, {})
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

    def price(self, scope: Scope, app: Any = None) -> Price | None:
        """The request's price, or None when it is exempt (HTTP and WebSocket scopes).

        ``app`` is the app (or router) whose routes serve the request; by default the app
        Starlette names in the scope. Raises :class:`UnpricedRoute` when the router would serve
        a metered request with a route whose endpoint cannot be read (its price might be
        declared there)."""
        kind = scope.get("type", "http")
        if kind == "websocket":
            if self.websockets == "exempt":
                return None
            method = "GET"  # the upgrade request
        else:
            method = scope.get("method", "GET")
        path = route_path(scope)
        if app is None:
            app = scope.get("app")
        cache = self._cache if app is None else self._cache_of(app)
        key = (kind, path, method)
        hit = cache.get(key, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        price, cacheable = self._decide(app, scope, path, method)
        if cacheable and len(path) <= _CACHED_PATH:  # bounded: ids in paths can't grow it
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[key] = price
        return price

    def _cache_of(self, app: Any) -> dict[Any, Price | None]:
        last, cache = self._last
        if last() is app:  # nearly always: one app per middleware
            return cache
        cache = self._find_cache(app)
        with contextlib.suppress(TypeError):
            self._last = (weakref.ref(app), cache)
        return cache

    def _find_cache(self, app: Any) -> dict[Any, Price | None]:
        try:
            cache = self._apps.get(app)
        except TypeError:  # unhashable (Starlette's Router): by id, while it lives
            return self._cache_by_id(app)
        if cache is None:
            cache = self._apps[app] = {}
            self.discover(app)
        return cache

    def _cache_by_id(self, app: Any) -> dict[Any, Price | None]:
        known = self._by_id.get(id(app))
        if known is not None and known[0]() is app:
            return known[1]
        cache: dict[Any, Price | None] = {}
        try:
            self._by_id[id(app)] = (weakref.ref(app), cache)
        except TypeError:  # nor weakly referenced: no memory of its own
            return cache
        self.discover(app)
        return cache

    def _decide(self, app: Any, scope: Scope, path: str, method: str) -> tuple[Price | None, bool]:
        """The price and whether it may be remembered for the path."""
        found = None
        if app is not None:
            try:
                found = served(app, scope, opaque=self.opaque)
            except UnknownRoute as exc:
                if self.price_of(path, method) is None:
                    return None, True  # not metered whatever it declares: left alone
                raise UnpricedRoute(exc.template, f"the router serves it with {exc}") from None
        if found is None:
            return self.price_of(path, method), True
        cacheable = not found.by_host
        if found.redirect:  # the router answers it itself, before any endpoint runs
            return None, cacheable
        return self.endpoint_price(found.endpoint, path, method, found.template), cacheable

    def endpoint_price(
        self, endpoint: Any, path: str, method: str = "GET", template: str | None = None
    ) -> Price | None:
        """The price of a request the router serves with ``endpoint`` (None: no route): its
        :func:`priced` declaration, else the price of its path. ``template`` names the route
        in the ledger."""
        if endpoint is not None:
            if self.opaque(endpoint):
                return None
            mark = getattr(endpoint, PRICE_ATTRIBUTE, None)
            if isinstance(mark, Route):
                if mark.mode == "exempt":
                    return None
                fn = mark.cost if callable(mark.cost) else None
                micros = self.default_micros
                if mark.cost is not None and fn is None:
                    micros = micros_of(mark.cost, f"cost of {template or path}")
                return Price(mark.mode, micros, mark.name or template or path, mark.limits, fn)
        return self.price_of(path, method)

    @staticmethod
    def opaque(app: Any) -> bool:
        """Whether a mounted app is left alone: marked ``billing_exempt`` (the admin app), or
        metering itself with a credit middleware of its own (never billed twice)."""
        if getattr(app, EXEMPT_ATTRIBUTE, False) is True:
            return True
        stack = getattr(app, "user_middleware", None)
        if not isinstance(stack, list):
            return False
        return any(getattr(getattr(m, "cls", None), METERS_ITSELF, False) for m in stack)

    def price_of(self, path: str, method: str = "GET") -> Price | None:
        """The price of a path and method by the configured patterns alone (no app's routes),
        or None when it is exempt."""
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
        """Document the refusals of the app's priced FastAPI routes in its OpenAPI (called once
        per app, with the first request or lifespan that names it)."""
        if self._document:
            document(app, self.opaque, self.endpoint_price)
