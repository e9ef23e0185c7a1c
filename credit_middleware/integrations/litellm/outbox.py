"""Settlements the ledger cannot take now: kept, retried, and landed exactly once.

An LLM call's capture or release happens after the provider answered; if the ledger is down at
that moment, giving up would serve the call free (a lost capture) or keep its worst case held
until the hold times out (a lost release). So a settlement that fails with a backend fault is
kept here and retried in the background, with backoff, until the ledger takes it.

Retrying is safe because every settlement is idempotent by its hold: a capture of the same
amount replays the first one, a second release returns the first, a late debit (the hold
expired during the outage) carries a key derived from the hold id, and a hold whose outcome was
unknown is resolved by its own idempotency key. The queue lives in the process: a process that
dies with settlements pending loses them to the holds' timeouts (the credits come back; nothing
is charged twice), which is logged loudly at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ...errors import BackendUnavailable

__all__ = ["Outbox", "is_backend_fault"]

log = logging.getLogger("credit_middleware.litellm")
T = TypeVar("T")


def is_backend_fault(exc: BaseException) -> bool:
    """A failure of the ledger's database (worth retrying), not an answer from it."""
    return isinstance(exc, (BackendUnavailable, OSError, asyncio.TimeoutError))


class Outbox:
    """Pending settlements by key (``capture:<hold id>``, ...), retried until they land.

    ``retry_delay`` is the first wait before a retry; it doubles up to ``max_delay`` while the
    ledger stays down. One per :class:`~.litellm_meter.Meter`; no globals.
    """

    def __init__(self, *, retry_delay: float = 0.5, max_delay: float = 10.0) -> None:
        self.retry_delay = retry_delay
        self.max_delay = max_delay
        self._pending: dict[str, Callable[[], Awaitable[Any]]] = {}
        self._worker: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self.landed = 0  # settlements that landed on a retry

    @property
    def pending(self) -> list[str]:
        """The keys of the settlements still waiting for the ledger."""
        return list(self._pending)

    async def run(self, key: str, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``op`` now; if the ledger cannot take it, keep it for a retry and return None.

        Answers from the ledger (a hold no longer active, not enough credits) are raised as
        usual: only backend faults are kept.
        """
        try:
            return await op()
        except Exception as exc:
            if not is_backend_fault(exc):
                raise
            log.warning("ledger unavailable for %s (%s): kept, retried until it lands", key, exc)
            self.keep(key, op)
            return None

    def keep(self, key: str, op: Callable[[], Awaitable[Any]]) -> None:
        """Queue ``op`` (a second one under the same key replaces the first: same settlement)."""
        self._pending[key] = op
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._work())

    async def _work(self) -> None:
        delay = self.retry_delay
        while self._pending:
            await asyncio.sleep(delay)
            before = len(self._pending)
            await self.flush()
            if len(self._pending) < before:
                delay = self.retry_delay
            else:
                delay = min(delay * 2, self.max_delay)

    def _guard(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def flush(self) -> int:
        """Retry every pending settlement now, oldest first; returns how many landed. Stops at
        the first backend fault (the ledger is still down)."""
        landed = 0
        async with self._guard():
            for key, op in list(self._pending.items()):
                try:
                    await op()
                except Exception as exc:
                    if is_backend_fault(exc):
                        break
                    log.exception("settlement %s failed for good; dropped", key)
                else:
                    landed += 1
                    log.info("settlement %s landed on a retry", key)
                if self._pending.get(key) is op:
                    del self._pending[key]
        self.landed += landed
        worker = self._worker
        if not self._pending and worker is not None and worker is not asyncio.current_task():
            worker.cancel()  # nothing left: no retry timer outlives the queue
        return landed

    async def close(self, *, timeout: float = 5.0) -> None:
        """At shutdown: one last try (bounded), then report what is lost to the holds' timeouts."""
        if self._pending:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.flush(), timeout)
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        if self._pending:
            log.error(
                "%d settlements never reached the ledger (%s): their holds expire unbilled",
                len(self._pending),
                ", ".join(self._pending),
            )
