"""The ASGI door: who is calling, what it costs, may they, pay — then call the app.

Pure ASGI (never ``BaseHTTPMiddleware``): one ``app.add_middleware(CreditMiddleware, ...)`` on
any Starlette or FastAPI app. Refusals are ``application/problem+json``; a backend problem is a
503 with ``Retry-After`` (or, if configured, an unbilled pass), never a 500 of ours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Literal, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import _bill
from ._aio import bounded
from ._bill import _Bill, idempotency_key
from ._redis import close_redis, redis_from_url
from .errors import (
    AccountNotFound,
    BackendUnavailable,
    ConfigurationError,
    IdempotencyConflict,
    InsufficientCredits,
)
from .events import NULL_OBSERVER, Observer
from .identity import (
    ApiKeyLookup,
    Identity,
    IdentityResolver,
    InvalidCredentials,
    TrustedProxies,
    default_resolver,
)
from .ledger import Ledger, Receipt
from .locks import LocalLocks, ProvisionLocks, RedisLocks
from .money import from_micros
from .policy import TrialPolicy
from .pricing import Price, Pricing
from .problems import (
    ProblemResponse,
    Refused,
    insufficient,
    ledger_down,
    problem,
    rate_limited,
    retry_after,
)
from .provisioning import Provisioner
from .ratelimit import DEFAULT_TIERS, RateLimiter, Strategy, rate_limit_headers

__all__ = ["FINAL_COST_STATE", "CreditMiddleware"]

log = logging.getLogger("credit_middleware.middleware")
T = TypeVar("T")
TIER_TTL = 60.0

#: ``request.state`` attribute a "hold" route's handler sets to the final price (credits).
FINAL_COST_STATE = _bill.FINAL_COST_STATE


class CreditMiddleware:
    """Identity, lazy provisioning, rate limits and metering for every priced HTTP request.

    Give URLs (``database_url``, ``redis_url``; none → SQLite file + in-memory limits) or
    built objects (``ledger``, ``provisioner``, ``rate_limiter``, ``redis``). Identity comes
    from ``resolver`` or from the JWT / API-key / trusted-header options.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        ledger: Ledger | None = None,
        provisioner: Provisioner | None = None,
        policy: TrialPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        redis: Any = None,
        pricing: Pricing | None = None,
        resolver: IdentityResolver | None = None,
        jwt_secret: str | None = None,
        jwks_url: str | None = None,
        jwt_issuer: str | None = None,
        jwt_audience: str | None = None,
        api_key_lookup: ApiKeyLookup | None = None,
        trusted_proxies: Iterable[str] = (),
        user_header: str | None = None,
        tiers: Mapping[str, str] = DEFAULT_TIERS,
        default_limits: str | None = "60/minute;1000/day",
        strategy: Strategy = "moving-window",
        on_redis_error: Literal["local", "refuse"] = "local",
        on_ledger_error: Literal["refuse", "allow"] = "refuse",
        refund_on_error: bool = True,
        legacy_headers: bool = False,
        balance_header: str = "Credit-Balance",
        key_prefix: str = "credit:",
        timeout: float = 3.0,
        hold_timeout: float = 300.0,
        auto_migrate: bool = True,
        observer: Observer | None = None,
    ) -> None:
        if on_ledger_error not in ("refuse", "allow"):
            raise ConfigurationError("on_ledger_error must be 'refuse' or 'allow'")
        self.app = app
        self.observer = observer or NULL_OBSERVER
        self._owned: list[Callable[[], Awaitable[Any]]] = []
        self.redis = redis
        if self.redis is None and redis_url:
            client = self.redis = redis_from_url(redis_url, timeout=min(timeout, 1.0))
            self._owned.append(lambda: close_redis(client))
        self._owns_ledger = ledger is None and provisioner is None
        if ledger is None:
            ledger = provisioner.ledger if provisioner else Ledger(database_url, timeout=timeout)
            if self._owns_ledger:
                self._owned.append(ledger.close)
        self.ledger = ledger
        locks: ProvisionLocks = (
            RedisLocks(self.redis, prefix=key_prefix + "lock:") if self.redis else LocalLocks()
        )
        self.provisioner = provisioner or Provisioner(
            ledger, policy, locks=locks, observer=self.observer
        )
        self.limiter = rate_limiter or RateLimiter(
            tiers=tiers,
            default=default_limits,
            strategy=strategy,
            redis=self.redis,
            key_prefix=key_prefix + "rl",
            on_redis_error=on_redis_error,
            timeout=min(timeout, 1.0),
            observer=self.observer,
        )
        self.pricing = pricing or Pricing()
        self.proxies = TrustedProxies(trusted_proxies)
        self.resolver = resolver or default_resolver(
            jwt_secret=jwt_secret,
            jwks_url=jwks_url,
            issuer=jwt_issuer,
            audience=jwt_audience,
            api_key_lookup=api_key_lookup,
            proxies=self.proxies,
            user_header=user_header,
        )
        self._fail_open = on_ledger_error == "allow"
        self._refund = refund_on_error
        self._legacy = legacy_headers
        self._balance_header = balance_header
        self._timeout = timeout
        self._hold_timeout = hold_timeout
        self._migrated = not auto_migrate
        self._migrate_lock = asyncio.Lock()
        # account -> (tier, monotonic time to look again): a tier change (an upgrade) is
        # picked up within TIER_TTL seconds without a read on every request.
        self._tiers: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._db_degraded = False

    async def aclose(self) -> None:
        """Close what this middleware built itself (not objects that were passed in)."""
        for close in self._owned:
            try:
                await close()
            except Exception:  # closing is best effort
                log.debug("error while closing", exc_info=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._on_startup(receive), self._on_shutdown(send))
            return
        price = self.pricing.price(scope) if scope["type"] == "http" else None
        if price is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            bill = await self._admit(scope, price)
        except Refused as refused:
            self.observer.refused(refused.response.status_code, refused.reason)
            await refused.response(scope, receive, send)
            return
        except Exception:  # our own bug must not become the app's 500
            log.exception("credit middleware failed before the app")
            self.observer.refused(503, "internal")
            await problem("ledger-unavailable", "billing failed", headers=retry_after(1))(
                scope, receive, send
            )
            return
        overhead = time.perf_counter() - started
        await bill.run(self, scope, receive, send)
        self.observer.request_overhead(overhead + bill.post_seconds)

    def _on_startup(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and self._owns_ledger:
                self.ledger.reopen()  # a second lifespan (tests, reloads) after a shutdown
            return message

        return wrapped

    def _on_shutdown(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return wrapped

    # ------------------------------------------------------------------ admission

    async def _admit(self, scope: Scope, price: Price) -> _Bill:
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
        identity = replace(identity, client_ip=self.proxies.client_ip(scope))
        key = idempotency_key(scope)
        aid = identity.account_id
        bill = _Bill(identity, price, scope.get("path", ""))
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
            self._ledger_fault(exc)
            if self._fail_open:
                return bill
            raise Refused(ledger_down(), "ledger_unavailable") from None
        bill.headers = rate_limit_headers(verdict, legacy=self._legacy)
        if not verdict.allowed:
            raise Refused(rate_limited(verdict, bill.tier, bill.headers), "rate_limited")
        if price.mode == "handler":
            return bill
        try:
            bill.micros = await price.resolve(scope)
        except ValueError:
            log.exception("route %s: the cost callable returned an unusable price", price.route)
            raise
        if bill.micros == 0:
            return bill
        try:
            bill.receipt = await self._charge(identity, bill, key)
        except InsufficientCredits as exc:
            self.observer.ledger_op(bill.kind, "insufficient")
            raise Refused(await self._insufficient(exc, bill), "insufficient_credits") from None
        except IdempotencyConflict as exc:
            body = problem("idempotency-conflict", str(exc))
            raise Refused(body, "idempotency_conflict") from None
        except BackendUnavailable as exc:
            self.observer.ledger_op(bill.kind, "error")
            self._ledger_fault(exc)
            if self._fail_open:
                bill.micros = 0
                return bill
            raise Refused(ledger_down(), "ledger_unavailable") from None
        self._ledger_ok()
        self.observer.ledger_op(bill.kind, "replayed" if bill.receipt.replayed else "ok")
        return bill

    async def _migrate(self) -> None:
        if self._migrated:
            return
        async with self._migrate_lock:
            if not self._migrated:
                await self.call(self.ledger.migrate())
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

    async def _charge(self, identity: Identity, bill: _Bill, key: str | None) -> Receipt:
        for attempt in (1, 2):
            try:
                return await self._money(identity.account_id, bill, key)
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
        """Whether deciding the identity's trial again granted it (the 402 stands otherwise,
        also when the ledger cannot be asked)."""
        if not self.provisioner.may_reconsider(identity):
            return False
        try:
            result = await self.call(self.provisioner.ensure_account(identity, layer="request"))
        except BackendUnavailable:
            return False
        return result.granted

    async def _money(self, aid: str, bill: _Bill, key: str | None) -> Receipt:
        amount = from_micros(bill.micros)
        route = bill.route
        if bill.kind == "hold":
            op = self.ledger.hold(
                aid, amount, timeout=self._hold_timeout, key=key, layer="request", route=route
            )
        else:
            op = self.ledger.debit(aid, amount, key=key, layer="request", route=route)
        return await self.call(op)

    async def call(self, op: Awaitable[T]) -> T:
        """Run one backend call under the middleware's timeout."""
        try:
            return await bounded(op, self._timeout)
        except asyncio.TimeoutError:
            raise BackendUnavailable("database", f"no answer within {self._timeout}s") from None

    def _ledger_fault(self, exc: BackendUnavailable) -> None:
        if not self._db_degraded:
            self._db_degraded = True
            log.warning("billing degraded, database unavailable: %s", exc.detail)
            self.observer.degraded("database", True)

    def _ledger_ok(self) -> None:
        if self._db_degraded:
            self._db_degraded = False
            log.warning("billing recovered, database reachable again")
            self.observer.degraded("database", False)

    async def _insufficient(self, exc: InsufficientCredits, bill: _Bill) -> ProblemResponse:
        denied = None
        try:
            account = await self.call(self.ledger.get_account(exc.account_id))
            if account is not None:
                denied = account.metadata.get("trial_denied")
        except BackendUnavailable:
            pass
        return insufficient(exc, tier=bill.tier, trial_denied=denied, headers=bill.headers)
