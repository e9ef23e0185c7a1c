"""Calls that outlive their lease or hold, and keys taken over from a crashed attempt, through
the middleware on both backends. The ledger's clock is moved by hand (a lease or hold lapses
only by it); tokens and rate limits read the wall clock as usual."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from _middleware_helpers import balance, bearer, client, middleware_of
from conftest import Clock
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from credit_middleware import ConfigurationError, Credits, Ledger, Provisioner
from credit_middleware.charge.replay import read_request
from credit_middleware.config import Billing, Idempotency
from credit_middleware.errors import BackendUnavailable
from credit_middleware.http.middleware import FINAL_COST_STATE, CreditMiddleware
from credit_middleware.ledger import ChargeSpec
from credit_middleware.pricing import Pricing
from credit_middleware.pricing import Route as Priced

pytestmark = pytest.mark.anyio
SECRET = "test-secret-0123456789abcdef-0123456789"


class Slow:
    """Handlers that wait for the test to let them finish (the first run only)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.finish = asyncio.Event()
        self.runs = 0
        self.final = "0.75"

    async def _run(self, request: Request) -> int:
        await request.body()
        self.runs += 1
        if self.runs == 1:
            self.entered.set()
            await self.finish.wait()
        return self.runs

    async def work(self, request: Request) -> JSONResponse:
        return JSONResponse({"run": await self._run(request)})

    async def held(self, request: Request) -> JSONResponse:
        run = await self._run(request)
        setattr(request.state, FINAL_COST_STATE, self.final)
        return JSONResponse({"run": run})


def build(ledger: Ledger, slow: Slow, **options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/work", slow.work, methods=["POST"]),
            Route("/v1/held", slow.held, methods=["POST"]),
            Route("/v1/chat", slow.work, methods=["POST"]),
        ]
    )
    pricing = Pricing(
        default_cost="0.5",
        routes=[Priced("/v1/held", cost="1", mode="hold"), Priced("/v1/chat", mode="handler")],
    )
    app.add_middleware(
        CreditMiddleware,
        jwt_secret=SECRET,
        pricing=pricing,
        provisioner=Provisioner(ledger),
        tiers={"trial": "10000/minute"},
        **options,
    )
    return app


def keyed(key: str, user: str = "u1") -> dict[str, str]:
    return {**bearer(user), "Idempotency-Key": key}


async def pass_time(app: Starlette, clock: Clock, seconds: float, step: float) -> None:
    """Let ``seconds`` pass on the ledger's clock, the keep-alive timer firing every ``step``
    (as it would in a process that keeps running)."""
    keepalive = getattr(middleware_of(app), "keepalive", None)
    left = seconds
    while left > 0:
        clock.advance(min(step, left))
        left -= step
        if keepalive is not None:
            await keepalive.renew_due()


async def debits(ledger: Ledger, aid: str) -> list[Any]:
    return [e for e in await ledger.history(aid, limit=1000) if e.kind == "debit"]


# --------------------------------------------------------------------------- live calls


async def test_a_slow_keyed_call_is_never_run_twice(ledger: Ledger, clock: Clock) -> None:
    """Its lease is renewed while it runs: a retry past the first lease is told "in flight",
    not served a second time (issue 18)."""
    slow = Slow()
    app = build(ledger, slow)
    async with client(app) as c:
        first = asyncio.ensure_future(c.post("/v1/work", content=b"q", headers=keyed("k")))
        await slow.entered.wait()
        await pass_time(app, clock, 95, step=5)  # three leases of 30 s
        retry = await c.post("/v1/work", content=b"q", headers=keyed("k"))
        slow.finish.set()
        served = await first
        replay = await c.post("/v1/work", content=b"q", headers=keyed("k"))
    assert retry.status_code == 409, retry.text
    assert served.status_code == 200 and served.json() == {"run": 1}
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == {"run": 1}
    assert slow.runs == 1
    assert [d.amount for d in await debits(ledger, "u1")] == [Decimal("0.5")]


