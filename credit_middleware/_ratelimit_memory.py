"""All of a request's rate limits in this process: `limits`' memory storage, without its costs.

`limits`' asyncio memory storage starts a task on nearly every hit that walks every key, with
a thread hop per key, to drop expired entries (a fifth of the embedded default's CPU per
request); its synchronous twin starts a new timer thread every 10 ms instead. Both are only
housekeeping: expired entries are never counted either way. :class:`MemoryCounter` uses the
synchronous storage and strategies (nothing here waits, so no coroutine per call) and sweeps at
most once per :data:`SWEEP_EVERY` seconds. Like the Redis scripts, a request is counted only if
every one of its limits has room: no await runs between the check and the count, so no other
request interleaves.
"""

from __future__ import annotations

import threading
import time

from limits import RateLimitItem, strategies
from limits.storage import MemoryStorage

from ._ratelimit_redis import Counted

__all__ = ["SWEEP_EVERY", "MemoryCounter"]

SWEEP_EVERY = 1.0  # seconds between sweeps of expired entries (memory only, not semantics)

_STRATEGIES: dict[str, type[strategies.RateLimiter]] = {
    "moving-window": strategies.MovingWindowRateLimiter,
    "sliding-window-counter": strategies.SlidingWindowCounterRateLimiter,
    "fixed-window": strategies.FixedWindowRateLimiter,
}


class _SweptMemoryStorage(MemoryStorage):
    """`limits`' memory storage whose expiry sweep runs at most once per ``SWEEP_EVERY``."""

    def __init__(self) -> None:
        self._next_sweep = 0.0
        super().__init__()

    # limits calls ``self.__schedule_expiry()`` (name-mangled) before every change
    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY
        sweep = threading.Timer(0.0, self._MemoryStorage__expire_events)  # type: ignore[attr-defined]
        sweep.daemon = True
        sweep.start()


class MemoryCounter:
    """One strategy of `limits` on its memory storage, counting a request all or nothing."""

    def __init__(self, strategy: str) -> None:
        self.storage = _SweptMemoryStorage()
        self._limiter = _STRATEGIES[strategy](self.storage)

    def count(
        self, items: tuple[RateLimitItem, ...], ids: tuple[str, ...]
    ) -> tuple[bool, list[Counted]]:
        """Count one request against every limit if all have room; each limit's figures."""
        limiter = self._limiter
        if len(items) == 1:  # its own hit checks it: nothing else to keep unspent
            allowed = limiter.hit(items[0], *ids)
        else:
            # remaining >= 1 is exactly limits' test() for every strategy, and the figures
            # are needed anyway when the request is refused
            before = [limiter.get_window_stats(item, *ids) for item in items]
            allowed = all(stats.remaining >= 1 for stats in before)
            if not allowed:
                now = time.time()
                return False, [(s.remaining >= 1, s.remaining, s.reset_time - now) for s in before]
            for item in items:
                limiter.hit(item, *ids)
        out: list[Counted] = []
        now = time.time()
        for item in items:
            stats = limiter.get_window_stats(item, *ids)
            out.append((allowed or stats.remaining >= 1, stats.remaining, stats.reset_time - now))
        return allowed, out
