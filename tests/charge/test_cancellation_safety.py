"""Cancelled callers never wedge a ledger (issue 10 item 3): whatever cancels a task waiting on
the ledger (a client disconnect, a timeout, ``wait_for``), no connection is left inside a
transaction; the next plain operation succeeds and ``verify`` stays clean. The same assertions
run on the embedded default, on an app's own ``databases.Database`` and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from _middleware_helpers import bearer, build_app, client, middleware_of, trial_grants

from credit_middleware import BackendUnavailable, InsufficientCredits, Ledger, Provisioner
from credit_middleware.config import Limits

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "databases", "postgresql"])
def target(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(kind, URL): the embedded default, an app's own databases.Database, PostgreSQL."""
    if request.param == "postgresql":
        return "url", str(request.getfixturevalue("pg_url"))
    return ("url" if request.param == "sqlite" else "databases"), str(
        request.getfixturevalue("sqlite_url")
    )


@pytest.fixture
async def any_ledger(target: tuple[str, str]) -> AsyncIterator[Ledger]:
    """A migrated ledger on ``target``; verified clean at the end."""
    kind, url = target
    database: Any = None
    if kind == "databases":
        import databases

        database = databases.Database(url)
        await database.connect()
        led = Ledger(database=database)
    else:
        led = Ledger(url)
    await led.migrate()
    try:
        yield led
        assert (await led.verify()).ok
    finally:
        await led.close()
        if database is not None:
            await database.disconnect()


async def _cancelled(aw: Any, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError, InsufficientCredits):
        await asyncio.wait_for(aw, seconds)


async def burst(
    make: Callable[[], Awaitable[Any]], n: int, rng: random.Random, strikes: int = 6
) -> list[Any]:
    """``n`` concurrent calls; at a few random instants, a random half of those still running
    is cancelled (so whichever task holds the connection at that instant is often among
    them). Returns the outcomes that are neither a result nor a cancellation."""
    tasks = [asyncio.ensure_future(make()) for _ in range(n)]

    def strike() -> None:
        for task in tasks:
            if not task.done() and rng.random() < 0.5:
                task.cancel()

    loop = asyncio.get_running_loop()
    for _ in range(strikes):
        loop.call_later(rng.uniform(0, 0.1), strike)
    await asyncio.wait(tasks)
    return [t.exception() for t in tasks if not t.cancelled() and t.exception()]


async def test_debits_cancelled_by_wait_for_leave_the_ledger_serving(any_ledger: Ledger) -> None:
    """The issue's reproduction: a few hundred debits under ``wait_for(..., 0.05)`` (a few
    rounds: on the old code each round wedged the embedded default about half the time)."""
    await any_ledger.open_account("a")
    await any_ledger.grant("a", "1000")
    for deadline in (0.05, 0.03, 0.07, 0.05, 0.04, 0.06, 0.05, 0.08):
        await asyncio.gather(
            *(_cancelled(any_ledger.debit("a", "0.001"), deadline) for _ in range(300))
        )
        # failed on the old code: "cannot start a transaction within a transaction"
        receipt = await any_ledger.debit("a", "0.001")
        assert not receipt.replayed
    report = await any_ledger.verify()
    assert report.ok, report.discrepancies


async def test_bursts_of_first_requests_with_random_cancellations(any_ledger: Ledger) -> None:
    """120+ concurrent first requests from one new account (provision, then debit), cancelled
    at random; then a plain request must work, and the account has one trial grant."""
    rng = random.Random(10)
    for n in (120, 160, 200, 120, 160):
        account = f"burst-{n}-{rng.random()}"
        prov = Provisioner(any_ledger)

        async def first_request(account: str = account, prov: Provisioner = prov) -> None:
            await prov.ensure_account(account, layer="request")
            await any_ledger.debit(account, "0.001")

        failed = await burst(first_request, n, rng)
        assert not [e for e in failed if not isinstance(e, InsufficientCredits)], failed[:3]
        await first_request()
        assert await trial_grants(any_ledger, account) == 1
    report = await any_ledger.verify()
    assert report.ok, report.discrepancies


async def test_first_requests_over_http_cancelled_by_the_client(sqlite_url: str) -> None:
    """The same through the middleware on the embedded default: bursts of first requests
    whose clients give up at once (the request tasks are cancelled inside the app), then a
    plain request is served, not answered 503 (on the old code: 503 for good)."""
    app = build_app(
        database_url=sqlite_url, limits=Limits(default=None), tiers={"trial": "100000/minute"}
    )
    async with client(app) as http:
        assert (await http.get("/healthz")).status_code == 200
        for n, deadline in ((150, 0.05), (120, 0.03), (150, 0.07), (120, 0.04), (150, 0.06)):
            headers = bearer(f"burst-user-{n}-{deadline}")
            # half from one new account (the burst), half from as many new accounts
            others = [bearer(f"new-{n}-{deadline}-{i}") for i in range(n // 2)]
            await asyncio.gather(
                *(_cancelled(http.get("/v1/echo", headers=h), deadline)
                  for h in [headers] * (n - n // 2) + others)
            )  # fmt: skip
            response = await http.get("/v1/echo", headers=headers)
            assert response.status_code == 200, response.text
        ledger = middleware_of(app).ledger
        try:
            report = await ledger.verify()
            assert report.ok, report.discrepancies
        finally:
            await ledger.close()


def test_the_documented_fastapi_test_pattern_exits(tmp_path: Path) -> None:
    """httpx.AsyncClient + ASGITransport, no lifespan, nothing closed (FastAPI's documented
    test pattern, issue 12 item 6): the process must exit on the embedded default."""
    script = textwrap.dedent(
        f"""
        import asyncio, httpx
        import sys; sys.path.insert(0, "tests")
        from _middleware_helpers import bearer, build_app

        app = build_app(database_url="sqlite:///{tmp_path / "c.db"}")

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                print((await http.get("/v1/echo", headers=bearer("u"))).status_code)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "200"


async def test_a_closed_embedded_ledger_refuses_without_a_thread(sqlite_url: str) -> None:
    import threading

    before = set(threading.enumerate())
    led = Ledger(sqlite_url)
    await led.migrate()
    names = [t for t in set(threading.enumerate()) - before if t.name == "credit-ledger-sqlite"]
    assert names and all(t.daemon for t in names)
    await led.close()
    for t in names:
        t.join(5)
        assert not t.is_alive()
    with pytest.raises(BackendUnavailable, match="closed"):
        await led.get_account("a")