async def test_a_slow_handler_billed_call_of_a_new_user_keeps_its_key(
    ledger: Ledger, clock: Clock
) -> None:
    """A handler-billed route claims its key before the user has an account (the handler
    bills, the middleware does not): its lease is renewed all the same."""
    slow = Slow()
    app = build(ledger, slow)
    async with client(app) as c:
        first = asyncio.ensure_future(c.post("/v1/chat", content=b"q", headers=keyed("k", "new")))
        await slow.entered.wait()
        await pass_time(app, clock, 700, step=20)  # hold_timeout (300 s) is its lease
        retry = await c.post("/v1/chat", content=b"q", headers=keyed("k", "new"))
        slow.finish.set()
        served = await first
    assert retry.status_code == 409, retry.text
    assert served.status_code == 200 and slow.runs == 1


async def test_a_hold_never_expires_under_a_live_handler(ledger: Ledger, clock: Clock) -> None:
    """Issue 17 item 4: the hold is extended while the handler runs, then captured at the
    handler's price (not served free)."""
    slow = Slow()
    app = build(ledger, slow, billing=Billing(hold_timeout=60))
    async with client(app) as c:
        call = asyncio.ensure_future(c.post("/v1/held", content=b"q", headers=bearer("u1")))
        await slow.entered.wait()
        await pass_time(app, clock, 200, step=10)
        slow.finish.set()
        r = await call
    assert r.status_code == 200 and r.headers["credit-cost"] == "0.75"
    assert await balance(ledger, "u1") == Decimal("4.25")
    [capture] = [e for e in await ledger.history("u1") if e.kind == "capture"]
    assert capture.amount == Decimal("0.75")


async def test_a_hold_that_lapsed_anyway_is_billed_late(ledger: Ledger, clock: Clock) -> None:
    """When the hold could not be kept alive (the ledger was away for its whole life), the
    capture still bills the call, as a debit of at most the hold, and says so."""
    slow = Slow()
    slow.final = "1.5"
    app = build(ledger, slow, billing=Billing(hold_timeout=60), idempotency=Idempotency(ttl=3600))
    async with client(app) as c:
        call = asyncio.ensure_future(c.post("/v1/held", content=b"q", headers=keyed("h")))
        await slow.entered.wait()
        clock.advance(61)  # no keep-alive: a stalled process, a partitioned database
        await ledger.sweep("u1")  # someone else's request swept the hold away meanwhile
        slow.finish.set()
        r = await call
    assert r.status_code == 200
    assert r.headers["credit-cost"] == "1"  # at most the hold: the client is told exactly
    [late] = await debits(ledger, "u1")
    assert late.amount == Decimal("1") and late.metadata["late"] is True
    assert late.metadata["shortfall_micros"] == 500_000
    assert await balance(ledger, "u1") == Decimal("4")


# --------------------------------------------------------------------------- taken over


async def _crashed_attempt(ledger: Ledger, body: bytes, key: str) -> str:
    """What a worker that died serving ``key`` left: the claim and its charge, nothing else."""
    scope = {"method": "POST", "path": "/v1/work", "query_string": b""}

    async def receive() -> Any:
        return {"type": "http.request", "body": body, "more_body": False}

    fingerprint = (await read_request(scope, receive, 1 << 20)).fingerprint
    await Provisioner(ledger).ensure_account(_identity("u1"), layer="request")
    spec = ChargeSpec("debit", "0.5", layer="request", route="/v1/work")
    await ledger.begin_request("u1", key, fingerprint, owner="c_dead", charge=spec, lease=30)
    return "c_dead"


def _identity(aid: str) -> Any:
    from credit_middleware import Identity

    return Identity(aid)


