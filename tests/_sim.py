"""Deterministic simulation of the charge path, in the spirit of TigerBeetle's VOPR and
FoundationDB's simulation testing.

The real middleware and the real ledger (SQLite or PostgreSQL) run under a seeded scheduler.
Every ledger operation the middleware starts stops at a gate; the scheduler, once nothing else
can run, picks one waiting operation (the seed decides which) and decides what happens to it:
it runs; or it fails before it commits; or its outcome is lost (before or after it commits);
or its caller is cancelled; or its process crashes (before or after it commits: the attempt
abandoned, its worker gone, a fresh process in its place); and meanwhile the clock may jump
and a client may send a concurrent retry with the same key. Time is virtual: handlers that
take a while, clients' back-offs, the middleware's keep-alive timer and its background
retries sleep on the scheduler's clock, which moves only when nothing else can run, so one
seed replays exactly.

Clients call fixed-price, hold and handler-billed routes, with and without an
``Idempotency-Key``, and the app serves or not (200, 404, 500) as the seed says; a client
retries a 409, a 5xx or a lost answer (with the same key) until it gets a definitive answer.
After each schedule the faults stop, everything settles, and the outcome is checked against
a simple model of the contract (``_sim_model``): a served call is charged exactly once, at the
price it was told; a 503 charged nothing; an unserved answer kept nothing; a replay added
nothing and did not run the handler; one standing charge per key; a live call is never run
twice; every call ends with an answer; ``verify`` is clean.

``run_seed(url, seed)`` runs one seed on a fresh world; ``Simulation`` runs many on one
database (``tests/test_simulation.py``, ``tests/simulate.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from _sim_model import FIXED, HOLD, check
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Scope

from credit_middleware import Ledger, Provisioner, TrialPolicy
from credit_middleware.charge import outcomes as outcome_module
from credit_middleware.config import Billing, Idempotency, Lifecycle, Limits
from credit_middleware.errors import BackendUnavailable
from credit_middleware.http.middleware import FINAL_COST_STATE, CreditMiddleware
from credit_middleware.identity import Identity
from credit_middleware.ledger._executor import AsyncpgExecutor, Executor
from credit_middleware.ledger._sqlite import SqliteExecutor
from credit_middleware.pricing import Pricing
from credit_middleware.pricing import Route as Priced
from credit_middleware.trials.locks import LocalLocks

HOLD_TIMEOUT = 60.0
TRIAL = Decimal("20")
MAX_ATTEMPTS = 24
T0 = 1_800_000_000.0

#: What may happen to an operation at the gate (besides running normally).
FAULTS = (
    "error_before",  # refused before it reached the database: nothing applied
    "unknown_before",  # connection lost before the commit: not applied, outcome unknown
    "lost_reply",  # committed, the answer lost: applied, outcome unknown
    "cancel",  # the caller (a request) cancelled while it waits: a client gone
    "crash_before",  # the process dies before the operation runs
    "crash_after",  # the process dies after the operation committed
    "jump",  # the clock jumps (a paused VM, a stepped clock): timers fire late
    "retry",  # the client sends the same request again, concurrently
)

ATTEMPT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("attempt", default=None)


class ProcessGone(BaseException):
    """Raised into a crashed process's code when it touches the world again."""


