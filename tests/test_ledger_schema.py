"""The ledger in a PostgreSQL schema of its own: whatever the database's search_path says, an
app's own tables and migrations never meet ours, and a ledger made before (in the app's schema)
moves in once, with every row, sequence, trigger and function, under the migration lock."""

from __future__ import annotations

import asyncio
import logging
import secrets
from decimal import Decimal

import pytest
from _pg_databases import objects_by_schema, own_database, run_sql
from conftest import PG_BASE, Clock

from credit_middleware import ConfigurationError, Ledger
from credit_middleware.errors import IdempotencyInFlight
from credit_middleware.ledger._pgschema import DEFAULT_SCHEMA, place
from credit_middleware.ledger.schema import migrations

pytestmark = pytest.mark.anyio

LATEST = migrations("postgresql")[-1][0]
TABLES = {
    "credit_schema_version",
    "credit_accounts",
    "credit_grants",
    "credit_holds",
    "credit_entries",
    "credit_postings",
    "credit_requests",
    "credit_voids",
    "credit_account_events",
}


def test_where_a_url_puts_the_ledger() -> None:
    assert place("postgresql://u@h/db") == place("postgresql://u@h/db?sslmode=disable")
    assert place("postgresql://u@h/db").schema == DEFAULT_SCHEMA
    assert place("postgresql://u@h/db").chosen
    named = place("postgresql://u@h/db?search_path=billing,public")
    assert (named.schema, named.chosen) == ("billing", False)
    assert place('postgresql://u@h/db?search_path="Odd ""Name"""').schema == 'Odd "Name"'
    assert place("postgresql://u@h/db?search_path=$user,public").schema is None
    options = place("postgresql://u@h/db?options=-c%20search_path%3Dledger,public")
    assert (options.schema, options.chosen) == ("ledger", False)


async def _books(ledger: Ledger, accounts: list[str]) -> list[object]:
    """Everything a ledger says about ``accounts``: balances, holds, history, tier changes."""
    out: list[object] = []
    for account in accounts:
        out.append(await ledger.balance(account))
        out.append(await ledger.holds(account, active_only=False))
        out.append(await ledger.history(account, limit=1000))
        out.append(await ledger.tier_history(account))
    return out


async def _legacy_ledger(url: str, clock: Clock) -> tuple[Ledger, int]:
    """A ledger as the library made it before it had a schema of its own: in the first schema
    of the connection's search_path (``?search_path=public`` puts it exactly there)."""
    old = Ledger(url + "?search_path=public", clock=clock)
    assert await old.migrate() == [v for v, _, _ in migrations("postgresql")]
    for account in ("alice", "bob"):
        await old.provision(account, trial_amount="5", tier="trial")
        await old.debit(account, "0.25", key=f"{account}-d1")
        clock.advance(1)
    hold = await old.hold("alice", "1", key="h1", timeout=600)
    await old.set_tier("bob", "pro", key="t1", reason="upgrade")
    claim = await old.begin_request("alice", "idem-1", "fp", owner="w1", ttl=3600.0, lease=30.0)
    assert claim.state == "new"
    assert hold.entry.hold_id is not None
    return old, hold.entry.hold_id


