"""Property-based: random sequences of operations against a simple model of the ledger.

The model is the semantics of DESIGN.md written plainly: available = unexpired remaining -
active holds; debits and holds need that much; grants are consumed by priority, then soonest
expiry, then age; a capture charges at most its hold plus what is otherwise available; clock
jumps expire grants and holds, except what an active hold reserved, which its capture uses
first. After every step the ledger must agree with the model, and at the
end ``verify`` must be clean.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credit_middleware import HoldNotActive, InsufficientCredits, Ledger
from credit_middleware.money import from_micros

T0 = 1_800_000_000.0

amounts = st.integers(min_value=1, max_value=3_000_000)
grants = st.tuples(
    st.just("grant"),
    st.integers(1, 5_000_000),
    st.sampled_from([-1, 0, 1]),
    st.sampled_from([None, 10, 100, 1000]),
)
# every sequence starts with a few grants, so the order of consumption is always at stake
ops = st.builds(
    lambda head, tail: head + tail,
    st.lists(grants, min_size=2, max_size=4),
    st.lists(
        st.one_of(
            grants,
            st.tuples(st.just("debit"), amounts),
            st.tuples(st.just("hold"), amounts, st.sampled_from([5, 50, 500])),
            st.tuples(st.just("capture"), st.integers(0, 5), st.integers(0, 3_000_000)),
            st.tuples(st.just("release"), st.integers(0, 5)),
            st.tuples(st.just("advance"), st.sampled_from([1, 7, 60, 400])),
        ),
        max_size=25,
    ),
)


@dataclass
class MGrant:
    gid: int
    seq: int
    remaining: int
    priority: int
    expires: float | None


@dataclass
class MHold:
    hid: int
    amount: int
    expires: float
    status: str = "active"


@dataclass
class Model:
    now: float = T0
    grants: list[MGrant] = field(default_factory=list)
    holds: list[MHold] = field(default_factory=list)

    def unexpired(self) -> list[MGrant]:
        live = [
            g for g in self.grants if g.remaining and (g.expires is None or g.expires > self.now)
        ]
        return sorted(
            live, key=lambda g: (g.priority, math.inf if g.expires is None else g.expires, g.seq)
        )

    def spendable(self) -> int:
        return sum(g.remaining for g in self.unexpired())

    def held(self) -> int:
        return sum(h.amount for h in self.holds if h.status == "active" and h.expires > self.now)

    def available(self) -> int:
        return self.spendable() - self.held()

    def consume(self, amount: int) -> None:
        for g in self.unexpired():
            take = min(g.remaining, amount)
            g.remaining -= take
            amount -= take


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def run(url: str, steps: list[tuple[Any, ...]], fast_path: bool = True) -> None:
    clock = Clock()
    model = Model()
    async with Ledger(url, clock=clock, fast_path=fast_path) as ledger:
        await ledger.migrate()
        await ledger.open_account("m")
        for step in steps:
            name = step[0]
            if name == "grant":
                _, amount, priority, life = step
                r = await ledger.grant(
                    "m",
                    from_micros(amount),
                    priority=priority,
                    expires_in=timedelta(seconds=life) if life else None,
                )
                assert r.grant is not None
                model.grants.append(
                    MGrant(
                        r.grant.grant_id,
                        len(model.grants),
                        amount,
                        priority,
                        model.now + life if life else None,
                    )
                )
            elif name in ("debit", "hold"):
                amount = step[1]
                fits = amount <= model.available()
                try:
                    if name == "debit":
                        await ledger.debit("m", from_micros(amount))
                    else:
                        r = await ledger.hold("m", from_micros(amount), timeout=step[2])
                        assert r.hold is not None
                        model.holds.append(MHold(r.hold.hold_id, amount, model.now + step[2]))
                    assert fits, f"{name} of {amount} succeeded, model had {model.available()}"
                    if name == "debit":
                        model.consume(amount)
                except InsufficientCredits:
                    assert not fits, f"{name} of {amount} refused, model had {model.available()}"
            elif name == "capture" and model.holds:
                h = model.holds[step[1] % len(model.holds)]
                live = h.status == "active" and h.expires > model.now
                try:
                    r = await ledger.capture(h.hid, from_micros(step[2]))
                except HoldNotActive:
                    assert not live
                else:
                    if r.replayed:
                        assert h.status == "captured"
                        continue
                    assert live, f"captured a hold the model thinks is {h.status}"
                    spendable, held = model.spendable(), model.held()
                    charge = min(step[2], h.amount + max(0, spendable - held))
                    assert r.entry.amount_micros == charge
                    # credits kept past expiry for the holds are used before live ones
                    reserved = max(0, held - spendable)
                    model.consume(max(0, charge - reserved))
                    h.status = "captured"
            elif name == "release" and model.holds:
                h = model.holds[step[1] % len(model.holds)]
                try:
                    await ledger.release(h.hid)
                    assert h.status != "captured"
                    h.status = "released"
                except HoldNotActive:
                    assert h.status == "captured"
            elif name == "advance":
                clock.now += step[1]
                model.now = clock.now
            bal = await ledger.balance("m")
            assert bal.available_micros == model.available(), (step, bal, model)
            ledger_live = {
                g.grant_id: g.remaining_micros
                for g in bal.grants
                if g.expires_at is None or g.expires_at.timestamp() > model.now
            }
            assert ledger_live == {g.gid: g.remaining for g in model.unexpired()}
        report = await ledger.verify()
        assert report.ok, report.discrepancies


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=ops)
def test_ledger_matches_model_sqlite(
    tmp_path_factory: pytest.TempPathFactory, steps: list[Any]
) -> None:
    path = tmp_path_factory.mktemp("model") / "m.db"
    asyncio.run(run(f"sqlite:///{path}", steps))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=ops)
@pytest.mark.parametrize("fast_path", [True, False], ids=["server-side-debit", "generic-debit"])
def test_ledger_matches_model_postgres(
    pg_database: str | None, fast_path: bool, steps: list[Any]
) -> None:
    if pg_database is None:
        pytest.skip("PostgreSQL unavailable")

    async def with_schema() -> None:
        import asyncpg

        schema = f"m_{secrets.token_hex(4)}"
        conn = await asyncpg.connect(pg_database)
        await conn.execute(f"CREATE SCHEMA {schema}")
        try:
            await run(f"{pg_database}?search_path={schema}", steps, fast_path)
        finally:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            await conn.close()

    asyncio.run(with_schema())
