"""Documenting the middleware's refusals on an app's FastAPI routes (OpenAPI ``responses``).

Route objects are only read (Starlette's ``Route``/``Mount``, FastAPI's ``APIRoute`` and the
route contexts of its included routers); nothing is imported from FastAPI, so a Starlette app
never pays for it. Prices are decided per request by :mod:`.priced`, not here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from starlette.routing import Host, Mount

from ..problems import openapi_responses
from .routing import candidates, routing_target, structural

__all__ = ["api_routes", "document"]

#: (path template, methods, the route object whose ``responses`` OpenAPI reads)
ApiRoute = tuple[str, "tuple[str, ...]", Any]
_MAX_DEPTH = 8


def api_routes(app: Any, opaque: Callable[[Any], bool]) -> Iterator[ApiRoute]:
    """Every FastAPI route of ``app`` (included routers and mounted apps too, but not mounts
    that are ``opaque``), with its path template as seen from ``app``."""

    def visit(routes: Iterable[Any], prefix: str, depth: int) -> Iterator[ApiRoute]:
        for route in candidates(routes):
            inner = structural(route)
            if isinstance(inner, (Mount, Host)):
                target = routing_target(getattr(inner, "app", None))
                if target is None or depth >= _MAX_DEPTH or opaque(inner.app):
                    continue
                yield from visit(target.routes, prefix + str(getattr(inner, "path", "")), depth + 1)
                continue
            if isinstance(getattr(route, "responses", None), dict):
                methods = getattr(route, "methods", None)
                path = str(getattr(route, "path_format", None) or getattr(route, "path", ""))
                yield prefix + path, tuple(sorted(methods)) if methods else ("GET",), route

    router = getattr(app, "router", app)
    return visit(getattr(router, "routes", None) or (), "", 0)


#: ``(endpoint, path, method)`` -> the route's price, or None where it is not priced
PriceOf = Callable[[Any, str, str], object]


def document(app: Any, opaque: Callable[[Any], bool], price_of: PriceOf) -> None:
    """Add the middleware's refusals (401, 402, 429, 503 as problem+json) to the OpenAPI
    responses of every FastAPI route of ``app`` that is priced; a route's own entries are
    kept. A route of an included router is documented both where FastAPI reads it now (its
    route context) and on the router's own route (what a later rebuild copies)."""
    changed = False
    for path, methods, route in api_routes(app, opaque):
        if not any(price_of(route.endpoint, path, m) is not None for m in methods):
            continue
        targets = [route.responses]
        original = getattr(getattr(route, "original_route", None), "responses", None)
        if isinstance(original, dict) and original is not route.responses:
            targets.append(original)
        for responses in targets:
            for status, entry in openapi_responses().items():
                if status not in responses and str(status) not in responses:
                    responses[status] = entry
                    changed = True
    if changed and getattr(app, "openapi_schema", None) is not None:
        app.openapi_schema = None  # generated before we looked: build it again
