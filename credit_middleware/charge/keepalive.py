"""Requests still being served are kept alive: their ``Idempotency-Key`` lease and their hold.

A keyed request owns its key for a lease (so that a retry takes over the charge of an attempt
whose process died); a hold route's hold times out (so that a crash loses nothing). Neither
may lapse under a handler that is still running: a retry would run the call a second time, a
hold would expire and the call go unbilled. So every request with something to keep alive is
registered here while it runs, and one timer per middleware (``loop.call_later``, never a task
per request) wakes up when the oldest of them has used a third of its lease or hold; the
requests due then are renewed in one background task, in one ledger operation each
(:meth:`Ledger.extend_request`). A quick request costs a dictionary entry and nothing else.

Times are the ledger's clock (the one its leases and holds are written in).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .._aio import bounded
from ..errors import CreditError
from ..ledger import Ledger

__all__ = ["KeepAlive", "Live"]

log = logging.getLogger("credit_middleware.middleware")

#: A lease or hold is renewed when this share of it has passed.
RENEW_AT = 1 / 3
_SLACK_US = 1000  # a timer may fire this early (clocks of different resolutions)


class _Handle(Protocol):
    def cancel(self) -> None: ...


@dataclass(slots=True, eq=False)
class Live:
    """One request being served: what to keep alive, and when it is next due."""

    account_id: str
    owner: str
    key: str | None
    lease: float
    hold_id: int | None
    hold_timeout: float
    every: int  # µs
    due: int  # µs, the ledger's clock
    lost: bool = False  # a retry took its key over: nothing more to renew


class KeepAlive:
    """Renews the leases and holds of one middleware's requests that outlive a fraction of
    them (see the module docstring)."""

    def __init__(self, ledger: Ledger, *, timeout: float) -> None:
        self.ledger = ledger
        self.timeout = timeout
        #: how the timer is set (the running loop's ``call_later`` unless given; a simulation
        #: gives its own clock's)
        self.call_later: Callable[..., _Handle] | None = None
        self._ids = itertools.count()
        self._live: dict[int, Live] = {}
        self._timer: _Handle | None = None
        self._timer_at: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def track(
        self,
        account_id: str,
        owner: str,
        *,
        key: str | None = None,
        lease: float = 30.0,
        hold_id: int | None = None,
        hold_timeout: float = 300.0,
    ) -> int:
        """Keep the request alive until :meth:`untrack`; returns its ticket."""
        spans = ([lease] if key is not None else []) + ([hold_timeout] if hold_id else [])
        every = int(min(spans) * RENEW_AT * 1_000_000)
        ticket = next(self._ids)
        due = self.ledger.now_us() + every
        self._live[ticket] = Live(account_id, owner, key, lease, hold_id, hold_timeout, every, due)
        if self._timer_at is None or due < self._timer_at:
            self._arm(due)
        return ticket

    def untrack(self, ticket: int) -> None:
        self._live.pop(ticket, None)

    def _arm(self, at: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        call_later = self.call_later or asyncio.get_running_loop().call_later
        self._timer_at = at
        self._timer = call_later(max(0, at - self.ledger.now_us()) / 1_000_000, self._tick)

    def _tick(self) -> None:
        self._timer, self._timer_at = None, None
        due = self._take_due()
        if due:
            task = asyncio.ensure_future(self._renew(due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        left = [live.due for live in self._live.values() if not live.lost]
        if left:
            self._arm(min(left))

    def _take_due(self) -> list[Live]:
        now = self.ledger.now_us()
        due = [x for x in self._live.values() if x.due <= now + _SLACK_US and not x.lost]
        for live in due:
            live.due = now + live.every
        return due

    async def renew_due(self) -> int:
        """Renew now what is due (what the timer does); returns how many were due."""
        due = self._take_due()
        await self._renew(due)
        return len(due)

    async def _renew(self, due: list[Live]) -> None:
        for live in due:
            try:
                kept = await bounded(
                    self.ledger.extend_request(
                        live.account_id,
                        live.key,
                        owner=live.owner,
                        lease=live.lease,
                        hold_id=live.hold_id,
                        hold_timeout=live.hold_timeout,
                    ),
                    self.timeout,
                )
            except (CreditError, ValueError, asyncio.TimeoutError) as exc:
                # tried again at the next tick, a third of a lease later: two more chances
                log.debug("could not keep request %s alive: %r", live.owner, exc)
                continue
            if not kept:
                live.lost = True

    def aclose(self) -> None:
        """Stop the timer and the renewals on their way (the middleware is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, None
        for task in list(self._tasks):
            task.cancel()
        self._live.clear()