def lose_answer_once(ledger: Ledger, name: str) -> None:
    real = getattr(ledger, name)
    calls = [0]

    async def lost(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 1:
            raise BackendUnavailable("database", "connection lost", maybe_applied=True)
        return result

    setattr(ledger, name, lost)


async def test_a_retry_is_served_under_the_crashed_attempts_charge(
    ledger: Ledger, clock: Clock
) -> None:
    dead = await _crashed_attempt(ledger, b"q", "k")
    slow = Slow()
    slow.runs = 1  # no waiting
    app = build(ledger, slow)
    async with client(app) as c:
        early = await c.post("/v1/work", content=b"q", headers=keyed("k"))
        clock.advance(31)
        r = await c.post("/v1/work", content=b"q", headers=keyed("k"))
    assert early.status_code == 409
    assert r.status_code == 200 and r.headers["credit-charge-id"] == dead
    assert r.headers["credit-cost"] == "0.5"
    assert [d.key for d in await debits(ledger, "u1")] == [dead]


async def test_a_takeover_whose_answer_is_lost_never_loses_the_charge(
    ledger: Ledger, clock: Clock
) -> None:
    """Issue 18 item 3: the retry that takes a crashed attempt's charge over loses its answer;
    the key's one charge stands, serves the call, and is never taken a second time."""
    dead = await _crashed_attempt(ledger, b"q", "k")
    slow = Slow()
    slow.runs = 1
    app = build(ledger, slow)
    clock.advance(31)
    lose_answer_once(ledger, "begin_request")
    async with client(app) as c:
        answers = [await c.post("/v1/work", content=b"q", headers=keyed("k")) for _ in range(3)]
    served = [r for r in answers if r.status_code == 200]
    assert served and all(r.headers["credit-charge-id"] == dead for r in served)
    assert sum("idempotent-replayed" not in r.headers for r in served) == 1
    assert [d.key for d in await debits(ledger, "u1")] == [dead]
    assert await balance(ledger, "u1") == Decimal("4.5")


async def test_a_503_reversal_never_takes_back_a_charge_a_retry_serves(
    ledger: Ledger, clock: Clock
) -> None:
    """An attempt whose charge could not be settled answers 503 and leaves its reversal for
    later; a retry after its lease serves the call under that charge: the late reversal must
    leave it alone (else the call was served free)."""
    from credit_middleware.charge import outcomes as _outcome

    slow = Slow()
    slow.runs = 1
    app = build(ledger, slow)
    fails = [2]  # the attempt's own try, and the first try of its reversal
    tried = asyncio.Event()
    real_resolve = ledger.resolve_request

    async def resolve(*args: Any, **kwargs: Any) -> Any:
        if fails[0] > 0:
            fails[0] -= 1
            if not fails[0]:
                tried.set()
            raise BackendUnavailable("database", "away")
        return await real_resolve(*args, **kwargs)

    lose_answer_once(ledger, "begin_request")
    ledger.resolve_request = resolve  # type: ignore[method-assign]
    saved = _outcome._BACKOFF
    _outcome._BACKOFF = (3600.0,) * 7
    try:
        async with client(app) as c:
            first = await c.post("/v1/work", content=b"q", headers=keyed("k"))
            await tried.wait()  # its reversal is pending now
            clock.advance(31)
            retry = await c.post("/v1/work", content=b"q", headers=keyed("k"))
            assert await middleware_of(app).outcomes.drain() == 0
    finally:
        _outcome._BACKOFF = saved
    assert first.status_code == 503
    assert retry.status_code == 200 and retry.headers["credit-cost"] == "0.5"
    assert [e.kind for e in await ledger.history("u1")].count("refund") == 0
    assert await balance(ledger, "u1") == Decimal("4.5")


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "options",
    [
        {"idempotency": Idempotency(ttl=10)},  # shorter than a fixed-price call's 30 s lease
        # shorter than a held call's lease (hold_timeout 300 s)
        {"idempotency": Idempotency(ttl=100)},
        {"idempotency": Idempotency(ttl=100, lease=120)},
    ],
)
def test_a_key_may_not_be_forgotten_before_its_lease_ends(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="idempotency_ttl"):
        Credits(**options)


def test_a_ttl_that_covers_the_lease_is_fine() -> None:
    Credits(idempotency=Idempotency(ttl=100), billing=Billing(hold_timeout=60))
    Credits(idempotency=Idempotency(ttl=100, lease=100))
