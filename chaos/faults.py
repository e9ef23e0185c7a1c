"""The faults, in sequence, while the load runs: each a blocking action run off the event
loop (so the clients keep going), recorded with its wall-clock window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from .appserver import AppServer
from .services import PrivatePostgres, PrivateRedis


@dataclass
class Fault:
    name: str
    t_start: float = 0.0
    t_end: float = 0.0
    detail: str = ""


@dataclass
class Faults:
    """What to break: the private servers and the app; ``redis_down`` seconds between the
    kill and the restart; ``stall`` the seconds a worker's loop is blocked (for the record;
    the app reads it from ``CREDIT_CHAOS_STALL``)."""

    pg: PrivatePostgres
    redis: PrivateRedis
    app: AppServer
    redis_down: float = 4.0
    stall: float = 6.0

    def plan(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("redis killed and restarted", self._redis),
            ("postgres restart -m fast", lambda: self._pg("fast")),
            ("postgres restart -m immediate", lambda: self._pg("immediate")),
            ("worker SIGKILL", self._kill_worker),
            ("event-loop stall", self._stall),
        ]

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
        pid = self.app.stall_worker()
        time.sleep(self.stall)
        return f"pid {pid} blocked {self.stall:.0f}s"
