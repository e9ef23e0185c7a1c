"""The faults, in sequence, while the load runs: each a blocking action run off the event
loop (so the clients keep going), recorded with its wall-clock window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from .appserver import AppServer
from .services import PrivatePostgres, PrivateRedis

#: the faults, in the order they run
NAMES = ("redis", "pg-fast", "pg-immediate", "kill", "stall")


@dataclass
class Fault:
    name: str
    t_start: float = 0.0
    t_end: float = 0.0
    detail: str = ""


@dataclass
class Faults:
    """What to break: the private servers and the app; ``redis_down`` seconds between the
    kill and the restart; ``stall`` the seconds a worker's loop is blocked (the workers read
    it from ``CREDIT_CHAOS_STALL``)."""

    pg: PrivatePostgres
    redis: PrivateRedis
    app: AppServer
    redis_down: float = 4.0
    stall: float = 6.0

    only: tuple[str, ...] = NAMES

    def plan(self) -> list[tuple[str, Callable[[], str]]]:
        steps: dict[str, tuple[str, Callable[[], str]]] = {
            "redis": ("redis killed and restarted", self._redis),
            "pg-fast": ("postgres restart -m fast", lambda: self._pg("fast")),
            "pg-immediate": ("postgres restart -m immediate", lambda: self._pg("immediate")),
            "kill": ("worker SIGKILL", self._kill_worker),
            "stall": ("event-loop stall, each worker in turn", self._stall),
        }
        return [steps[name] for name in NAMES if name in self.only]

    async def run(self, lead: float, gap: float) -> list[Fault]:
        """Wait ``lead`` seconds, then one fault every ``gap`` seconds (each after the
        previous one finished)."""
        done: list[Fault] = []
        await asyncio.sleep(lead)
        for name, action in self.plan():
            fault = Fault(name, t_start=time.time())
            fault.detail = await asyncio.to_thread(action)
            fault.t_end = time.time()
            done.append(fault)
            await asyncio.sleep(max(0.0, gap - (fault.t_end - fault.t_start)))
        return done

    def _redis(self) -> str:
        self.redis.kill()
        time.sleep(self.redis_down)
        self.redis.start()
        return f"down {self.redis_down:.0f}s"

    def _pg(self, mode: str) -> str:
        started = time.monotonic()
        self.pg.restart(mode)
        return f"back in {time.monotonic() - started:.1f}s"

    def _kill_worker(self) -> str:
        started = time.monotonic()
        pid = self.app.kill_worker()
        self.app.wait_workers(pid)
        return f"pid {pid}, replaced in {time.monotonic() - started:.1f}s"

    def _stall(self) -> str:
        """Each worker's loop blocked in turn (the busiest first). So that the stall finds
        requests waiting on the ledger (most of a request's time is CPU here), PostgreSQL is
        paused for a moment first and let go just after the stall began: it commits their
        debits while the worker is blocked, and their timeouts have expired when it wakes."""
        pids = self.app.workers_by_load()
        for pid in pids:
            paused = self.pg.pause()
            try:
                time.sleep(0.6)
                self.app.stall_worker(pid)
                time.sleep(0.2)
            finally:
                self.pg.resume(paused)
            time.sleep(self.stall + 1.5)
        return f"pids {', '.join(map(str, pids))} blocked {self.stall:.0f}s each"
