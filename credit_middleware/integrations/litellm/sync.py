"""Synchronous LLM calls paid from credits: the async wrapper run on an event loop of its own.

``CreditedLLM.completion()``/``embedding()`` run ``acompletion()``/``aembedding()`` on one
event loop, on a daemon thread the wrapper owns, so the ledger's connections (an asyncpg pool
belongs to one loop) always live on the same loop, however many threads call. ``close()``
settles what is still open, closes those connections and stops the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from ...errors import ConfigurationError
from ...ledger import Receipt

__all__ = ["Portal", "SyncCreditedStream"]

T = TypeVar("T")


class Portal:
    """One event loop on a daemon thread, started on first use, for one wrapper's sync calls."""

    def __init__(self, name: str = "credit-middleware-llm") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._loop is not None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal's loop and wait for its result (from sync code only)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise ConfigurationError(
                "CreditedLLM.completion()/embedding() block, so they are for synchronous code:"
                " in async code await acompletion()/aembedding()"
            )
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            loop = self._loop
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return future.result()

    def call_soon(self, fn: Any, *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop, if it runs (from ``__del__``, say)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        """Stop the loop and its thread; a later ``run()`` starts a new one."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


class SyncCreditedStream:
    """A streamed call for synchronous code: iterate it, or ``close()`` it to stop early
    (a ``with`` block does); billed like :class:`~.litellm_stream.CreditedStream`."""

    def __init__(self, portal: Portal, stream: Any) -> None:
        self._portal = portal
        self._stream = stream
        self.request_id: str = stream.request_id

    @property
    def receipt(self) -> Receipt | None:
        receipt: Receipt | None = self._stream.receipt
        return receipt

    @property
    def settled(self) -> bool:
        return bool(self._stream.settled)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return self._portal.run(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Stop reading: close the provider stream and charge what was generated so far."""
        if not self._stream.settled:
            self._portal.run(self._stream.aclose())

    def __enter__(self) -> SyncCreditedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
