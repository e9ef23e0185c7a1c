"""PostgreSQL's server-side hold and capture answer exactly what the generic path answers:
receipts, exceptions and balances, on the same scripted sequence (replays, mismatches,
shortfalls, expired and missing holds, a sweep due)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from conftest import Clock

from credit_middleware import Ledger
from credit_middleware.ledger import Balance

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pair(pg_url: str, clock: Clock) -> AsyncIterator[tuple[Ledger, Ledger]]:
    import asyncpg

    base, _, _ = pg_url.partition("?")
    schema = "g_" + pg_url.rsplit("=", 1)[1]
    conn = await asyncpg.connect(base)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.close()
    fast = Ledger(pg_url, clock=clock)
    slow = Ledger(f"{base}?search_path={schema}", clock=clock, fast_path=False)
    await fast.migrate()
    await slow.migrate()
    yield fast, slow
    for led in (fast, slow):
        assert (await led.verify()).ok
        await led.close()
    conn = await asyncpg.connect(base)
    await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    await conn.close()


def shape(value: Any) -> Any:
    """A receipt or an exception, without the ids and times that legitimately differ."""
    if isinstance(value, BaseException):
        return (type(value).__name__, str(value))
    if isinstance(value, Balance):
        return (value.spendable_micros, value.held_micros, len(value.grants))
    e = value.entry
    hold = value.hold
    return (
        e.kind,
        e.amount_micros,
        e.delta_micros,
        e.held_delta_micros,
        e.balance_after_micros,
        e.held_after_micros,
        dict(e.metadata),
        value.replayed,
        value.available_micros,
        None if hold is None else (hold.amount_micros, hold.status),
    )


async def test_hold_and_capture_agree_on_both_paths(
    pair: tuple[Ledger, Ledger], clock: Clock
) -> None:
    answers: list[list[Any]] = [[], []]
    for side, led in enumerate(pair):
        out = answers[side]

        async def step(op: Any, out: list[Any] = out) -> Any:
            try:
                result = await op
            except Exception as exc:
                result = exc
            out.append(shape(result))
            return result

        await led.open_account("a")
        await led.grant("a", "2", key="g1")
        await led.grant("a", "1", key="g2", expires_in=timedelta(seconds=50))
        h1 = await step(led.hold("a", "1.5", key="h1", timeout=30))
        await step(led.hold("a", "1.5", key="h1", timeout=30))  # replay
        await step(led.hold("a", "0.7", key="h1", timeout=30))  # another amount
        await step(led.debit("a", "0.1", key="d1"))
        await step(led.hold("a", "0.1", key="d1"))  # a debit's key
        await step(led.hold("a", "5", key="big"))  # insufficient
        await step(led.hold("nobody", "1"))
        h2 = await step(led.hold("a", "1", timeout=10))
        await step(led.capture(h1.hold.hold_id, "0.4", metadata={"m": 1}))
        await step(led.capture(h1.hold.hold_id, "0.4"))  # replay
        await step(led.capture(h1.hold.hold_id, "0.5"))  # captured for another amount
        await step(led.capture(10**9, "0.1"))
        clock.advance(11)
        await step(led.capture(h2.hold.hold_id, "0.1"))  # timed out
        await step(led.hold("a", "0.2", key="h3"))  # a sweep is due: the generic path runs
        h4 = await step(led.hold("a", "2", key="h4"))
        await step(led.capture(h4.hold.hold_id, "9", round_up=True))  # shortfall
        await step(led.balance("a"))
        clock.advance(-11)
    fast, slow = answers
    for i, (a, b) in enumerate(zip(fast, slow, strict=True)):
        assert a == b, (i, a, b)
