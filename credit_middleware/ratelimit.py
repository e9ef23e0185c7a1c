"""Rate limits per account and tier with ``limits`` (async API), and their IETF header fields.

Memory storage by default; Redis storage (redis-py, the pool the provisioning lock uses too)
when a client is given. When Redis fails or times out, ``on_redis_error`` decides: ``"local"``
counts in this process until Redis is back (logged once per transition), ``"refuse"`` raises
:class:`BackendUnavailable` (the middleware answers 503).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from limits import RateLimitItem, parse_many
from limits.aio import storage as lstorage
from limits.aio import strategies

from ._aio import bounded
from ._redis import limits_storage
from .errors import BackendUnavailable, ConfigurationError
from .events import NULL_OBSERVER, Observer

__all__ = ["DEFAULT_TIERS", "LimitState", "RateLimiter", "Strategy", "Verdict"]

log = logging.getLogger("credit_middleware.ratelimit")

Strategy = Literal["moving-window", "sliding-window-counter", "fixed-window"]
_STRATEGIES: Mapping[str, type[strategies.RateLimiter]] = {
    "moving-window": strategies.MovingWindowRateLimiter,
    "sliding-window-counter": strategies.SlidingWindowCounterRateLimiter,
    "fixed-window": strategies.FixedWindowRateLimiter,
}
DEFAULT_TIERS: Mapping[str, str] = {"trial": "60/minute;1000/day"}
_MAX_REFUSALS = 10_000  # refusals remembered per limiter (oldest dropped first)


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit after a request: its quota and window, what is left, seconds to reset."""

    name: str
    quota: int
    window: int
    remaining: int
    reset: int


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    states: tuple[LimitState, ...]
    retry_after: int = 0
    exceeded: str | None = None


def _parse(spec: str, what: str) -> tuple[RateLimitItem, ...]:
    try:
        items = tuple(parse_many(spec))
    except ValueError as exc:
        raise ConfigurationError(f"{what}: {spec!r} is not a rate limit ({exc})") from None
    if not items:
        raise ConfigurationError(f"{what}: {spec!r} names no limit")
    return items


def _name(item: RateLimitItem) -> str:
    per = (
        item.GRANULARITY.name if item.multiples == 1 else f"{item.multiples}{item.GRANULARITY.name}"
    )
    return f"{item.amount}-per-{per}"