class Clock:
    """The world's wall clock (seconds), shared by every process's ledger."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- the workload


@dataclass
class LogicalCall:
    """One thing a client wants done, sent as one or more attempts."""

    index: int
    account: str
    route: str  # fixed | hold | handler
    key: str | None
    body: bytes
    attempts: list[Attempt] = field(default_factory=list)
    answered: bool = False  # got a definitive answer
    overlap: bool = False  # two attempts' handlers ran at once
    live_takeover: bool = False  # a retry took the key from an attempt still running


@dataclass
class Attempt:
    """One HTTP request of a logical call."""

    call: LogicalCall
    number: int
    proc: Proc
    plan_status: int = 200
    plan_seconds: float = 0.0
    plan_cost: Decimal = FIXED
    task: asyncio.Task[None] | None = None
    outcome: str = "pending"  # answered | crashed | cancelled
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cids: set[str] = field(default_factory=set)  # charge ids its operations carried
    handler_ran: bool = False
    handler_live: bool = False
    settlement_lost: bool = False  # a deferred settlement of it died with its process
    complete: bool = False  # the response's last part reached the client

    @property
    def label(self) -> str:
        return f"call{self.call.index}.{self.number}"

    @property
    def replayed(self) -> bool:
        return self.headers.get("idempotent-replayed") == "true"


# --------------------------------------------------------------------------- the gate


@dataclass(eq=False)
class Gated:
    """A ledger operation waiting at the gate for the scheduler's decision."""

    proc: Proc
    name: str
    attempt: Attempt | None
    go: asyncio.Future[str]
    finished: asyncio.Event


class SimLedger(Ledger):
    """A process's ledger: every operation passes the world's gate."""

    world: World
    proc: Proc


_GATED = (
    "get_account",
    "provision",
    "debit",
    "hold",
    "capture",
    "release",
    "refund",
    "begin_request",
    "finish_request",
    "settle_request",
    "resolve_charge",
    "resolve_request",
    "extend_request",
    "extend_hold",
)


def _gate(name: str) -> Callable[..., Awaitable[Any]]:
    real = getattr(Ledger, name)

    async def gated(self: SimLedger, *args: Any, **kwargs: Any) -> Any:
        return await self.world.through(self.proc, name, real, self, args, kwargs)

    gated.__name__ = name
    return gated


for _name in _GATED:
    if hasattr(Ledger, _name):
        setattr(SimLedger, _name, _gate(_name))


class SimIdentity:
    """The caller is whoever ``x-user`` names (the app trusts its gateway)."""

    async def resolve(self, scope: Scope) -> Identity | None:
        for name, value in scope.get("headers", ()):
            if name == b"x-user":
                return Identity(value.decode(), source="header")
        return None


# --------------------------------------------------------------------------- processes


class Proc:
    """One app process: a middleware of its own (its own pending settlements, keep-alive)
    over the shared database, through its own connection."""

    def __init__(self, world: World, name: str, executor: Executor) -> None:
        self.world = world
        self.name = name
        self.dead = False
        self.attempts: list[Attempt] = []
        ledger = SimLedger(executor=executor, clock=world.clock)
        ledger.world, ledger.proc = world, self
        self.ledger = ledger
        provisioner = Provisioner(
            ledger, TrialPolicy(amount=TRIAL, valid_for=None), locks=LocalLocks(wait=3600)
        )
        self.mw = CreditMiddleware(
            world.app,
            ledger=ledger,
            provisioner=provisioner,
            pricing=world.pricing,
            resolver=SimIdentity(),
            timeout=3600.0,  # the real-time bound never fires: faults say what is lost
            billing=Billing(hold_timeout=HOLD_TIMEOUT),
            tiers={"trial": "1000000/minute"},
            limits=Limits(default="1000000/minute"),
            lifecycle=Lifecycle(auto_migrate=False),
            idempotency=Idempotency(max_stored_body=4096),
        )
        # virtual time for what the middleware schedules (where this version has it)
        outcomes = self.mw.outcomes
        if hasattr(outcomes, "sleep"):
            outcomes.sleep = world.sleep
        keepalive = getattr(self.mw, "keepalive", None)
        if keepalive is not None:
            keepalive.call_later = world.call_later


# --------------------------------------------------------------------------- the world