async def test_a_ledger_from_before_moves_into_its_schema_once_and_loses_nothing(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async with own_database("move") as url:
        old, hold_id = await _legacy_ledger(url, clock)
        before = await _books(old, ["alice", "bob"])
        await old.close()
        # an app's own table in the same schema is the app's: it stays where it is
        await run_sql(url, "CREATE TABLE public.credit_cards (id INTEGER PRIMARY KEY)")
        assert (await objects_by_schema(url))["public"] >= TABLES

        # two processes start on the new version at once: one moves it, the other finds it moved
        first, second = Ledger(url, clock=clock), Ledger(url, clock=clock)
        with caplog.at_level(logging.WARNING, logger="credit_middleware.ledger"):
            assert list(await asyncio.gather(first.migrate(), second.migrate())) == [[], []]
        moved = [r for r in caplog.records if "moved the credit ledger" in r.getMessage()]
        assert len(moved) == 1
        where = await objects_by_schema(url)
        assert where["public"] == {"credit_cards"}
        assert where[DEFAULT_SCHEMA] >= TABLES
        assert {"credit_debit()", "credit_provision()", "credit_append_only()"} <= where[
            DEFAULT_SCHEMA
        ]

        try:
            assert await _books(first, ["alice", "bob"]) == before
            assert await first.schema_version() == LATEST
            assert (await first.verify()).ok
            # sequences, keys, holds and the request store came along
            again = await first.debit("alice", "0.25", key="alice-d1")
            assert again.replayed
            grant = await first.grant("bob", "1", key="g-after")
            assert grant.grant is not None and grant.grant.grant_id > 2
            captured = await first.capture(hold_id, "0.5")
            assert captured.available == Decimal("3.75") + Decimal("0.5")
            with pytest.raises(IdempotencyInFlight):  # its first attempt is still being served
                await first.begin_request("alice", "idem-1", "fp", owner="w2")
            # still append-only: the triggers moved with their tables
            with pytest.raises(Exception, match="append-only"):
                await run_sql(
                    url, f"UPDATE {DEFAULT_SCHEMA}.credit_entries SET layer = 'x' WHERE true"
                )
            assert await first.migrate() == []  # nothing left to move, nothing to apply
            assert (await objects_by_schema(url))["public"] == {"credit_cards"}
            assert (await first.verify()).ok
        finally:
            await first.close()
            await second.close()


async def test_the_databases_search_path_neither_places_nor_hides_the_ledger(clock: Clock) -> None:
    """A database whose default search_path names the app's schema: a ledger made there before
    is found there and moved; a new one never goes there."""
    async with own_database("path") as url:
        await run_sql(url, "CREATE SCHEMA app")
        db = url.rsplit("/", 1)[1]
        await run_sql(url, f'ALTER DATABASE "{db}" SET search_path = app, public')
        old = Ledger(url + "?search_path=app", clock=clock)
        await old.migrate()
        await old.provision("carol", trial_amount="2", tier="trial")
        await old.close()
        async with Ledger(url, clock=clock) as ledger:
            assert await ledger.migrate() == []
            assert (await ledger.balance("carol")).available == 2
            assert (await ledger.verify()).ok
        where = await objects_by_schema(url)
        assert "app" not in where and "public" not in where
        assert where[DEFAULT_SCHEMA] >= TABLES

    async with own_database("fresh") as url:
        await run_sql(url, "CREATE SCHEMA app")
        db = url.rsplit("/", 1)[1]
        await run_sql(url, f'ALTER DATABASE "{db}" SET search_path = app, public')
        async with Ledger(url, clock=clock) as ledger:
            assert await ledger.migrate() == [v for v, _, _ in migrations("postgresql")]
            await ledger.provision("dave", trial_amount="1", tier="trial")
        assert set(await objects_by_schema(url)) == {DEFAULT_SCHEMA}


async def test_a_schema_named_in_the_url_is_made_and_used(clock: Clock) -> None:
    async with own_database("named") as url:
        async with Ledger(url + "?search_path=billing", clock=clock) as ledger:
            await ledger.migrate()
            await ledger.provision("erin", trial_amount="1", tier="trial")
            assert (await ledger.verify()).ok
        assert set(await objects_by_schema(url)) == {"billing"}


async def test_a_role_that_may_not_create_schemas(clock: Clock) -> None:
    """Told what to do when the schema is missing; works once an administrator made it."""
    role = f"cm_role_{secrets.token_hex(4)}"
    await run_sql(PG_BASE, f"CREATE ROLE {role} LOGIN")
    try:
        async with own_database("role") as url:
            as_role = url.replace("postgres@", f"{role}@", 1)
            async with Ledger(as_role, clock=clock) as ledger:
                with pytest.raises(ConfigurationError, match="CREATE SCHEMA"):
                    await ledger.migrate()
            await run_sql(url, f"CREATE SCHEMA {DEFAULT_SCHEMA} AUTHORIZATION {role}")
            async with Ledger(as_role, clock=clock) as ledger:
                await ledger.migrate()
                await ledger.provision("fay", trial_amount="1", tier="trial")
                assert (await ledger.verify()).ok
    finally:
        await run_sql(PG_BASE, f"DROP ROLE IF EXISTS {role}")
