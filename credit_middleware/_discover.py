"""Reading an app's routes for :class:`~credit_middleware.pricing.Pricing`: prices declared with
``@priced``, mounts of apps marked exempt, and FastAPI routes whose refusals to document.

Only route objects are read (Starlette's ``Route``/``Mount``, FastAPI's ``APIRoute``); nothing
is imported from FastAPI, so a Starlette app never pays for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .problems import openapi_responses

if TYPE_CHECKING:
    from .pricing import Pricing, Route

__all__ = ["document", "walk"]

Declared = tuple[str, "tuple[str, ...] | None", "Route"]
ApiRoute = tuple[str, "tuple[str, ...]", Any, "Route | None"]
_MAX_DEPTH = 8


def walk(app: Any) -> tuple[list[Declared], list[str], list[ApiRoute]]:
    """``(declared, exempt_mounts, api_routes)`` of an app: path regexes with the methods and
    the declared route, mount patterns to exempt, FastAPI routes with their template paths."""
    from .pricing import EXEMPT_ATTRIBUTE, PRICE_ATTRIBUTE

    declared: list[Declared] = []
    mounts: list[str] = []
    api: list[ApiRoute] = []

    def visit(routes: Iterable[Any], prefix: str, depth: int) -> None:
        for route in routes:
            path = getattr(route, "path", None)
            if not isinstance(path, str) or "{" in prefix:
                continue
            sub = getattr(route, "app", None)
            if hasattr(route, "routes") and not hasattr(route, "endpoint"):  # a Mount
                if getattr(sub, EXEMPT_ATTRIBUTE, False) is True:
                    mounts.append("^" + re.escape(prefix + path) + "(/.*)?$")
                elif depth < _MAX_DEPTH and "{" not in path:
                    visit(getattr(route, "routes", None) or (), prefix + path, depth + 1)
                continue
            endpoint = getattr(route, "endpoint", None)
            regex = getattr(route, "path_regex", None)
            if endpoint is None or not isinstance(regex, re.Pattern):
                continue
            methods = getattr(route, "methods", None)
            verbs = tuple(sorted(methods)) if methods else None
            mark = getattr(endpoint, PRICE_ATTRIBUTE, None)
            if mark is not None:
                pattern = "^" + re.escape(prefix) + regex.pattern.removeprefix("^")
                declared.append((pattern, verbs, mark))
            if isinstance(getattr(route, "responses", None), dict):
                api.append((prefix + path, verbs or ("GET",), route, mark))

    visit(getattr(app, "routes", None) or (), "", 0)
    return declared, mounts, api


def document(app: Any, api_routes: list[ApiRoute], pricing: Pricing) -> None:
    """Add the middleware's refusals (401, 402, 429, 503 as problem+json) to the OpenAPI
    responses of every FastAPI route that is priced; a route's own entries are kept."""
    changed = False
    for path, methods, route, mark in api_routes:
        if mark is not None:
            metered = mark.mode != "exempt"
        else:
            metered = any(pricing.price_of(path, m) is not None for m in methods)
        if not metered:
            continue
        for status, entry in openapi_responses().items():
            if status not in route.responses and str(status) not in route.responses:
                route.responses[status] = entry
                changed = True
    if changed and getattr(app, "openapi_schema", None) is not None:
        app.openapi_schema = None  # generated before we looked: build it again