class World:
    """One schedule: processes, clients, the gate, virtual time, and the record."""

    def __init__(self, seed: int, executors: list[Executor], *, verbose: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = Clock(T0)
        self.executors = executors
        self.verbose = verbose
        self.trace: list[str] = []
        self.pending: list[Gated] = []
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.fault_budget = self.rng.randint(4, 40)
        self.fault_rate = self.rng.choice([0.1, 0.2, 0.35])
        self.dispatches = 0
        self.outage = 0  # dispatches left in a database outage (every operation fails)
        self.jumped = False  # a jump may outlast any lease: a live call may be taken over
        self.forgot = False  # a jump past idempotency_ttl: a key served before is new again
        self.renewal_faulted: set[str] = set()  # accounts whose keep-alive was hit
        self.unhandled: list[str] = []
        self.unserved_share = 0.3
        self.app = self._app()
        self.pricing = Pricing(
            routes=[
                Priced("/v1/fixed", cost=FIXED),
                Priced("/v1/hold", cost=HOLD, mode="hold"),
                Priced("/v1/handler", mode="handler"),
            ],
            default_mode="exempt",
        )
        self.procs: list[Proc] = []
        self._slots = itertools.count()
        for _ in range(2):
            self._start_proc()
        self.calls: list[LogicalCall] = []
        self.attempts: list[Attempt] = []
        self.clients: list[asyncio.Task[None]] = []
        self.extra: list[asyncio.Future[Attempt]] = []

    def log(self, line: str) -> None:
        self.trace.append(f"t={self.clock.now - T0:.0f} {line}")

    # ------------------------------------------------------------------ virtual time

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def fire() -> None:
            if not future.done():
                future.set_result(None)

        self.call_later(seconds, fire)
        return future

    def call_later(self, seconds: float, callback: Callable[..., None], *args: Any) -> _Timer:
        timer = _Timer(callback, args)
        heapq.heappush(self.timers, (self.clock.now + seconds, next(self._seq), timer.fire))
        return timer

    def _advance(self) -> None:
        due, _, fire = heapq.heappop(self.timers)
        if due > self.clock.now:
            self.clock.now = due
        fire()

    # ------------------------------------------------------------------ processes

    def _start_proc(self) -> Proc:
        slot = next(self._slots)
        proc = Proc(self, f"p{slot}", self.executors[slot % len(self.executors)])
        self.procs.append(proc)
        return proc

    def live_procs(self) -> list[Proc]:
        return [p for p in self.procs if not p.dead]

    def crash(self, proc: Proc) -> None:
        """The process dies: its requests get no answer, its pending work is gone."""
        if proc.dead:
            return
        proc.dead = True
        self.log(f"CRASH {proc.name}")
        waiting_for = getattr(proc.mw.outcomes, "waiting_for", None)
        for attempt in proc.attempts:
            if attempt.outcome == "pending":
                attempt.outcome = "crashed"
            ids = attempt.cids | {attempt.headers.get("credit-charge-id", "")}
            if waiting_for is not None and any(waiting_for(cid) for cid in ids if cid):
                attempt.settlement_lost = True  # it died with the process that kept it
            if attempt.task is not None and not attempt.task.done():
                attempt.task.cancel()
        for gated in list(self.pending):
            if gated.proc is proc:
                self.pending.remove(gated)
                if not gated.go.done():
                    gated.go.set_result("gone")
        self._start_proc()

    # ------------------------------------------------------------------ the gate

    async def through(
        self,
        proc: Proc,
        name: str,
        real: Callable[..., Awaitable[Any]],
        ledger: Ledger,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if proc.dead:
            raise ProcessGone
        attempt = ATTEMPT.get()
        if attempt is not None:
            for word in ("owner", "key"):
                value = kwargs.get(word)
                if isinstance(value, str) and value.startswith("c_"):
                    attempt.cids.add(value)
        loop = asyncio.get_running_loop()
        gated = Gated(proc, name, attempt, loop.create_future(), asyncio.Event())
        self.pending.append(gated)
        try:
            fault = await gated.go
        except asyncio.CancelledError:
            if gated in self.pending:
                self.pending.remove(gated)
            raise
        if fault == "gone":
            raise ProcessGone
        who = attempt.label if attempt is not None else "-"
        self.log(f"{proc.name} {who} {name} [{fault}]")
        try:
            if fault == "error_before":
                raise BackendUnavailable("database", "sim: refused")
            if fault == "unknown_before":
                raise BackendUnavailable("database", "sim: lost before commit", maybe_applied=True)
            result = await real(ledger, *args, **kwargs)
        except BaseException as exc:
            self.log(f"  -> {type(exc).__name__}")
            raise
        finally:
            gated.finished.set()
        if name == "begin_request" and attempt is not None:
            self._takeover(attempt, result)
        if fault == "lost_reply":
            raise BackendUnavailable("database", "sim: reply lost", maybe_applied=True)
        if fault == "crash_after":
            self.crash(proc)
            raise ProcessGone
        return result

    def _takeover(self, attempt: Attempt, start: Any) -> None:
        """Note a key taken over from an attempt that is still running (only a clock jump or
        a lost renewal lets a lease lapse under it): its money is then the taker's."""
        if getattr(start, "state", None) != "resumed":
            return
        for other in attempt.call.attempts:
            if other is not attempt and other.outcome == "pending" and other.cids:
                self.log(f"TAKEOVER of live {other.label} by {attempt.label}")
                attempt.call.live_takeover = True

    def _pick_fault(self, gated: Gated) -> str:
        self.dispatches += 1
        if self.dispatches > self.fault_budget:
            return "run"
        if self.outage > 0:
            self.outage -= 1
            return self.rng.choice(["error_before", "unknown_before", "lost_reply"])
        if self.rng.random() >= self.fault_rate:
            return "run"
        fault = self.rng.choice((*FAULTS, "outage"))
        if fault == "outage":  # the database goes away for a while
            self.outage = self.rng.randint(2, 12)
            self.log(f"OUTAGE for {self.outage} operations")
            return self._pick_fault(gated)
        return fault

    async def _dispatch(self, gated: Gated) -> None:
        fault = self._pick_fault(gated)
        attempt = gated.attempt
        if gated.name in ("extend_request", "extend_hold") and fault != "run":
            self.renewal_faulted.add("*")
        if fault == "jump":
            step = self.rng.choice([5.0, 31.0, 31.0, 61.0, 61.0, 301.0] * 3 + [90_000.0])
            self.clock.now += step
            self.jumped = True
            self.forgot = self.forgot or step >= 86_400.0  # past idempotency_ttl
            self.log(f"JUMP +{step:.0f}s")
            fault = "run"
        elif fault == "retry":
            if attempt is not None and not attempt.call.answered:
                self.log(f"RETRY of {attempt.label}")
                self.extra.append(asyncio.ensure_future(self._send(attempt.call)))
            fault = "run"
        elif fault == "cancel":
            if attempt is not None and attempt.task is not None and not attempt.task.done():
                self.log(f"CANCEL {attempt.label} at {gated.name}")
                if attempt.outcome == "pending":
                    attempt.outcome = "cancelled"
                attempt.task.cancel()
            if not gated.go.done():  # the operation itself still waits for its turn
                self.pending.append(gated)
            return
        elif fault == "crash_before":
            self.crash(gated.proc)
            if not gated.go.done():
                gated.go.set_result("gone")
            return
        gated.go.set_result(fault)
        await gated.finished.wait()

    async def _quiesce(self) -> None:
        """Let everything that can run, run (until the loop has had nothing to do for a few
        turns in a row)."""
        loop = asyncio.get_running_loop()
        idle = 0
        while idle < 3:
            await asyncio.sleep(0)
            ready = getattr(loop, "_ready", None)
            idle = idle + 1 if ready is not None and not ready else 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(self._unhandled)
        try:
            self._workload()
            healing: asyncio.Task[None] | None = None
            stuck = 0
            while True:
                await self._quiesce()
                if self.pending:
                    stuck = 0
                    index = self.rng.randrange(len(self.pending))
                    await self._dispatch(self.pending.pop(index))
                elif self.timers:
                    stuck = 0
                    self._advance()
                elif healing is None and all(t.done() for t in self.clients + self.extra):
                    healing = asyncio.ensure_future(self._heal())
                elif healing is not None and healing.done():
                    healing.result()
                    break
                else:
                    stuck += 1  # something waits on real time (a lock's timeout): let it
                    if stuck > 500:
                        self.unhandled.append("hang: tasks wait on nothing the world controls")
                        break
                    await asyncio.sleep(0.01)
        finally:
            self.log("STOP")
            await self._stop()
            self.log("STOPPED")
            loop.set_exception_handler(previous)

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, (ProcessGone, asyncio.CancelledError)):
            return
        self.unhandled.append(f"unhandled: {context.get('message')} {exc!r}")

    async def _heal(self) -> None:
        """The faults are over: whatever still waits (a settlement deferred) lands."""
        self.fault_budget = 0
        for proc in self.live_procs():
            for _ in range(20):
                if await proc.mw.outcomes.drain() == 0:
                    break
                await self.sleep(30)

    async def _stop(self) -> None:
        for task in self.clients + self.extra:
            task.cancel()
        for proc in self.procs:
            for attempt in proc.attempts:
                if attempt.task is not None:
                    attempt.task.cancel()
        for proc in self.procs:
            proc.dead = True  # nothing touches the database any more
            for gated in self.pending:
                if not gated.go.done():
                    gated.go.set_result("gone")
            await _quietly(proc.mw.aclose())
        everything = [t for t in self.clients + self.extra]
        everything += [a.task for p in self.procs for a in p.attempts if a.task is not None]
        await asyncio.gather(*everything, return_exceptions=True)
        await asyncio.sleep(0)

    # ------------------------------------------------------------------ the app

    def _app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            attempt = ATTEMPT.get()
            assert attempt is not None
            call = attempt.call
            attempt.handler_ran = True
            if call.key is not None and any(
                other.handler_live and other.outcome == "pending" for other in call.attempts
            ):
                call.overlap = True
                self.log(f"OVERLAP {attempt.label}")
            attempt.handler_live = True
            try:
                await request.body()
                if attempt.plan_seconds:
                    await self.sleep(attempt.plan_seconds)
                if call.route == "hold":
                    setattr(request.state, FINAL_COST_STATE, str(attempt.plan_cost))
                status = attempt.plan_status
                return JSONResponse({"attempt": attempt.label}, status_code=status)
            finally:
                attempt.handler_live = False

        routes = [Route(f"/v1/{name}", handle, methods=["POST"]) for name in ROUTES]
        return Starlette(routes=routes)

    # ------------------------------------------------------------------ clients

    def _workload(self) -> None:
        rng = self.rng
        accounts = [f"s{self.seed}-u{i}" for i in range(rng.randint(1, 2))]
        keyed_share = rng.choice([0.2, 0.6, 0.9])
        self.unserved_share = rng.choice([0.1, 0.3, 0.6])
        for index in range(rng.randint(1, 6)):
            route = rng.choice(ROUTES)
            keyed = rng.random() < keyed_share
            call = LogicalCall(
                index,
                rng.choice(accounts),
                route,
                f"k{index}" if keyed else None,
                f"body-{index}".encode(),
            )
            self.calls.append(call)
            self.clients.append(asyncio.ensure_future(self._client(call)))

    async def _client(self, call: LogicalCall) -> None:
        """Send the call until a definitive answer (with the same key), backing off."""
        await self.sleep(self.rng.choice([0.0, 0.0, 1.0, 3.0]))
        for _ in range(MAX_ATTEMPTS):
            attempt = await self._send(call)
            status = attempt.status if attempt.outcome == "answered" else None
            if status is not None and status not in (409, 500, 503):
                call.answered = True
                return
            await self.sleep(self.rng.choice([1.0, 5.0, 20.0, 40.0]))
        self.unhandled.append(f"call{call.index}: no definitive answer in {MAX_ATTEMPTS} tries")

    async def _send(self, call: LogicalCall) -> Attempt:
        procs = self.live_procs()
        proc = procs[self.rng.randrange(len(procs))]
        rng = self.rng
        attempt = Attempt(call, len(call.attempts), proc)
        served = rng.random() >= self.unserved_share
        attempt.plan_status = 200 if served else rng.choice([404, 500])
        attempt.plan_seconds = rng.choice([0.0, 0.0, 0.0, 2.0, 12.0, 45.0, 75.0])
        attempt.plan_cost = rng.choice([Decimal("0.25"), Decimal("0.75"), Decimal("1.5")])
        call.attempts.append(attempt)
        proc.attempts.append(attempt)
        self.attempts.append(attempt)
        headers = [(b"x-user", call.account.encode())]
        if call.key is not None:
            headers.append((b"idempotency-key", call.key.encode()))
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": f"/v1/{call.route}",
            "raw_path": f"/v1/{call.route}".encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 1234),
            "server": ("testserver", 80),
        }
        body_sent = False
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": call.body, "more_body": False}
            await gone
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if proc.dead:
                raise ProcessGone
            if attempt.outcome != "pending":
                raise OSError("the client went away")
            if message["type"] == "http.response.start":
                attempt.status = int(message["status"])
                attempt.headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1")
                    for k, v in message.get("headers", ())
                }
            elif message["type"] == "http.response.body":
                attempt.body += message.get("body", b"")
                if not message.get("more_body", False):
                    attempt.complete = True

        async def serve() -> None:
            ATTEMPT.set(attempt)
            try:
                await proc.mw(scope, receive, send)
            except (ProcessGone, OSError, asyncio.CancelledError):
                pass
            except Exception as exc:  # the middleware let an error through: a 500 of ours
                self.unhandled.append(f"{attempt.label}: {exc!r} escaped the middleware")
            finally:
                if not gone.done():
                    gone.set_result(None)

        attempt.task = asyncio.ensure_future(serve())
        self.log(f"SEND {attempt.label} {call.route} key={call.key} to {proc.name}")
        await asyncio.wait((attempt.task,))
        if attempt.outcome == "pending":
            attempt.outcome = "answered" if attempt.complete else "cancelled"
        self.log(f"  {attempt.label} -> {attempt.outcome} {attempt.status}")
        return attempt


