"""All of a request's rate limits in this process, on `limits`' memory storage, cheaply.

`limits`' asyncio memory storage starts a task on nearly every hit that walks every key, with
a thread hop per key, to drop expired entries (with the benchmark's 64 accounts, more than half
of the embedded default's CPU per request); its synchronous twin starts a new timer thread every
10 ms instead. Both are only housekeeping: expired entries are never counted either way. Here
the synchronous storage sweeps at most once per :data:`SWEEP_EVERY` seconds, and
:class:`MemoryCounter` calls the storage the way `limits`' strategies do (the same storage
calls, the same formulas for remaining and reset) but without a coroutine per call, with each
limit's key built once per request instead of once per call, and the figures after a hit
derived from the ones read before it. Like the Redis scripts, a request is counted only if
every one of its limits has room; nothing here awaits, so no other request interleaves between
the check and the count. ``tests/limits/test_ratelimit_memory.py`` compares it with `limits`' own
strategies on the same random sequences.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from limits import RateLimitItem
from limits.storage import MemoryStorage

from .redis_scripts import Counted, sliding_figures

__all__ = ["SWEEP_EVERY", "MemoryCounter"]

SWEEP_EVERY = 1.0  # seconds between sweeps of expired entries (memory only, not semantics)


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


_Limit = tuple[str, int, int]  # key suffix, amount, expiry (s)


class MemoryCounter:
    """One strategy of `limits` on its memory storage, counting a request all or nothing."""

    def __init__(self, strategy: str) -> None:
        self.storage = _SweptMemoryStorage()
        count: dict[str, Callable[[list[str], tuple[_Limit, ...]], Any]] = {
            "moving-window": self._moving,
            "fixed-window": self._fixed,
            "sliding-window-counter": self._sliding,
        }
        self._count = count[strategy]
        self._limits: dict[tuple[RateLimitItem, ...], tuple[_Limit, ...]] = {}

    def count(
        self, items: tuple[RateLimitItem, ...], ids: tuple[str, ...]
    ) -> tuple[bool, list[Counted]]:
        """Count one request against every limit if all have room; each limit's figures."""
        limits = self._limits.get(items)
        if limits is None:
            limits = tuple(
                (f"/{i.amount}/{i.multiples}/{i.GRANULARITY.name}", i.amount, i.get_expiry())
                for i in items
            )
            self._limits[items] = limits
        head = "LIMITER/" + "/".join(ids)
        result: tuple[bool, list[Counted]] = self._count([head + x[0] for x in limits], limits)
        return result

    def _moving(self, keys: list[str], limits: tuple[_Limit, ...]) -> tuple[bool, list[Counted]]:
        # MovingWindowRateLimiter: a slot is free while fewer than `amount` entries are in the
        # window; it resets one expiry after its oldest entry (after now, if it is empty)
        storage = self.storage
        pairs = list(zip(keys, limits, strict=True))
        windows = [storage.get_moving_window(k, a, e) for k, (_, a, e) in pairs]
        fits = [count < a for (_, count), (_, a, _) in zip(windows, limits, strict=True)]
        allowed = all(fits)
        if allowed:
            fits = [storage.acquire_entry(k, a, e) for k, (_, a, e) in pairs]
            if not all(fits):
                # an entry exactly one expiry old: limits' window leaves it out, its hit still
                # counts it (one instant, two rules); the hit decides, as in limits itself
                allowed = False
                windows = [storage.get_moving_window(k, a, e) for k, (_, a, e) in pairs]
        now = time.time()
        out: list[Counted] = []
        for ok, (start, count), (_, amount, expiry) in zip(fits, windows, limits, strict=True):
            if allowed:
                start, count = (start if count else now), count + 1
            out.append((ok, amount - count, start + expiry - now))
        return allowed, out

    def _fixed(self, keys: list[str], limits: tuple[_Limit, ...]) -> tuple[bool, list[Counted]]:
        # FixedWindowRateLimiter: a counter that expires one expiry after its first hit
        storage = self.storage
        counts = [storage.get(key) for key in keys]
        allowed = all(count < a for count, (_, a, _) in zip(counts, limits, strict=True))
        if allowed:
            counts = [storage.incr(k, e) for k, (_, _, e) in zip(keys, limits, strict=True)]
        now = time.time()
        return allowed, [
            (allowed or count < amount, max(0, amount - count), storage.get_expiry(key) - now)
            for key, count, (_, amount, _) in zip(keys, counts, limits, strict=True)
        ]

    def _sliding(self, keys: list[str], limits: tuple[_Limit, ...]) -> tuple[bool, list[Counted]]:
        # SlidingWindowCounterRateLimiter: the current window's count plus the previous one's,
        # weighted by how much of it still overlaps the sliding window
        storage = self.storage
        windows = [
            storage.get_sliding_window(k, e) for k, (_, _, e) in zip(keys, limits, strict=True)
        ]
        fits = [
            int(pc * pt / e + cc) < a
            for (pc, pt, cc, _), (_, a, e) in zip(windows, limits, strict=True)
        ]
        allowed = all(fits)
        if allowed:
            for key, (_, amount, expiry) in zip(keys, limits, strict=True):
                storage.acquire_sliding_window_entry(key, amount, expiry)
        return allowed, [
            (ok, *sliding_figures(amount, expiry, pc, pt, cc + allowed, ct))
            for ok, (pc, pt, cc, ct), (_, amount, expiry) in zip(fits, windows, limits, strict=True)
        ]
