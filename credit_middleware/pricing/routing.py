"""Which route the app's router will serve a request with, decided as the router decides it.

Pricing must follow the router, not re-derive it: the router matches the path *inside*
``root_path`` (``uvicorn --root-path``, ``FastAPI(root_path=...)``, a mount), descends into
mounts and hosts, and (current FastAPI) keeps included routers as objects of their own
instead of flattening their routes into the app's. So every route is asked with its own
``matches()``, in the router's order (the first full match, else the first partial one, else
the router's own trailing-slash redirect), and the endpoint it would call is read from the
match.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from starlette.routing import Host, Match, Mount
from starlette.types import Scope

_starlette_route_path: Callable[[Scope], str] | None
try:  # the router's own helper (Starlette 0.33+): the same answer, version for version
    from starlette._utils import get_route_path as _starlette_route_path
except ImportError:  # pragma: no cover - an older or reorganised Starlette
    _starlette_route_path = None

__all__ = [
    "Served",
    "UnknownRoute",
    "candidates",
    "route_path",
    "routing_target",
    "served",
    "structural",
]

_MAX_DEPTH = 8


def route_path(scope: Scope) -> str:
    """The path the router matches: ``scope["path"]`` inside ``scope["root_path"]``."""
    if _starlette_route_path is not None:
        return str(_starlette_route_path(scope))
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if not root or not path.startswith(root) or (len(path) > len(root) and path[len(root)] != "/"):
        return path
    return path[len(root) :]


class UnknownRoute(Exception):
    """A route the router would serve, of a kind whose endpoint cannot be read."""

    def __init__(self, template: str, route: object) -> None:
        super().__init__(f"{template or '/'} ({type(route).__name__})")
        self.template = template or "/"


@dataclass(frozen=True, slots=True)
class Served:
    """What the router does with a request: call ``endpoint`` (a function, an endpoint class or
    a mounted app), or answer a trailing-slash ``redirect`` itself. ``template`` is the route's
    path template, mount prefixes included (``/api/items/{item_id}``)."""

    endpoint: Any
    template: str
    redirect: bool = False
    #: decided by a ``Host`` route: the answer depends on the Host header, not only the path
    by_host: bool = False


def served(app: Any, scope: Scope, *, opaque: Callable[[Any], bool]) -> Served | None:
    """The route ``app``'s router serves ``scope`` with; None when it answers 404 itself.

    A mount is descended into unless ``opaque(mounted_app)`` (then the mounted app is the
    endpoint). Raises :class:`UnknownRoute` for a matching route whose endpoint can't be read.
    """
    router = getattr(app, "router", app)
    routes = getattr(router, "routes", None)
    if not routes:
        return None
    walk = _Walk(opaque)
    found = walk.route(router, routes, dict(scope), "", 0)
    if walk.by_host and found is not None:
        return Served(found.endpoint, found.template, found.redirect, by_host=True)
    if walk.by_host:
        return Served(None, "", by_host=True)
    return found


def candidates(routes: Iterable[Any]) -> Iterator[Any]:
    """The routes in the order the router tries them. FastAPI's included routers (objects of
    their own in current FastAPI; flattened into the app's routes in older releases) are tried
    route by route, depth first: the same order and the same first full (else first partial)
    match as their own dispatch."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            yield from contexts()
        else:
            yield route


def structural(route: Any) -> Any:
    """The Starlette route a FastAPI route context stands for (itself otherwise)."""
    return getattr(route, "starlette_route", None) or route


class _Walk:
    def __init__(self, opaque: Callable[[Any], bool]) -> None:
        self.opaque = opaque
        self.by_host = False  # a Host route was tried: the answer depends on the Host header

    def route(
        self, router: Any, routes: Iterable[Any], scope: Scope, prefix: str, depth: int
    ) -> Served | None:
        partial: tuple[Any, Scope] | None = None
        for route in candidates(routes):
            self.by_host = self.by_host or isinstance(structural(route), Host)
            match, child = route.matches(scope)
            if match is Match.FULL:
                return self.enter(route, child, scope, prefix, depth)
            if match is Match.PARTIAL and partial is None:
                partial = (route, child)
        if partial is not None:  # e.g. a 405: that route answers it
            return self.enter(*partial, scope, prefix, depth)
        path = route_path(scope)
        slashes = getattr(router, "redirect_slashes", False)
        if scope.get("type") == "http" and slashes and path != "/":
            toggled = dict(scope)
            full = scope["path"]
            toggled["path"] = full.rstrip("/") if path.endswith("/") else full + "/"
            if any(r.matches(toggled)[0] is not Match.NONE for r in candidates(routes)):
                return Served(None, prefix + path, redirect=True)
        return None

    def enter(
        self, route: Any, child: Scope, scope: Scope, prefix: str, depth: int
    ) -> Served | None:
        inner = structural(route)
        if isinstance(inner, (Mount, Host)):
            template = prefix + str(getattr(inner, "path", ""))
            target = routing_target(inner.app)
            if target is None or depth >= _MAX_DEPTH or self.opaque(inner.app):
                return Served(inner.app, template)  # the mounted app serves it
            router = getattr(target, "router", target)
            found = self.route(router, target.routes, {**scope, **child}, template, depth + 1)
            return found if found is not None else Served(None, template)  # its own 404
        endpoint = child.get("endpoint") or getattr(route, "endpoint", None)
        if endpoint is None:
            raise UnknownRoute(prefix + str(getattr(route, "path", "")), route)
        template = prefix + str(getattr(route, "path_format", None) or getattr(route, "path", ""))
        return Served(endpoint, template)


def routing_target(app: Any, depth: int = _MAX_DEPTH) -> Any:
    """What an app routes with: the app, or the router or app inside the middleware that wraps
    it (``Mount("/api", app=SomeMiddleware(api))``); None when nothing there has routes."""
    node = app
    for _ in range(depth):
        if getattr(node, "routes", None) is not None:
            return node
        node = getattr(node, "app", None)
        if node is None:
            return None
    return None