ROUTES = ("fixed", "hold", "handler")


class _Timer:
    """A virtual ``TimerHandle``: ``cancel()`` and the callback never runs."""

    def __init__(self, callback: Callable[..., None], args: Iterable[Any]) -> None:
        self._callback = callback
        self._args = tuple(args)
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self._callback(*self._args)


async def _quietly(aw: Awaitable[Any]) -> None:
    with contextlib.suppress(Exception, ProcessGone):
        await aw


# --------------------------------------------------------------------------- running seeds


def executors_for(url: str, count: int = 3) -> list[Executor]:
    """One executor (a process's connection or pool) per process slot."""
    if url.startswith("sqlite"):
        return [SqliteExecutor(url) for _ in range(count)]
    return [AsyncpgExecutor(url, max_size=4) for _ in range(count)]


class Simulation:
    """Runs seeds one after the other on one database (migrated once)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.executors = executors_for(url)
        self.checker = Ledger(executor=self.executors[0])

    async def __aenter__(self) -> Simulation:
        await self.checker.migrate()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for executor in self.executors:
            await executor.close()

    async def seed(self, seed: int, *, verbose: bool = False) -> list[str]:
        """Run one schedule; returns what it broke (and, verbose, the trace first)."""
        world = World(seed, self.executors, verbose=verbose)
        saved = outcome_module._BACKOFF
        if not hasattr(world.procs[0].mw.outcomes, "sleep"):
            # no virtual time for background retries in this version: leave them to _heal
            outcome_module._BACKOFF = (1e9,) * 7
        try:
            await world.run()
        finally:
            outcome_module._BACKOFF = saved
        problems = await check(world, self.checker)
        if verbose:
            return [*world.trace, "-- problems:", *problems]
        return problems

    async def verify(self) -> list[str]:
        report = await self.checker.verify()
        return [f"verify: {d}" for d in report.discrepancies]


def reproduce(backend: str, seed: int) -> str:
    return f".venv/bin/python tests/simulate.py --backend {backend} --seed {seed} -v"
