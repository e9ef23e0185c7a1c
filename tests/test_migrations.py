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
