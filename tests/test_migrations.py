"""Schema creation and upgrade: racing processes, caller-owned databases, append-only tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from credit_middleware import ConfigurationError, Ledger
from credit_middleware.ledger.schema import migrations

pytestmark = pytest.mark.anyio


def _migrate_in_processes(url: str, n: int) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "credit_middleware", "migrate", "--database-url", url, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


async def test_processes_migrating_at_once_on_postgres(pg_url: str) -> None:
    results = _migrate_in_processes(pg_url, 5)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    applied = sorted(json.loads(r.stdout)["applied"] for r in results)
    versions = [v for v, _, _ in migrations("postgresql")]
    # the advisory lock let exactly one process apply them; the others found them done
    assert applied == [[]] * 4 + [versions]
    async with Ledger(pg_url) as ledger:
        assert await ledger.schema_version() == versions[-1]


async def test_processes_migrating_at_once_on_sqlite(sqlite_url: str) -> None:
    results = _migrate_in_processes(sqlite_url, 4)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    async with Ledger(sqlite_url) as ledger:
        assert await ledger.schema_version() == migrations("sqlite")[-1][0]
        assert (await ledger.verify()).ok


async def test_a_callers_own_databases_database(tmp_path: Path) -> None:
    import databases

    database = databases.Database(f"sqlite:///{tmp_path / 'app.db'}")
    await database.connect()
    ledger = Ledger(database=database)
    await ledger.migrate()
    await ledger.open_account("u")
    await ledger.grant("u", "2")
    assert (await ledger.debit("u", "0.5")).available == pytest.approx(1.5)
    # the app's own tables live beside the ledger's in the same file
    await database.execute("CREATE TABLE app_users (id TEXT)")
    await ledger.close()
    # the app connected it, so the app still has it after the ledger is closed
    assert database.is_connected
    await database.execute("INSERT INTO app_users (id) VALUES ('u')")
    assert await database.fetch_val("SELECT count(*) FROM app_users") == 1
    await database.disconnect()


async def test_a_databases_database_the_ledger_connected_is_disconnected(tmp_path: Path) -> None:
    import databases

    database = databases.Database(f"sqlite:///{tmp_path / 'app.db'}")
    ledger = Ledger(database=database)
    await ledger.migrate()
    assert database.is_connected
    await ledger.close()
    assert not database.is_connected


async def test_unsupported_urls_say_what_to_do() -> None:
    with pytest.raises(ConfigurationError, match="sqlite:///"):
        Ledger("mysql://root@localhost/x")
    import databases

    with pytest.raises(ConfigurationError, match="URL"):
        Ledger(database=databases.Database("postgresql://postgres@127.0.0.1/test"))


async def test_a_debit_updates_its_grant_and_account_in_place_on_postgres(pg_url: str) -> None:
    """Debits are HOT updates on PostgreSQL: no index involves a column a debit changes, so a
    busy account neither adds index entries nor leaves row versions for lookups to step over
    (an index whose predicate named ``remaining`` once made every grant update a full one)."""
    import time

    import asyncpg

    async with Ledger(pg_url) as ledger:
        await ledger.migrate()
        await ledger.open_account("busy")
        await ledger.grant("busy", "5", key="g")
    conn = await asyncpg.connect(pg_url)
    try:
        now = int(time.time() * 1e6) + 1_000_000
        async with conn.transaction():
            for i in range(25):
                row = await conn.fetchrow(
                    "SELECT * FROM credit_debit($1, $2, $3, $4, $5, $6, $7, $8)",
                    "busy", 1000, now + i, f"k{i}", "test", None, None, "{}",
                )  # fmt: skip
                assert row is not None and row["o_status"] == "ok"
            stats = {
                table: await conn.fetchrow(
                    "SELECT pg_stat_get_xact_tuples_updated(c) AS updated,"
                    " pg_stat_get_xact_tuples_hot_updated(c) AS hot"
                    " FROM (SELECT $1::regclass AS c) t",
                    table,
                )
                for table in ("credit_grants", "credit_accounts")
            }
    finally:
        await conn.close()
    for table, row in stats.items():
        assert row is not None and row["updated"] == 25, table
        assert row["hot"] == 25, f"{table}: {row['hot']} of 25 updates in place"
    async with Ledger(pg_url) as ledger:
        assert (await ledger.balance("busy")).available_micros == 5_000_000 - 25_000
        assert (await ledger.verify()).ok
