"""The ASGI door: who is calling, what it costs, may they, pay — then call the app.

Pure ASGI (never ``BaseHTTPMiddleware``): one ``app.add_middleware(CreditMiddleware, ...)`` on
any Starlette or FastAPI app. Refusals are ``application/problem+json``; a backend problem is a
503 with ``Retry-After`` (or, if configured, an unbilled pass), never a 500 of ours.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._aio import bounded
from ..charge.bill import CHARGE_ID_HEADER, FINAL_COST_STATE, Bill
from ..charge.keepalive import KeepAlive
from ..charge.outcomes import Outcomes
from ..charge.pay import pay
from ..charge.replay import client_key, key_refused, read_request
from ..charge.settlement import Settlement
from ..config import FIXED_LEASE
from ..credits import Credits
from ..errors import (
    AccountNotFound,
    BackendUnavailable,
    ConfigurationError,
    IdempotencyConflict,
    InsufficientCredits,
)
from ..identity.resolvers import Identity, InvalidCredentials
from ..limits.ratelimit import TIER_TTL, rate_limit_headers, rate_limited
from ..pricing.priced import Price, UnpricedRoute
from ..pricing.routing import routing_target
from ..problems import ProblemResponse, Refused, insufficient, ledger_down, problem, retry_after
from .placement import RUNS_AFTER, innermost, place_inside, preflight
from .websocket import answer
from .websocket import serve as serve_websocket

__all__ = ["FINAL_COST_STATE", "FIXED_LEASE", "TIER_TTL", "CreditMiddleware"]

log = logging.getLogger("credit_middleware.middleware")
T = TypeVar("T")


class CreditMiddleware:
    """Identity, lazy provisioning, rate limits and metering for every priced HTTP request and
    WebSocket connection.

    ``app.add_middleware(CreditMiddleware, credits=credits)`` with a shared
    :class:`~credit_middleware.Credits`; or its options directly (``meter="/v1/*"``,
    ``jwt_secret=...``, ``database_url=...``, ...), a shorthand that builds one for this
    middleware alone. Either way the app's lifespan starts and closes it.

    It may be added anywhere in the stack: its work runs inside the app's ``CORSMiddleware``
    and ``AuthenticationMiddleware`` (and inside the middleware classes named in ``after``,
    e.g. an authentication middleware of your own that sets ``request.user``).
    """

    #: a mounted app with this middleware of its own meters itself (see Pricing.opaque)
    __credit_meters__ = True

    def __init__(
        self,
        app: ASGIApp | None = None,
        /,
        *,
        credits: Credits | None = None,
        after: Iterable[type] = (),
        **options: Any,
    ) -> None:
        if app is None:  # Starlette < 0.38 builds the stack with app= by keyword
            app = options.pop("app", None)
            if app is None:
                raise ConfigurationError("CreditMiddleware wraps an ASGI app: give it first")
        after = tuple(after)
        if not all(isinstance(kind, type) for kind in after):
            raise ConfigurationError("after= names middleware classes (e.g. [MyAuthMiddleware])")
        self._owns_credits = credits is None
        if credits is None:
            try:
                inspect.signature(Credits).bind(**options)
            except TypeError as exc:
                raise ConfigurationError(f"CreditMiddleware: {exc}") from None
            credits = Credits(**options)
        elif options:
            raise ConfigurationError(
                f"credits= is already configured: give {sorted(options)} to Credits(...)"
            )
        # Our work comes after the app's CORS and authentication middleware (and those named
        # in ``after``) even when the one line added us outside them: see placement.py.
        self.app = app
        self._entry: ASGIApp = self._meter
        host = innermost(app, (*RUNS_AFTER, *after))
        if host is not None:
            self._entry = app
            self.app = place_inside(host, self._meter).app
        # whose routes serve what we admit: the router of the app we were added to, or the app
        # we wrap directly (a middleware mounted as it is: CreditMiddleware(api))
        self._routes = routing_target(self.app, depth=64)
        self.credits = credits
        self.observer = credits.observer
        self.ledger = credits.ledger
        self.provisioner = credits.provisioner
        self.limiter = credits.limiter
        self.pricing = credits.pricing
        self.proxies = credits.proxies
        self.resolver = credits.resolver
        config = credits.config  # every option, resolved: nothing here has a default of its own
        self._fail_open = config.faults.on_ledger_error == "allow"
        self._legacy = config.headers.legacy_rate_limit
        self._balance_header = config.headers.balance
        self._timeout = config.timeout
        self._hold_timeout = config.billing.hold_timeout
        self._migrated = credits.migrated
        self._max_request_body = config.idempotency.max_request_body
        self.outcomes = Outcomes(self.ledger, self._timeout, self.observer)
        #: keeps the leases and holds of requests still being served from lapsing
        self.keepalive = KeepAlive(self.ledger, timeout=self._timeout)
        # what a bill needs to settle once the app answered (only what was served is billed:
        # 2xx by default, not the app's 4xx, redirects, 5xx)
        self.settlement = Settlement(
            ledger=self.ledger,
            outcomes=self.outcomes,
            keepalive=self.keepalive,
            observer=self.observer,
            billable=config.billing.billable,
            hold_timeout=self._hold_timeout,
            idempotency_ttl=config.idempotency.ttl,
            leases=config.leases,
            max_stored_body=config.idempotency.max_stored_body,
            balance_header=config.headers.balance,
        )
        self._started = False
        # account -> (tier, monotonic time to look again): a tier change (an upgrade) is
        # picked up within TIER_TTL seconds without a read on every request.
        self._tiers: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._db_degraded = False

    async def aclose(self) -> None:
        """End this middleware's use of its :class:`Credits`; close it if it built it (a
        shared one closes when its last user stops). What is still pending settles first."""
        self.keepalive.aclose()
        await self.outcomes.aclose()
        if self._started:
            self._started = False
            await self.credits.stop()
        if self._owns_credits:
            await self.credits.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._entry(scope, self._on_startup(receive), self._on_shutdown(send))
            return
        await self._entry(scope, receive, send)

    async def _meter(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The middleware's work on one request (here, or inside the CORS/authentication
        middleware it was added outside of)."""
        kind = scope["type"]
        if kind not in ("http", "websocket") or preflight(scope):
            await self.app(scope, receive, send)  # a CORS preflight is never billed or refused
            return
        try:
            price = self.pricing.price(scope, self._routing_app(scope))
            if price is not None and kind == "websocket" and price.mode == "hold":
                raise UnpricedRoute(price.route, "a hold can't meter a WebSocket connection")
        except UnpricedRoute as exc:
            log.error("%s: refused (price it, or exempt it)", exc)
            self.observer.refused(500, "unpriced_route")
            await answer(problem("unpriced-route", str(exc), route=exc.route), scope, receive, send)
            return
        if price is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        charge_id = "c_" + secrets.token_hex(12)
        try:
            bill = await self._admit(scope, receive, price, charge_id)
        except Refused as refused:
            self.observer.refused(refused.response.status_code, refused.reason)
            if refused.charged_id:
                refused.response.headers[CHARGE_ID_HEADER] = charge_id
            await answer(refused.response, scope, receive, send)
            return
        except Exception:  # our own bug must not become the app's 500
            log.exception("credit middleware failed before the app")
            self.observer.refused(503, "internal")
            down = problem("ledger-unavailable", "billing failed", headers=retry_after(1))
            await answer(down, scope, receive, send)
            return
        overhead = time.perf_counter() - started
        if kind == "websocket":
            await serve_websocket(self.settlement, self.app, bill, scope, receive, send)
        else:
            await bill.run(self.settlement, self.app, scope, receive, send)
        self.observer.request_overhead(overhead + bill.post_seconds)

    def _routing_app(self, scope: Scope) -> Any:
        """The app whose routes serve this request: the app Starlette names in the scope when
        we are in its stack (it is the one to document), else the one we wrap."""
        app = scope.get("app")
        if self._routes is None or getattr(app, "router", None) is self._routes:
            return app
        return self._routes

    def _on_startup(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and not self._started:
                self._started = True
                # reopens after an earlier lifespan's close (tests, reloads) and migrates,
                # without failing while the database is down (first use migrates then)
                await self.credits.start()
                self._migrated = self._migrated or self.credits.migrated
            return message

        return wrapped

    def _on_shutdown(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return wrapped

    # ------------------------------------------------------------------ admission

    async def _admit(self, scope: Scope, receive: Receive, price: Price, charge_id: str) -> Bill:
        try:
            identity = await self.resolver.resolve(scope)
        except InvalidCredentials as exc:
            raise Refused(
                problem("invalid-credentials", exc.detail), "invalid_credentials"
            ) from None
        except BackendUnavailable as exc:
            raise Refused(
                problem("ledger-unavailable", f"{exc.backend} unavailable", headers=retry_after(5)),
                "identity_backend",
            ) from None
        if identity is None:
            raise Refused(problem("unauthenticated", "no credentials"), "unauthenticated")
        identity = identity.seen_from(self.proxies.client_ip(scope))
        key = client_key(scope) if scope["type"] == "http" else None  # no replays of a socket
        aid = identity.account_id
        bill = Bill(identity, price, charge_id, scope.get("path", ""))
        try:
            await self._migrate()
            bill.tier = await self._tier_of(identity)
            verdict = await self.limiter.hit(
                aid, bill.tier, route=price.route, route_limits=price.limits
            )
        except BackendUnavailable as exc:
            if exc.backend == "redis":
                body = problem(
                    "rate-limiter-unavailable", "rate limiting unavailable", headers=retry_after(5)
                )
                raise Refused(body, "redis_unavailable") from None
            self._ledger_health(exc)
            if self._fail_open:
                return bill
            raise Refused(ledger_down(), "ledger_unavailable") from None
        bill.headers = rate_limit_headers(verdict, legacy=self._legacy)
        if not verdict.allowed:
            raise Refused(rate_limited(verdict, bill.tier, bill.headers), "rate_limited")
        if price.mode != "handler":
            try:
                bill.micros = await price.resolve(scope)
            except ValueError:
                log.exception("route %s: the cost callable returned an unusable price", price.route)
                raise
        if key is not None:
            bill.request_key = key
            bill.buffered = await read_request(scope, receive, self._max_request_body)
        elif bill.micros == 0:
            return bill
        try:
            await self._charge(identity, bill)
        except InsufficientCredits as exc:
            self.observer.ledger_op(bill.kind, "insufficient")
            raise Refused(await self._insufficient(exc, bill), "insufficient_credits") from None
        except IdempotencyConflict as exc:
            raise key_refused(exc) from None
        except BackendUnavailable as exc:
            self.observer.ledger_op(bill.kind, "error")
            self._ledger_health(exc)
            if self._fail_open:
                bill.micros = 0
                bill.request_key = None
                return bill
            raise Refused(ledger_down(), "ledger_unavailable", charged_id=True) from None
        if self._db_degraded:
            self._ledger_health(None)
        if bill.receipt is not None:
            self.observer.ledger_op(bill.kind, "replayed" if bill.receipt.replayed else "ok")
        elif bill.start is not None and bill.start.state == "replay":
            self.observer.ledger_op(bill.kind, "replayed")
        return bill

    async def _migrate(self) -> None:
        if self._migrated:
            return
        await self.credits.ready()  # shared by everything built on the same Credits
        self._migrated = True

    async def _tier_of(self, identity: Identity) -> str:
        aid = identity.account_id
        cached = self._tiers.get(aid)
        tier = cached[0] if cached is not None and cached[1] > time.monotonic() else None
        if tier is None:
            account = await self.call(self.ledger.get_account(aid))
            # Not provisioned yet: it will get the policy's tier (remembered too, so a route
            # that never bills does not read the ledger on every request).
            tier = account.tier if account else identity.tier or self.provisioner.policy.tier
            self._remember(aid, tier)
        return tier

    def _remember(self, aid: str, tier: str) -> None:
        self._tiers[aid] = (tier, time.monotonic() + TIER_TTL)
        self._tiers.move_to_end(aid)
        if len(self._tiers) > 10_000:
            self._tiers.popitem(last=False)

    async def _charge(self, identity: Identity, bill: Bill) -> None:
        for attempt in (1, 2):
            try:
                await pay(self.settlement, identity.account_id, bill)
                return
            except InsufficientCredits:
                # A trial denied earlier (an unverified e-mail) may be due now; the provisioner
                # answers without I/O once it knows the account is settled.
                if attempt == 2 or not await self._late_trial(identity):
                    raise
            except AccountNotFound:
                if attempt == 2:
                    raise BackendUnavailable(
                        "database", "account vanished after provisioning"
                    ) from None
                self.provisioner.forget(identity.account_id)  # its cache may be stale
                result = await self.call(
                    self.provisioner.ensure_account(identity, layer="request", missing=True)
                )
                self._remember(identity.account_id, result.tier)
        raise AssertionError("unreachable")

    async def _late_trial(self, identity: Identity) -> bool:
        """Whether the identity's trial may be in place now (worth one more try of the charge):
        deciding it again granted it, here or (a moment ago) in a concurrent request. The 402
        stands otherwise, also when the ledger cannot be asked."""
        if self.provisioner.granted_late(identity.account_id):
            return True
        if not self.provisioner.may_reconsider(identity):
            return False
        try:
            result = await self.call(self.provisioner.ensure_account(identity, layer="request"))
        except BackendUnavailable:
            return False
        return result.granted or self.provisioner.granted_late(identity.account_id)

    async def call(self, op: Awaitable[T]) -> T:
        """Run one backend call under the middleware's timeout."""
        try:
            return await bounded(op, self._timeout)
        except asyncio.TimeoutError:
            raise BackendUnavailable("database", f"no answer within {self._timeout}s") from None

    def _ledger_health(self, down: BackendUnavailable | None) -> None:
        """Log and tell the observer once when billing degrades (the database unreachable)
        and once when it recovers."""
        if (down is not None) == self._db_degraded:
            return
        self._db_degraded = down is not None
        if down is not None:
            log.warning("billing degraded, database unavailable: %s", down.detail)
        else:
            log.warning("billing recovered, database reachable again")
        self.observer.degraded("database", self._db_degraded)

    async def _insufficient(self, exc: InsufficientCredits, bill: Bill) -> ProblemResponse:
        denied = None
        try:
            account = await self.call(self.ledger.get_account(exc.account_id))
            if account is not None:
                denied = account.metadata.get("trial_denied")
        except BackendUnavailable:
            pass
        return insufficient(
            exc,
            tier=bill.tier,
            trial_denied=denied,
            headers=bill.headers,
            balance_header=self._balance_header,
        )