class RateLimiter:
    """Counts requests per account against its tier's limits (or a route's own limits).

    Every Redis call is bounded by ``timeout``; after a failure Redis is tried again only
    every ``recheck`` seconds, so an outage costs one failed attempt, not one per request.
    """

    def __init__(
        self,
        *,
        tiers: Mapping[str, str] = DEFAULT_TIERS,
        default: str | None = "60/minute;1000/day",
        strategy: Strategy = "moving-window",
        redis: Any = None,
        key_prefix: str = "credit:rl",
        on_redis_error: Literal["local", "refuse"] = "local",
        timeout: float = 0.25,
        recheck: float = 5.0,
        observer: Observer | None = None,
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ConfigurationError(f"strategy must be one of {sorted(_STRATEGIES)}")
        if on_redis_error not in ("local", "refuse"):
            raise ConfigurationError("on_redis_error must be 'local' or 'refuse'")
        self._tiers = {t: _parse(s, f"tier {t!r}") for t, s in tiers.items()}
        self._default = _parse(default, "default limits") if default else ()
        self._route_cache: dict[str, tuple[RateLimitItem, ...]] = {}
        self._strategy = _STRATEGIES[strategy]
        # Each strategy keeps a different Redis type under its keys: switching strategies on a
        # live deployment must not hit the old keys (WRONGTYPE).
        self._tag = {"moving-window": "mw", "sliding-window-counter": "swc"}.get(strategy, "fw")
        self._local = self._strategy(lstorage.MemoryStorage())
        self._remote: strategies.RateLimiter | None = None
        if redis is not None:
            self._remote = self._strategy(limits_storage(redis, key_prefix=key_prefix))
        self._policy = on_redis_error
        self._timeout = timeout
        self._recheck = recheck
        self.observer = observer or NULL_OBSERVER
        self._degraded_until = 0.0
        self._degraded = False
        # (ids, limits) -> (monotonic time it ends, when it was decided, the refusal): a client
        # that keeps calling while refused is answered from here, without counting again
        self._refusals: OrderedDict[Any, tuple[float, float, Verdict]] = OrderedDict()

    def items_for(self, tier: str, route_limits: str | None) -> tuple[RateLimitItem, ...]:
        if route_limits is not None:
            items = self._route_cache.get(route_limits)
            if items is None:
                items = _parse(route_limits, "route limits")
                self._route_cache[route_limits] = items
            return items
        return self._tiers.get(tier, self._default)

    async def hit(
        self, account_id: str, tier: str, *, route: str = "*", route_limits: str | None = None
    ) -> Verdict:
        """Count one request; a denied verdict carries ``retry_after`` (whole seconds)."""
        items = self.items_for(tier, route_limits)
        if not items:
            return Verdict(True, ())
        ids = (self._tag, quote(account_id, safe=""), route if route_limits else "*")
        if self._refusals:  # nothing to look up (or hash) while nobody is refused
            refused = self._still_refused((ids, items))
            if refused is not None:
                return refused
        limiter = self._limiter()
        if limiter is self._local:
            return self._note(ids, items, *await self._run(self._local, items, ids))
        try:
            verdict, wait = await bounded(self._run(limiter, items, ids), self._timeout)
        except Exception as exc:  # Redis down, slow, or misbehaving
            self._set_degraded(True, exc)
            if self._policy == "refuse":
                raise BackendUnavailable("redis", repr(exc)) from None
            return self._note(ids, items, *await self._run(self._local, items, ids))
        self._set_degraded(False, None)
        return self._note(ids, items, verdict, wait)

    def _still_refused(self, key: Any) -> Verdict | None:
        """A refusal that still holds, with its times counted down; None if there is none.

        Every limit of a request is counted at once (one round trip), so a refused request
        still spends a slot of its other limits. Answering a client that keeps calling from
        here, until the refusal ends, means a retry storm spends one slot of its daily budget,
        not one per call (and costs no Redis round trip). In a moving or fixed window nothing
        frees a slot before the reset time the limit reported, so nothing is refused that would
        have been allowed; for the sliding-window counter that time is `limits`' own estimate,
        the same one the client was given as ``Retry-After``."""
        entry = self._refusals.get(key)
        if entry is None:
            return None
        until, since, verdict = entry
        now = time.monotonic()
        if now >= until:
            del self._refusals[key]
            return None
        gone = now - since
        states = tuple(
            dataclasses.replace(st, reset=max(0, math.ceil(st.reset - gone)))
            for st in verdict.states
        )
        return Verdict(False, states, max(1, math.ceil(until - now)), verdict.exceeded)

    def _note(
        self, ids: tuple[str, ...], items: tuple[RateLimitItem, ...], verdict: Verdict, wait: float
    ) -> Verdict:
        if not verdict.allowed and wait > 0:
            key = (ids, items)
            now = time.monotonic()
            self._refusals[key] = (now + wait, now, verdict)
            self._refusals.move_to_end(key)
            while len(self._refusals) > _MAX_REFUSALS:
                self._refusals.popitem(last=False)
        return verdict

    def _limiter(self) -> strategies.RateLimiter:
        if self._remote is None:
            return self._local
        if self._degraded and time.monotonic() < self._degraded_until:
            if self._policy == "refuse":
                raise BackendUnavailable("redis", "rate-limit storage unreachable")
            return self._local
        return self._remote

    def _set_degraded(self, degraded: bool, exc: BaseException | None) -> None:
        if degraded:
            self._degraded_until = time.monotonic() + self._recheck
        if degraded == self._degraded:
            return
        self._degraded = degraded
        if degraded:
            fallback = "counting per process" if self._policy == "local" else "refusing (503)"
            log.warning("rate limiting degraded, Redis unreachable (%r): %s", exc, fallback)
        else:
            log.warning("rate limiting recovered, Redis reachable again")
        self.observer.degraded("redis", degraded)

    async def _run(
        self,
        limiter: strategies.RateLimiter,
        items: tuple[RateLimitItem, ...],
        ids: tuple[str, ...],
    ) -> tuple[Verdict, float]:
        """The verdict, and for a refusal the seconds until every exceeded limit resets."""
        # The limits are independent keys: count them concurrently (one round trip's wait
        # instead of one per limit on Redis).
        if limiter is self._local:  # in memory, tasks would cost more than they save
            counted = [await self._one(limiter, item, ids) for item in items]
        else:
            counted = await asyncio.gather(*(self._one(limiter, item, ids) for item in items))
        states = tuple(state for state, _, _ in counted)
        exceeded = [(state, left) for state, ok, left in counted if not ok]
        if not exceeded:
            return Verdict(True, states), 0.0
        # allowed again only once every exceeded limit has a free slot
        state, left = max(exceeded, key=lambda pair: pair[1])
        return Verdict(False, states, max(1, state.reset), state.name), left

    async def _one(
        self, limiter: strategies.RateLimiter, item: RateLimitItem, ids: tuple[str, ...]
    ) -> tuple[LimitState, bool, float]:
        ok = await limiter.hit(item, *ids)
        stats = await limiter.get_window_stats(item, *ids)
        left = stats.reset_time - time.time()
        reset = max(0, math.ceil(left))
        state = LimitState(_name(item), item.amount, item.get_expiry(), stats.remaining, reset)
        return state, ok, left


def rate_limit_headers(verdict: Verdict, *, legacy: bool = False) -> list[tuple[str, str]]:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-10: lists
    of named items, ``q``/``w`` for a policy, ``r``/``t`` for the current state), and
    optionally the legacy ``X-RateLimit-*`` for the closest limit."""
    if not verdict.states:
        return []
    policy = ", ".join(f'"{s.name}";q={s.quota};w={s.window}' for s in verdict.states)
    current = ", ".join(f'"{s.name}";r={s.remaining};t={s.reset}' for s in verdict.states)
    out = [("RateLimit-Policy", policy), ("RateLimit", current)]
    if legacy:
        tight = min(verdict.states, key=lambda s: (s.remaining, -s.reset))
        out += [
            ("X-RateLimit-Limit", str(tight.quota)),
            ("X-RateLimit-Remaining", str(tight.remaining)),
            ("X-RateLimit-Reset", str(tight.reset)),
        ]
    return out
