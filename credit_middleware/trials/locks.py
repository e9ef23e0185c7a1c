"""Provisioning locks: keep a herd of concurrent first requests off the database.

A lock here is an optimisation, never a guarantee: uniqueness is enforced by the database, so a
lock that is lost, expires, or cannot be reached only costs a few redundant (harmless) inserts.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

__all__ = ["LocalLocks", "ProvisionLocks", "RedisLocks"]

log = logging.getLogger("credit_middleware.locks")


class ProvisionLocks(Protocol):
    def acquire(self, key: str) -> AbstractAsyncContextManager[bool]:
        """Hold the lock for ``key`` while the block runs; yields False if it was not had
        within the wait budget (the caller goes ahead anyway: the database decides)."""


class LocalLocks:
    """In-process locks, one per key while in use (the embedded default)."""

    def __init__(self, wait: float = 2.0) -> None:
        self._wait = wait
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def acquire(self, key: str) -> AsyncIterator[bool]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        got = False
        try:
            try:
                await asyncio.wait_for(lock.acquire(), self._wait)
                got = True
            except asyncio.TimeoutError:
                pass
            yield got
        finally:
            if got:
                lock.release()
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


# Delete the key only if it still holds our token, so an expired lock re-taken by another
# process is never released by us.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class RedisLocks:
    """Cross-process locks in Redis: ``SET key token NX PX ttl``, compare-and-delete release,
    bounded wait with backoff. Redis errors degrade to "no lock" (logged once per outage)."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "credit:lock:",
        ttl: float = 5.0,
        wait: float = 2.0,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl_ms = int(ttl * 1000)
        self._wait = wait
        self._degraded = False

    def _fault(self, exc: BaseException) -> None:
        if not self._degraded:
            self._degraded = True
            log.warning("provisioning lock degraded, Redis unreachable: %r", exc)

    @asynccontextmanager
    async def acquire(self, key: str) -> AsyncIterator[bool]:
        name = self._prefix + key
        token = secrets.token_hex(16)
        got = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        delay = 0.005
        try:
            while True:
                try:
                    got = bool(await self._client.set(name, token, nx=True, px=self._ttl_ms))
                except Exception as exc:  # any Redis failure: go on without the lock
                    self._fault(exc)
                    break
                if got:
                    if self._degraded:
                        self._degraded = False
                        log.warning("provisioning lock recovered, Redis reachable again")
                    break
                if loop.time() + delay > deadline:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
            yield got
        finally:
            if got:
                try:
                    await self._client.eval(_RELEASE, 1, name, token)
                except Exception as exc:  # the TTL frees it anyway
                    self._fault(exc)
