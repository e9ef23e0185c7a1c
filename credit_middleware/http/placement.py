"""Where the middleware does its work: just inside the app's CORS and authentication middleware,
wherever the one ``add_middleware`` line put it.

Starlette builds the stack inner to outer, and ``add_middleware`` puts the last one added
outermost: added after ``CORSMiddleware`` and ``AuthenticationMiddleware`` (the natural place
for "one more line"), the credit middleware would answer CORS preflights with a 401, send its
refusals without ``Access-Control-Allow-Origin`` (unreadable by a browser), and find no
``request.user`` (set inside it). So when such a middleware is inside it, its work moves to
just inside the innermost of them: a :class:`Door` takes that middleware's ``app``. Only the
``app`` attribute every Starlette middleware calls is changed; the rest of the stack is left as
the app built it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["RUNS_AFTER", "Door", "innermost", "place_inside", "preflight"]

log = logging.getLogger("credit_middleware.middleware")

#: Middleware whose work must come first: CORS (preflights, and headers on every answer)
#: and authentication (``request.user``).
RUNS_AFTER: tuple[type, ...] = (CORSMiddleware, AuthenticationMiddleware)
_MAX_DEPTH = 64


class Door:
    """The credit middleware's work, placed inside another middleware of the stack; ``app`` is
    what it calls once a request is admitted."""

    def __init__(self, work: ASGIApp, app: ASGIApp) -> None:
        self.work = work
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.work(scope, receive, send)


def innermost(app: Any, kinds: Iterable[type]) -> Any | None:
    """The innermost middleware of one of ``kinds`` in the chain below ``app`` (followed
    through ``app`` attributes, as Starlette's middleware keep the app they wrap)."""
    wanted = tuple(kinds)
    found = None
    seen: set[int] = set()
    node = app
    for _ in range(_MAX_DEPTH):
        if node is None or id(node) in seen:
            break
        seen.add(id(node))
        if isinstance(node, wanted):
            found = node
        node = getattr(node, "app", None)
    return found


def place_inside(host: Any, work: ASGIApp) -> Door:
    """Put ``work`` between ``host`` and what ``host`` calls; the door that does it."""
    door = Door(work, host.app)
    host.app = door
    log.info(
        "CreditMiddleware: doing its work inside %s (added outside it), so that it comes first",
        type(host).__name__,
    )
    return door


def preflight(scope: Scope) -> bool:
    """A CORS preflight: ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``."""
    if scope["type"] != "http" or scope.get("method") != "OPTIONS":
        return False
    names = {name for name, _ in scope.get("headers", ())}
    return b"origin" in names and b"access-control-request-method" in names
