"""Trial-abuse protection: at most N trial grants per client network per time window.

:class:`TrialIpCap` is an eligibility check for ``TrialPolicy(checks=(...))``. It counts with
`limits` (memory by default, Redis for many processes) and keys every hit by the account id as
well, so concurrent or retried decisions for the *same* new account spend one slot, not several:
the first decider claims the account, takes the slot and records its answer; everyone else
deciding for that account within the window reuses that answer. A storage that fails or is slow
never blocks a signup: the check fails open (the trial is granted) and says so once in the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from typing import Any, Literal

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.storage import storage_from_string

from .._extras import optional
from .._redis import limits_storage
from ..errors import ConfigurationError
from ..events import NULL_OBSERVER, Observer
from ..identity.resolvers import Identity

__all__ = ["IP_TRIAL_LIMIT", "TrialIpCap"]

log = logging.getLogger("credit_middleware.abuse")

#: The reason recorded on an account refused a trial by the per-IP cap.
IP_TRIAL_LIMIT = "ip_trial_limit"

Strategy = Literal["moving-window", "fixed-window", "sliding-window-counter"]
_STRATEGIES: dict[str, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}
_ALLOWED, _DENIED = 1, 2


def _storage(spec: Any, key_prefix: str) -> Storage:
    if spec is None:
        spec = "memory://"
    if isinstance(spec, Storage):
        return spec
    options: dict[str, Any] = {}
    if not isinstance(spec, str):
        try:
            storage: Storage = limits_storage(spec, key_prefix=key_prefix)  # the app's Redis
        except ConfigurationError:
            raise ConfigurationError(
                "storage must be a URL, a limits.aio.storage.Storage or a redis.asyncio client"
            ) from None
        return storage
    url = spec if spec.startswith("async+") else "async+" + spec
    if url.startswith(("async+redis", "async+rediss")):
        optional("redis", "a Redis trial cap needs redis-py", "redis")
        options["implementation"] = "redispy"
        options["key_prefix"] = key_prefix
    try:
        built = storage_from_string(url, **options)
    except Exception as exc:  # limits' own ConfigurationError, or a driver error
        raise ConfigurationError(f"trial cap storage {spec!r} cannot be used: {exc}") from None
    if not isinstance(built, Storage):  # pragma: no cover - async+ always builds async storage
        raise ConfigurationError(f"trial cap storage {spec!r} is not an async storage")
    return built


def network_of(client_ip: str | None, ipv6_prefix: int = 64) -> str | None:
    """The bucket a client address counts against: the IPv4 address itself, or its IPv6 /64
    (one host usually owns a whole /64, so counting single v6 addresses would be no cap)."""
    if not client_ip:
        return None
    try:
        addr = ipaddress.ip_address(client_ip.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, ipv6_prefix), strict=False))
    return str(addr)


class TrialIpCap:
    """Eligibility check: at most ``limit`` (e.g. ``"3/day"``) trial grants per client IP.

    ``storage`` is ``"memory://"`` (default, one process), a Redis URL (``redis://...``,
    ``redis+cluster://...``, ``redis+sentinel://...``; redis-py is used, keys under
    ``redis_key_prefix``), a ``redis.asyncio`` client (its connection pool is shared) or an
    existing async `limits` storage. Identities without a usable
    ``client_ip`` are not counted. Denied identities get ``reason`` (default
    ``"ip_trial_limit"``), which provisioning records on the account as ``trial_denied``.
    """

    def __init__(
        self,
        limit: str | RateLimitItem = "3/day",
        *,
        storage: str | Storage | Any = None,
        strategy: Strategy = "moving-window",
        ipv6_prefix: int = 64,
        timeout: float = 0.5,
        decision_wait: float = 1.0,
        prefix: str = "credit-trial-ip",
        redis_key_prefix: str = "credit",
        reason: str = IP_TRIAL_LIMIT,
        observer: Observer | None = None,
    ) -> None:
        try:
            self.limit = limit if isinstance(limit, RateLimitItem) else parse(limit)
        except ValueError as exc:
            raise ConfigurationError(f"trial cap limit {limit!r}: {exc}") from None
        if strategy not in _STRATEGIES:
            raise ConfigurationError(f"strategy must be one of {sorted(_STRATEGIES)}")
        if not 0 <= ipv6_prefix <= 128:
            raise ConfigurationError("ipv6_prefix must be between 0 and 128")
        if timeout <= 0 or decision_wait < 0:
            raise ConfigurationError("timeout must be positive and decision_wait not negative")
        self.storage = _storage(storage, redis_key_prefix)
        self._limiter = _STRATEGIES[strategy](self.storage)
        self._ipv6_prefix = ipv6_prefix
        self._timeout = timeout
        self._wait = decision_wait
        self._prefix = prefix
        self.reason = reason
        self._observer = observer or NULL_OBSERVER
        self._degraded = False
        self._window = int(self.limit.get_expiry())

    def __repr__(self) -> str:
        return f"TrialIpCap({str(self.limit)!r})"

    async def __call__(self, identity: Identity) -> str | None:
        net = network_of(identity.client_ip, self._ipv6_prefix)
        if net is None:
            return None
        try:
            allowed = await asyncio.wait_for(self._decide(net, identity.account_id), self._timeout)
        except Exception as exc:  # any storage failure or timeout: never block a signup
            self._fault(exc)
            return None
        if self._degraded:
            self._degraded = False
            log.warning("trial IP cap recovered, its storage answers again")
            self._observer.degraded("trial_cap", False)
        return None if allowed else self.reason

    async def _decide(self, net: str, account_id: str) -> bool:
        digest = hashlib.sha256(account_id.encode("utf-8")).hexdigest()[:32]
        claim = f"{self._prefix}/claim/{net}/{digest}"
        result = f"{self._prefix}/result/{net}/{digest}"
        if await self.storage.incr(claim, self._window) == 1:
            allowed = await self._limiter.hit(self.limit, self._prefix, net)
            await self.storage.incr(result, self._window, _ALLOWED if allowed else _DENIED)
            return allowed
        # Someone already decided (or is deciding) for this very account: reuse the answer.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        delay = 0.005
        while True:
            answer = await self.storage.get(result)
            if answer:
                return answer == _ALLOWED
            if loop.time() + delay > deadline:
                log.debug("trial IP cap: no answer from the first decider in time, allowing")
                return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def remaining(self, client_ip: str) -> int:
        """How many more trials this client's network may get in the current window."""
        net = network_of(client_ip, self._ipv6_prefix)
        if net is None:
            return self.limit.amount
        stats = await self._limiter.get_window_stats(self.limit, self._prefix, net)
        return int(stats.remaining)

    def _fault(self, exc: BaseException) -> None:
        if not self._degraded:
            self._degraded = True
            log.warning("trial IP cap degraded, granting trials uncapped: %r", exc)
            self._observer.degraded("trial_cap", True)
