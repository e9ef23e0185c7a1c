"""Money operations run to a known outcome: the wait is bounded, the operation never is.

Cancelling a ledger operation in flight (a timeout, a client that went away) can leave it
committed with nobody knowing, so a client told "billing unavailable, retry" would pay twice.
Here an operation runs in its own task and is never cancelled by us. If it does not answer in
time, or fails after it may have reached the database, its outcome is settled by its charge id
(:meth:`Ledger.resolve_charge`, under the account's lock): a charge that stands is served, one
that did not happen is fenced so that it never can, and only then is the client told 503. What
cannot be settled in time is reversed in the background (an audited refund or release), so a
503 never leaves a charge standing. Counted through ``Observer.unknown_outcome``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .errors import BackendUnavailable, CreditError
from .events import Observer
from .ledger import Ledger, Receipt

__all__ = ["Outcomes"]

log = logging.getLogger("credit_middleware.middleware")
T = TypeVar("T")

_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # an abandoned operation's error is expected: don't log it as lost


class Outcomes:
    """Runs one middleware's money operations; owns the reversals still to be done."""

    def __init__(self, ledger: Ledger, timeout: float, observer: Observer) -> None:
        self.ledger = ledger
        self.timeout = timeout
        self.observer = observer
        self._background: set[asyncio.Task[None]] = set()
        self._waiting: dict[tuple[str, str], Callable[[], Awaitable[object]]] = {}

    @property
    def pending(self) -> int:
        """Operations that still have to be settled in the background."""
        return len(self._waiting)

    async def charge(
        self,
        account_id: str,
        charge_key: str,
        op: Awaitable[T],
        standing: Callable[[Receipt], T],
    ) -> T:
        """Run ``op`` (a charge keyed ``charge_key``) to a known outcome.

        Returns its result, or ``standing(receipt)`` when it did apply but its own answer was
        lost; raises its refusal, or ``BackendUnavailable`` only when it certainly did not
        apply (fenced, or to be reversed in the background).
        """
        task = asyncio.ensure_future(op)
        task.add_done_callback(_retrieve)
        try:
            result = await self._result(task)
        except asyncio.CancelledError:
            # our caller is gone (a disconnect, a server timeout): it will never be served
            self._settle_later(account_id, charge_key, task, "cancelled")
            raise
        if result is not None:
            return result[0]
        self.observer.unknown_outcome("charge", "resolving")
        try:
            receipt = await self._resolve(account_id, charge_key)
        except asyncio.CancelledError:
            self._settle_later(account_id, charge_key, task, "cancelled")
            raise
        except BackendUnavailable:
            self._settle_later(account_id, charge_key, task, "unknown outcome")
            self.observer.unknown_outcome("charge", "reversal_pending")
            raise
        if receipt is None:
            self.observer.unknown_outcome("charge", "not_applied")
            raise BackendUnavailable("database", "no answer in time; nothing was charged")
        self.observer.unknown_outcome("charge", "stood")
        return standing(receipt)

    async def settle(self, account_id: str, what: str, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run an idempotent settling operation (a refund, capture, release, stored response)
        after the app answered; if it fails or outlives the wait, it is retried in the
        background until it lands. Returns its result, or None when it was deferred."""
        task = asyncio.ensure_future(op())
        task.add_done_callback(_retrieve)
        try:
            result = await self._result(task)
        except BackendUnavailable:
            result = None
        except asyncio.CancelledError:
            self._retry_later(account_id, what, op)
            raise
        if result is None:
            self.observer.unknown_outcome(what, "retry_pending")
            self._retry_later(account_id, what, op)
            return None
        return result[0]

    async def _result(self, task: asyncio.Future[T]) -> tuple[T] | None:
        """The task's result within the wait (``(result,)``), None when its outcome is
        unknown; raises its error when that error proves nothing was applied."""
        done, _ = await asyncio.wait((task,), timeout=self.timeout)
        if not done:  # a stalled loop or a slow server: give it as long again, no more
            done, _ = await asyncio.wait((task,), timeout=self.timeout)
        if not done:
            return None
        exc = task.exception()
        if exc is None:
            return (task.result(),)
        if isinstance(exc, BackendUnavailable) and exc.maybe_applied:
            return None
        raise exc

    async def _resolve(self, account_id: str, charge_key: str) -> Receipt | None:
        task = asyncio.ensure_future(
            self.ledger.resolve_charge(account_id, charge_key, reason="unknown outcome")
        )
        task.add_done_callback(_retrieve)
        result = await self._result(task)
        if result is None:
            raise BackendUnavailable("database", "the charge's outcome could not be settled")
        return result[0]

    # ------------------------------------------------------------------ background

    def _settle_later(
        self, account_id: str, charge_key: str, task: asyncio.Future[Any], reason: str
    ) -> None:
        """Reverse the charge if it applied, fence it if not, once ``task`` is over."""

        async def reverse() -> object:
            if not task.done():
                await asyncio.wait((task,))
            if not task.cancelled():
                exc = task.exception()
                if exc is not None and not (
                    isinstance(exc, BackendUnavailable) and exc.maybe_applied
                ):
                    return None  # it certainly did not apply
            return await self.ledger.resolve_charge(
                account_id, charge_key, reverse=True, reason=reason
            )

        self._retry_later(account_id, "reverse:" + charge_key, reverse)

    def _retry_later(self, account_id: str, what: str, op: Callable[[], Awaitable[object]]) -> None:
        key = (account_id, what)
        if key in self._waiting:
            return
        self._waiting[key] = op
        bg = asyncio.get_running_loop().create_task(self._retry(key, op))
        self._background.add(bg)
        bg.add_done_callback(self._background.discard)

    async def _retry(self, key: tuple[str, str], op: Callable[[], Awaitable[object]]) -> None:
        attempt = 0
        while key in self._waiting:
            try:
                await op()
            except BackendUnavailable:
                delay = _BACKOFF[min(attempt, len(_BACKOFF) - 1)]
                attempt += 1
                await asyncio.sleep(delay)
                continue
            except CreditError as exc:  # refused for good: nothing more to do, say so
                log.warning("settling %s failed: %s", key[1].split(":", 1)[0], type(exc).__name__)
                log.debug("settling %s failed: %s", key, exc)
            self._waiting.pop(key, None)
            self.observer.unknown_outcome(key[1].split(":", 1)[0], "settled_later")

    async def drain(self) -> int:
        """Try every waiting operation once now; returns how many still wait (shutdown)."""
        for key, op in list(self._waiting.items()):
            try:
                await op()
            except BackendUnavailable:
                continue
            except CreditError:
                log.debug("settling %s failed at drain", key, exc_info=True)
            self._waiting.pop(key, None)
            self.observer.unknown_outcome(key[1].split(":", 1)[0], "settled_later")
        return len(self._waiting)

    async def aclose(self) -> None:
        left = await self.drain()
        for bg in list(self._background):
            bg.cancel()
        if left:
            log.warning("%d billing operations could not be settled before shutdown", left)
            self.observer.unknown_outcome("shutdown", "unsettled")
