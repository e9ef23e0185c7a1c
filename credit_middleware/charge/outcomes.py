"""Money operations run to a known outcome: the wait is bounded, the operation never is.

Cancelling a ledger operation in flight (a timeout, a client that went away) can leave it
committed with nobody knowing, so a client told "billing unavailable, retry" would pay twice.
Here an operation runs in its own task and is never cancelled by us. If it does not answer in
time, or fails after it may have reached the database, its outcome is settled by its charge id
(:meth:`Ledger.resolve_request`, :meth:`Ledger.resolve_charge`, under the account's lock): a
charge that stands is served, one that did not happen is fenced so that it never can, and only
then is the client told 503. What cannot be settled in time is reversed in the background (an
audited refund or release), so a 503 never leaves a charge standing. Counted through
``Observer.unknown_outcome``.

Contention waits, faults refuse: an operation slower than ``timeout`` is waited for as long
again, and beyond that for as long as the database keeps answering this process's other
operations (it waits its turn behind them), up to ``patience``; only a database that answers
nothing for a whole ``timeout`` is given up on.

A settlement that cannot be written now (a refund, capture, release, stored response) is
retried in the background until it lands: each one on its own, keyed by its charge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._aio import retrieve
from ..errors import BackendUnavailable, CreditError
from ..events import Observer
from ..ledger import Ledger

__all__ = ["Outcomes"]

log = logging.getLogger("credit_middleware.middleware")
T = TypeVar("T")

_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: How many ``timeout``s an operation that keeps the database busy may be waited for.
PATIENCE = 10

#: ``resolve(reverse)``: what a charge left standing (None: nothing, and its id is fenced);
#: with ``reverse=True`` nothing of it stands afterwards.
Resolve = Callable[[bool], Awaitable[T | None]]


async def _wait(task: asyncio.Future[Any], seconds: float) -> bool:
    """Whether ``task`` finished within ``seconds`` (it is left running either way)."""
    done, _ = await asyncio.wait((task,), timeout=seconds)
    return bool(done)


class Outcomes:
    """Runs one middleware's money operations; owns the settlements still to be done."""

    def __init__(self, ledger: Ledger, timeout: float, observer: Observer) -> None:
        self.ledger = ledger
        self.timeout = timeout
        self.patience = timeout * PATIENCE
        self.observer = observer
        #: how background retries wait, and how an operation is waited for (a simulation or
        #: a test gives its own clock's)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.wait: Callable[[asyncio.Future[Any], float], Awaitable[bool]] = _wait
        #: operations of this process the database answered: the sign that it is alive
        self.answered = 0
        self._background: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, Callable[[], Awaitable[object]]] = {}

    @property
    def pending(self) -> int:
        """Operations that still have to be settled in the background."""
        return len(self._waiting)

    def waiting_for(self, charge_key: str) -> bool:
        """Whether a settlement of this charge still waits to land (in this process only: a
        crash before it lands loses it)."""
        return any(key.endswith(":" + charge_key) for key in self._waiting)

    def _start(self, op: Awaitable[T]) -> asyncio.Future[T]:
        task = asyncio.ensure_future(op)
        task.add_done_callback(self._answered)
        return task

    def _answered(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled():
            exc = task.exception()
            if not isinstance(exc, BackendUnavailable):
                self.answered += 1

    async def charge(
        self, account_id: str, charge_key: str, op: Awaitable[T], resolve: Resolve[T]
    ) -> T:
        """Run ``op`` (a charge keyed ``charge_key``) to a known outcome.

        Returns its result, or what ``resolve`` finds when it did apply but its own answer was
        lost; raises its refusal, or ``BackendUnavailable`` only when it certainly did not
        apply (fenced, or to be reversed in the background).
        """
        task = self._start(op)
        try:
            result = await self._result(task)
        except asyncio.CancelledError:
            # our caller is gone (a disconnect, a server timeout): it will never be served
            self._settle_later(charge_key, task, resolve, "cancelled")
            raise
        if result is not None:
            return result[0]
        self.observer.unknown_outcome("charge", "resolving")
        try:
            found = await self._resolve(resolve)
        except asyncio.CancelledError:
            self._settle_later(charge_key, task, resolve, "cancelled")
            raise
        except BackendUnavailable:
            self._settle_later(charge_key, task, resolve, "unknown outcome")
            self.observer.unknown_outcome("charge", "reversal_pending")
            raise
        if found is None:
            self.observer.unknown_outcome("charge", "not_applied")
            raise BackendUnavailable("database", "no answer in time; nothing was charged")
        self.observer.unknown_outcome("charge", "stood")
        return found

    async def settle(
        self, charge_key: str, what: str, op: Callable[[], Awaitable[T]]
    ) -> tuple[T] | None:
        """Run an idempotent settling operation (a refund, capture, release, stored response)
        of the charge ``charge_key`` after the app answered; if it fails or outlives the wait,
        it is retried in the background until it lands. Returns ``(its result,)``, or None
        when it was deferred; raises its refusal."""
        task = self._start(op())
        task.add_done_callback(retrieve)
        try:
            result = await self._result(task)
        except BackendUnavailable:
            result = None
        except asyncio.CancelledError:
            self._retry_later(f"{what}:{charge_key}", op)
            raise
        if result is None:
            self.observer.unknown_outcome(what, "retry_pending")
            self._retry_later(f"{what}:{charge_key}", op)
        return result

    async def _result(self, task: asyncio.Future[T]) -> tuple[T] | None:
        """The task's result within the wait (``(result,)``), None when its outcome is
        unknown; raises its error when that error proves nothing was applied."""
        waited = 0.0
        while True:
            seen = self.answered
            if await self.wait(task, self.timeout):
                break
            waited += self.timeout
            # a stalled loop or a slow server gets as long again; beyond that, only while the
            # database keeps answering (contention: this one waits its turn), not for ever
            if (waited >= 2 * self.timeout and self.answered == seen) or waited >= self.patience:
                return None
        exc = task.exception()
        if exc is None:
            return (task.result(),)
        if isinstance(exc, BackendUnavailable) and exc.maybe_applied:
            return None
        raise exc

    async def _resolve(self, resolve: Resolve[T]) -> T | None:
        task = self._start(resolve(False))
        task.add_done_callback(retrieve)
        result = await self._result(task)
        if result is None:
            raise BackendUnavailable("database", "the charge's outcome could not be settled")
        return result[0]

    # ------------------------------------------------------------------ background

    def _settle_later(
        self, charge_key: str, task: asyncio.Future[Any], resolve: Resolve[Any], reason: str
    ) -> None:
        """Reverse the charge if it applied, fence it if not, once ``task`` is over."""
        task.add_done_callback(retrieve)

        async def reverse() -> object:
            if not task.done():
                await asyncio.wait((task,))
            if not task.cancelled():
                exc = task.exception()
                if exc is not None and not (
                    isinstance(exc, BackendUnavailable) and exc.maybe_applied
                ):
                    return None  # it certainly did not apply
            return await resolve(True)

        self._retry_later("reverse:" + charge_key, reverse)

    def _retry_later(self, key: str, op: Callable[[], Awaitable[object]]) -> None:
        if key in self._waiting:
            return  # the same settlement of the same charge, already on its way
        self._waiting[key] = op
        bg = asyncio.get_running_loop().create_task(self._retry(key, op))
        self._background.add(bg)
        bg.add_done_callback(self._background.discard)

    async def _retry(self, key: str, op: Callable[[], Awaitable[object]]) -> None:
        attempt = 0
        while key in self._waiting:
            try:
                await op()
            except BackendUnavailable:
                delay = _BACKOFF[min(attempt, len(_BACKOFF) - 1)]
                attempt += 1
                await self.sleep(delay)
                continue
            except CreditError as exc:  # refused for good: nothing more to do, say so
                log.warning("settling %s failed: %s", key.split(":", 1)[0], type(exc).__name__)
                log.debug("settling %s failed: %s", key, exc)
            if self._waiting.pop(key, None) is not None:
                self.observer.unknown_outcome(key.split(":", 1)[0], "settled_later")

    async def drain(self) -> int:
        """Try every waiting operation once now; returns how many still wait (shutdown)."""
        for key, op in list(self._waiting.items()):
            if key not in self._waiting:
                continue
            try:
                await op()
            except BackendUnavailable:
                continue
            except CreditError:
                log.debug("settling %s failed at drain", key, exc_info=True)
            if self._waiting.pop(key, None) is not None:
                self.observer.unknown_outcome(key.split(":", 1)[0], "settled_later")
        return len(self._waiting)

    async def aclose(self) -> None:
        left = await self.drain()
        for bg in list(self._background):
            bg.cancel()
        if left:
            log.warning("%d billing operations could not be settled before shutdown", left)
            self.observer.unknown_outcome("shutdown", "unsettled")
