"""The report's rollups against the full recomputation: random ledgers (a property test, on
both backends), writers racing the rollup job (ids committed out of order included), periods
of whole days, usage per route, and sums past 64 bits."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credit_middleware import Ledger
from credit_middleware.admin import admin_app
from credit_middleware.errors import BackendUnavailable, CreditError
from credit_middleware.ledger import _ops
from credit_middleware.ledger._tx import Tag
from credit_middleware.money import from_micros as c
from credit_middleware.report import build_report

DAY = 86_400
T0 = 1_800_000_000.0
OPEN = 2**62  # a period's open end, as the ledger's
ROUTES = ("/v1/chat", "/v1/embed", None)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _norm(rows: Any) -> dict[str, Any]:
    return {
        name: sorted((sorted(r.items()) for r in getattr(rows, name)), key=repr)
        for name in ("accounts", "entries", "granted", "usage", "cohorts")
    }


async def _agree(ledger: Ledger, lo: int, hi: int, top: int = 5) -> None:
    rolled = await ledger.report_rows(lo, hi, top, source="rollups")
    full = await ledger.report_rows(lo, hi, top, source="entries")
    assert _norm(rolled) == _norm(full), (lo, hi)


async def _routes_agree(ledger: Ledger, lo: int, hi: int, account_id: str | None) -> None:
    rolled = await ledger.usage_by_route(
        since=datetime.fromtimestamp(lo / 1e6, tz=timezone.utc) if lo != -OPEN else None,
        until=datetime.fromtimestamp(hi / 1e6, tz=timezone.utc) if hi != OPEN else None,
        account_id=account_id,
    )
    from credit_middleware.ledger._search import route_usage_from_entries

    full = await ledger._x.run(
        lambda conn: route_usage_from_entries(conn, lo, hi, account_id), write=False
    )
    assert sorted((u.route, u.calls, u.charged_micros, u.refunded_micros) for u in rolled) == (
        sorted(full)
    )


# ---------------------------------------------------------------------------- random ledgers

accounts = st.integers(0, 5)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("open"),
            accounts,
            st.sampled_from(["signup", "webhook", "request", "litellm", None]),
            st.sampled_from(["A", "B", None]),
            st.sampled_from([None, "ip-cap"]),
        ),
        st.tuples(st.just("late_trial"), accounts),
        st.tuples(
            st.just("grant"),
            accounts,
            st.sampled_from(["purchase", "promo", "admin"]),
            st.integers(1, 5_000_000),
        ),
        st.tuples(st.just("debit"), accounts, st.integers(1, 3_000_000), st.sampled_from(ROUTES)),
        st.tuples(
            st.just("hold"),
            accounts,
            st.integers(1, 2_000_000),
            st.integers(0, 3_000_000),
            st.booleans(),
            st.sampled_from(ROUTES),
        ),
        st.tuples(st.just("refund"), accounts, st.booleans()),
        st.tuples(st.just("adjust"), accounts, st.integers(-2_000_000, 2_000_000)),
        st.tuples(st.just("advance"), st.integers(60, 3 * DAY)),
        st.tuples(st.just("sweep")),
        st.tuples(st.just("refresh")),
    ),
    min_size=8,
    max_size=40,
)
# accounts 0-3 start with a trial, each from another layer and cohort; 4 and 5 only when a
# step opens them
_START = (("signup", "A"), ("webhook", "B"), ("request", None), (None, "A"))


async def _play(ledger: Ledger, clock: Clock, prefix: str, plan: list[Any]) -> list[str]:
    """Run the steps; a refusal (no account, not enough credits, ...) is part of the game."""
    ids = [f"{prefix}-{i}" for i in range(6)]
    charges: dict[str, list[tuple[int, int]]] = {}

    async def trial(aid: str, layer: str | None, cohort: str | None, by: str | None) -> None:
        await ledger.provision(
            aid,
            tier="trial",
            trial_amount="5",
            trial_expires_at=datetime.fromtimestamp(clock.now + DAY, tz=timezone.utc),
            cohort=cohort,
            layer=by,
            account_metadata={"provisioned_by": layer} if layer else None,
        )

    for aid, (layer, cohort) in zip(ids, _START, strict=False):
        await trial(aid, layer, cohort, layer or "litellm")
    for step in plan:
        name, aid = step[0], ids[step[1]] if len(step) > 1 and step[0] != "advance" else ""
        try:
            if name == "open":
                layer, cohort, denied = step[2], step[3], step[4]
                meta = {"provisioned_by": layer} if layer else {}
                if denied:
                    await ledger.open_account(
                        aid, tier="trial", cohort=cohort, metadata={**meta, "trial_denied": denied}
                    )
                else:
                    await trial(aid, layer, cohort, layer)
            elif name == "late_trial":
                ends = datetime.fromtimestamp(clock.now + 2 * DAY, tz=timezone.utc)
                await ledger.provision(
                    aid, tier="trial", trial_amount="3", trial_expires_at=ends, layer="request"
                )
            elif name == "grant":
                await ledger.grant(aid, c(step[3]), source=step[2])
            elif name == "debit":
                r = await ledger.debit(aid, c(step[2]), route=step[3])
                charges.setdefault(aid, []).append((r.entry.entry_id, step[2]))
            elif name == "hold":
                h = await ledger.hold(aid, c(step[2]), timeout=3600, route=step[5])
                assert h.hold is not None
                if step[4]:
                    got = await ledger.capture(h.hold.hold_id, c(step[3]), route=step[5])
                    if got.entry.amount_micros:
                        charge = (got.entry.entry_id, got.entry.amount_micros)
                        charges.setdefault(aid, []).append(charge)
                else:
                    await ledger.release(h.hold.hold_id)
            elif name == "refund":
                if step[2] and charges.get(aid):
                    eid, amount = charges[aid].pop()
                    await ledger.refund(aid, c(max(1, amount // 2)), entry_id=eid)
                else:
                    await ledger.refund(aid, c(1234))
            elif name == "adjust" and step[2]:
                await ledger.adjust(aid, c(step[2]), key=secrets.token_hex(4), reason="test")
            elif name == "advance":
                clock.now += step[1]
            elif name == "sweep":
                await ledger.sweep()
            elif name == "refresh":
                await ledger.refresh_rollups()
        except (CreditError, ValueError):
            pass
    return ids


def _whole_days(ledger_start: float, clock: Clock, a: int, b: int) -> tuple[int, int]:
    first = int(ledger_start // DAY)
    last = int(clock.now // DAY) + 1
    d0 = first + a % (last - first + 1)
    d1 = d0 + 1 + b % (last - d0 + 1)
    return d0 * DAY * 1_000_000, d1 * DAY * 1_000_000


def _property(ledger_url: str, monkeypatch: pytest.MonkeyPatch, examples: int) -> None:
    from credit_middleware.ledger import _rollups

    monkeypatch.setattr(_rollups, "BATCH", 3)  # batches end everywhere: at every step, nearly
    clock = Clock()
    start = clock.now

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(plan=steps, a=st.integers(0, 1000), b=st.integers(0, 1000))
    def check(plan: list[Any], a: int, b: int) -> None:
        async def run() -> None:
            ledger = Ledger(ledger_url, clock=clock)
            try:
                await ledger.migrate()
                ids = await _play(ledger, clock, secrets.token_hex(3), plan)
                await _agree(ledger, -OPEN, OPEN)
                lo, hi = _whole_days(start, clock, a, b)
                await _agree(ledger, lo, hi)
                await _agree(ledger, -OPEN, hi)
                await _routes_agree(ledger, -OPEN, OPEN, None)
                await _routes_agree(ledger, lo, hi, None)
                await _routes_agree(ledger, -OPEN, OPEN, ids[0])
                assert (await ledger.verify()).ok
            finally:
                await ledger.close()

        asyncio.run(run())

    check()


@pytest.mark.slow
def test_the_rollup_report_equals_the_full_recomputation_on_random_ledgers(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one ledger per backend, growing example after example: each compares the whole of it
    _property(ledger_url, monkeypatch, examples=60 if "sqlite" in ledger_url else 30)


# ---------------------------------------------------------------------------- racing writers


@pytest.mark.anyio
async def test_an_id_committed_after_a_higher_one_is_not_skipped(pg_url: str) -> None:
    """The watermark trap: entry 2 commits, the rollup job runs, then entry 1 (taken first,
    committed last) commits. The job must neither skip entry 1 nor roll up past it."""
    clock = Clock()
    ledger = Ledger(pg_url, clock=clock)
    other = Ledger(pg_url, clock=clock)
    await ledger.migrate()
    try:
        for aid in ("slow", "fast"):
            await ledger.open_account(aid, tier="t")
            await ledger.grant(aid, "10", key="g")
        await ledger.refresh_rollups()
        started, release = asyncio.Event(), asyncio.Event()

        async def slow_debit() -> None:  # takes its entry id, then waits to commit
            async with ledger._tx() as conn:
                await _ops.debit(conn, int(clock.now * 1e6), "slow", 700_000, Tag(route="/late"))
                started.set()
                await release.wait()

        slow = asyncio.create_task(slow_debit())
        try:
            await started.wait()
            fast = await other.debit("fast", "0.25", route="/early")
            rows = await ledger._x.run(
                lambda conn: conn.fetch("SELECT entry_id, route FROM credit_entries"), write=False
            )
            assert fast.entry.entry_id in {r["entry_id"] for r in rows}
            assert "/late" not in {r["route"] for r in rows}  # not committed: its id is lower
            from credit_middleware.ledger import _rollups

            with pytest.raises(BackendUnavailable):  # no fence while it is open: nothing moves
                await _rollups.refresh(ledger._x, int(clock.now * 1e6), patience=0.3)
            refreshing = asyncio.create_task(ledger.refresh_rollups())
            await asyncio.sleep(0)
        finally:
            release.set()
            await slow
        await refreshing
        usage = {u.route: u.charged_micros for u in await ledger.usage_by_route()}
        assert usage == {"/late": 700_000, "/early": 250_000}
        await _agree(ledger, -OPEN, OPEN)
        assert (await ledger.verify()).ok
    finally:
        await other.close()
        await ledger.close()


@pytest.mark.anyio
async def test_writers_racing_the_rollup_job_agree_with_the_full_recomputation(
    ledger_url: str,
) -> None:
    clock = Clock()
    writers = [Ledger(ledger_url, clock=clock) for _ in range(3)]
    job = Ledger(ledger_url, clock=clock)
    await job.migrate()
    try:
        ids = [f"r{i}" for i in range(6)]
        for aid in ids:
            await job.provision(aid, tier="trial", trial_amount="1000", layer="signup")
        done = asyncio.Event()
        rounds = 0

        async def write(ledger: Ledger, n: int) -> None:
            for i in range(40):
                aid = ids[(n * 7 + i) % len(ids)]
                r = await ledger.debit(aid, "0.01", route=ROUTES[i % 3])
                if i % 5 == 0:
                    await ledger.refund(aid, "0.005", entry_id=r.entry.entry_id)
                if i % 11 == 0:
                    await ledger.open_account(f"new-{n}-{i}", tier="t", cohort="C")

        async def roll() -> None:
            nonlocal rounds
            while not done.is_set():
                await job.refresh_rollups()
                rounds += 1
                await asyncio.sleep(0)

        roller = asyncio.create_task(roll())
        await asyncio.gather(*(write(w, n) for n, w in enumerate(writers)))
        done.set()
        await roller
        assert rounds > 1
        await _agree(job, -OPEN, OPEN, top=10)
        await _routes_agree(job, -OPEN, OPEN, None)
        for aid in ids[:2]:
            await _routes_agree(job, -OPEN, OPEN, aid)
        assert (await job.verify()).ok
    finally:
        for w in writers:
            await w.close()
        await job.close()


# ---------------------------------------------------------------------------- exact sums


async def _huge_grants(ledger: Ledger, n: int, micros: int, now: int) -> None:
    """Accounts each holding one grant of ``micros`` (beyond what one API grant may be, as
    years of purchases add up to), written consistently: verify stays clean."""

    async def write(conn: Any) -> None:
        for i in range(n):
            aid = f"big-{i}"
            await conn.execute(
                "INSERT INTO credit_accounts (account_id, tier, balance, metadata, created_at,"
                " updated_at) VALUES ($1, 'pro', $2, '{\"provisioned_by\":\"signup\"}', $3, $3)",
                aid,
                micros,
                now,
            )
            gid = await conn.fetchval(
                "INSERT INTO credit_grants (account_id, source, amount, remaining, effective_at,"
                " idempotency_key, created_at) VALUES ($1, 'purchase', $2, $2, $3, 'big', $3)"
                " RETURNING grant_id",
                aid,
                micros,
                now,
            )
            eid = await conn.fetchval(
                "INSERT INTO credit_entries (account_id, kind, amount, delta, balance_after,"
                " held_after, grant_id, idempotency_key, created_at)"
                " VALUES ($1, 'grant', $2, $2, $2, 0, $3, 'big', $4) RETURNING entry_id",
                aid,
                micros,
                gid,
                now,
            )
            await conn.execute(
                "INSERT INTO credit_postings (entry_id, grant_id, amount) VALUES ($1, $2, $3)",
                eid,
                gid,
                micros,
            )

    await ledger._x.run(write)


@pytest.mark.anyio
async def test_report_sums_past_64_bits_are_exact_and_the_dashboard_answers(
    ledger: Ledger, clock: Callable[[], float]
) -> None:
    micros = 4 * 10**18  # three of them: 1.2e19 µc, past 2**63 (9.2e18)
    await _huge_grants(ledger, 3, micros, int(clock() * 1e6))
    await ledger.debit("big-0", "1", route="/v1/chat")
    report = (await build_report(ledger)).to_json()
    assert report["credits"]["granted"] == "12000000000000"
    app = admin_app(ledger, token="s3cret-admin-token-0123456789")
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": "Bearer s3cret-admin-token-0123456789"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        page = await c.get("/")
        usage = await c.get("/api/usage", params={"since": "2020-01-01T00:00:01+00:00"})
    assert page.status_code == 200 and 'data-k="credits.granted">12000000000000<' in page.text
    assert usage.status_code == 200  # a period within a day counts its entries: exact too
    total = 3 * micros
    for source in ("rollups", "entries"):
        rows = await ledger.report_rows(-OPEN, OPEN, 10, source=source)
        assert {r["source"]: r["s"] for r in rows.granted} == {"purchase": total}
        assert sum(r["s"] for r in rows.entries if r["kind"] == "grant") == total
    verified = await ledger.verify()
    assert verified.ok, verified.discrepancies


@pytest.mark.anyio
async def test_a_period_that_splits_a_day_counts_entries_and_agrees(
    ledger: Ledger, clock: Any
) -> None:
    await ledger.provision("p", tier="trial", trial_amount="5", layer="signup")
    await ledger.debit("p", "1", route="/a")
    clock.advance(3600)
    await ledger.debit("p", "0.5", route="/b")
    middle = datetime.fromtimestamp(clock() - 1800, tz=timezone.utc)
    second = await build_report(ledger, since=middle)
    assert second.consumed_micros == 500_000
    day = middle.replace(hour=0, minute=0, second=0, microsecond=0)
    whole = await build_report(ledger, since=day, until=day + timedelta(days=2))
    assert whole.consumed_micros == 1_500_000
    with pytest.raises(ValueError, match="whole UTC days"):
        await ledger.report_rows(int(middle.timestamp() * 1e6), OPEN, 5, source="rollups")
