"""The ledger's upkeep while an app runs: every ``interval`` seconds, forget the idempotency
store's expired records (set-based batches of ``batch``, a pause between them so that debits
never queue behind the purge for long) and bring the report's rollups up to date (so that a
report or a dashboard view has only the last interval's entries to add). Started and stopped
by ``Credits``' lifespan; ``credit-middleware purge`` does the first half from cron."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ..ledger import Ledger

__all__ = ["Maintenance", "Upkeep"]

log = logging.getLogger("credit_middleware.maintenance")


@dataclass(frozen=True, slots=True)
class Upkeep:
    """What one round did: expired requests purged, entries rolled up."""

    purged: int
    rolled_up: int


class Maintenance:
    """A background task on one ledger; ``start()`` and ``stop()`` are idempotent."""

    def __init__(
        self,
        ledger: Ledger,
        interval: float,
        *,
        batch: int = 5000,
        max_batches: int = 200,
        pause: float = 0.01,
    ) -> None:
        self.ledger = ledger
        self.interval = interval
        self.batch = batch
        self.max_batches = max_batches
        self.pause = pause
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> Upkeep:
        """One round, now: purge (at most ``max_batches`` batches), then roll up."""
        purged = 0
        for _ in range(self.max_batches):
            n = await self.ledger.purge_requests(limit=self.batch)
            purged += n
            if n < self.batch:
                break
            await asyncio.sleep(self.pause)  # the ledger's writers go first between batches
        rolled = await self.ledger.refresh_rollups()
        self.rounds += 1
        return Upkeep(purged, rolled)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name="credit-ledger-maintenance"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                await asyncio.wait({task})  # a round in progress ends at its next await

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                done = await self.run_once()
            except Exception as exc:  # the database may be down: the next round tries again
                log.warning("ledger maintenance failed (next round in %gs): %r", self.interval, exc)
            else:
                if done.purged or done.rolled_up:
                    log.debug("ledger maintenance: %s", done)
