"""Rate limits per account and tier with ``limits``' strategies, and their IETF header fields.

Memory storage by default (`limits`' own, :mod:`.memory`); Redis (redis-py, the
client the provisioning lock uses too) when a client is given, all of a request's limits and
its header figures in one atomic script call (:mod:`.redis_scripts`). When Redis fails or
times out, ``on_redis_error`` decides: ``"local"`` counts in this process until Redis is back
(logged once per transition), ``"refuse"`` raises :class:`BackendUnavailable` (the middleware
answers 503).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from limits import RateLimitItem, parse_many

from .._aio import bounded
from ..errors import BackendUnavailable, ConfigurationError
from ..events import NULL_OBSERVER, Observer
from ..problems import ProblemResponse, problem
from .memory import MemoryCounter
from .redis_scripts import Counted, RedisCounter

__all__ = [
    "DEFAULT_TIERS",
    "TIER_TTL",
    "LimitState",
    "RateLimiter",
    "Strategy",
    "Verdict",
    "rate_limit_headers",
    "rate_limited",
]

log = logging.getLogger("credit_middleware.ratelimit")

Strategy = Literal["moving-window", "sliding-window-counter", "fixed-window"]
#: each strategy's tag in its keys
_STRATEGIES: Mapping[str, str] = {
    "moving-window": "mw",
    "sliding-window-counter": "swc",
    "fixed-window": "fw",
}
DEFAULT_TIERS: Mapping[str, str] = {"trial": "60/minute;1000/day"}
#: how long a middleware trusts the tier it read for an account: a tier change (an upgrade)
#: is picked up within this many seconds, without a read on every request
TIER_TTL = 60.0
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

    A request is counted only if every one of its limits has room (a refused call spends no
    slot of the others), in one Redis round trip per request (:mod:`.redis_scripts`) or in
    this process (:mod:`.memory`). Every Redis call is bounded by ``timeout``; after
    a failure Redis is tried again only every ``recheck`` seconds, so an outage costs one
    failed attempt, not one per request.
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
        # Each strategy keeps a different Redis type under its keys: switching strategies on a
        # live deployment must not hit the old keys (WRONGTYPE).
        self._tag = _STRATEGIES[strategy]
        self._local = MemoryCounter(strategy)
        self._remote: RedisCounter | None = None
        if redis is not None:
            self._remote = RedisCounter(redis, strategy, key_prefix, self._tag)
        self._policy = on_redis_error
        self._timeout = timeout
        self._recheck = recheck
        self.observer = observer or NULL_OBSERVER
        self._degraded_until = 0.0
        self._degraded = False
        self._now = time.time  # the clock of moving-window timestamps on Redis (tests set it)
        # (ids, limits) -> (monotonic time it ends, when it was decided, the refusal): a client
        # that keeps calling while refused is answered from here, without counting again
        self._refusals: OrderedDict[Any, tuple[float, float, Verdict]] = OrderedDict()
        self._static: dict[tuple[RateLimitItem, ...], tuple[tuple[str, int, int], ...]] = {}

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
        remote = self._remote
        if remote is not None and self._degraded and time.monotonic() < self._degraded_until:
            if self._policy == "refuse":
                raise BackendUnavailable("redis", "rate-limit storage unreachable")
            remote = None
        if remote is None:
            return self._verdict(ids, items, *self._local.count(items, ids))
        try:
            allowed, counted = await bounded(
                remote.count(items, ids[1], ids[2], self._now()), self._timeout
            )
        except Exception as exc:  # Redis down, slow, or misbehaving
            self._set_degraded(True, exc)
            if self._policy == "refuse":
                raise BackendUnavailable("redis", repr(exc)) from None
            return self._verdict(ids, items, *self._local.count(items, ids))
        if self._degraded:
            self._set_degraded(False, None)
        return self._verdict(ids, items, allowed, counted)

    def _still_refused(self, key: Any) -> Verdict | None:
        """A refusal that still holds, with its times counted down; None if there is none.

        A refused request spends no slot, so this memory is not needed for correctness: it
        answers a client that keeps calling while refused without a Redis round trip (or any
        counting) until the refusal ends. In a moving or fixed window nothing frees a slot
        before the reset time the limit reported, so nothing is refused that would have been
        allowed; for the sliding-window counter that time is `limits`' own estimate, the same
        one the client was given as ``Retry-After``."""
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
            LimitState(
                st.name, st.quota, st.window, st.remaining, max(0, math.ceil(st.reset - gone))
            )
            for st in verdict.states
        )
        return Verdict(False, states, max(1, math.ceil(until - now)), verdict.exceeded)

    def _verdict(
        self,
        ids: tuple[str, ...],
        items: tuple[RateLimitItem, ...],
        allowed: bool,
        counted: list[Counted],
    ) -> Verdict:
        """The verdict from each limit's figures; a refusal is remembered until it ends."""
        static = self._static.get(items)
        if static is None:
            static = tuple((_name(i), i.amount, i.get_expiry()) for i in items)
            self._static[items] = static
        states = tuple(
            LimitState(name, quota, window, remaining, max(0, math.ceil(left)))
            for (name, quota, window), (_, remaining, left) in zip(static, counted, strict=True)
        )
        if allowed:
            return Verdict(True, states)
        # allowed again only once every exceeded limit has a free slot
        at = max((i for i, c in enumerate(counted) if not c[0]), key=lambda i: counted[i][2])
        wait = counted[at][2]
        verdict = Verdict(False, states, max(1, states[at].reset), states[at].name)
        if wait > 0:
            key = (ids, items)
            now = time.monotonic()
            self._refusals[key] = (now + wait, now, verdict)
            self._refusals.move_to_end(key)
            while len(self._refusals) > _MAX_REFUSALS:
                self._refusals.popitem(last=False)
        return verdict

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


def rate_limited(
    verdict: Verdict, tier: str, headers: Iterable[tuple[str, str]]
) -> ProblemResponse:
    """A 429 naming the limit that was exceeded and when to try again."""
    hdrs = dict(headers)
    hdrs["Retry-After"] = str(verdict.retry_after)
    return problem(
        "rate-limited",
        f"rate limit {verdict.exceeded} exceeded for tier {tier}",
        headers=hdrs,
        tier=tier,
        limit=verdict.exceeded,
        retry_after=verdict.retry_after,
    )
