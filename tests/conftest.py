"""Fixtures shared by every test: real PostgreSQL and Redis, the embedded default beside them.

``ledger_url`` is parametrised over both backends so the same assertions run on each. Each
PostgreSQL test gets a schema of its own inside a database made for this test process; each
Redis test a key prefix of its own. Everything is removed afterwards. Without the services the
tests skip with one loud line, except under CI=true, where they fail.

The suite runs in parallel (``make test``: pytest-xdist, ``-n auto``): several worker
processes, each its own pytest session, share the machine, the PostgreSQL server and the Redis
server. A test is safe there when it keeps to these rules:

1. **Session fixtures run once per worker**, not once per run (``pg_database`` makes one
   database per worker). Nothing may count on being the only session.
2. **PostgreSQL**: use ``pg_url`` (a schema of the test's own) or ``ledger_url``; never a fixed
   database or schema name, never DDL outside that schema, and ``pg_terminate_backend`` only on
   connections the test opened itself.
3. **Redis**: every key under ``redis_client.test_prefix`` (pass it as ``key_prefix``); never
   ``FLUSHALL``/``FLUSHDB``, ``CONFIG SET``, ``SCRIPT FLUSH`` or ``CLIENT PAUSE`` on the shared
   server. A test that stops, kills, pauses or reconfigures a server starts a private one
   (``tests/_redis_servers.py``, ``chaos.services``) on a free port.
4. **Ports**: bind port 0 (``free_port()`` in ``_middleware_helpers``); never a fixed port (a
   closed one for "unreachable" is port 1).
5. **Files**: only under ``tmp_path`` / ``tmp_path_factory`` (per worker); never the working
   directory, the checkout or a fixed ``/tmp`` name (``monkeypatch.chdir(tmp_path)`` for a
   command that writes where it runs).
6. **Process state** (environment, logging, task factories, ``sys.modules``, module globals):
   change it through ``monkeypatch`` or restore it in ``finally``: the next test in the worker
   may be any test.
7. **Time**: never assert speed. Workers share two cores with the servers, so a step can take
   seconds: wait on events or poll to a generous deadline, never sleep the expected time.
8. A test passes alone, in any order and beside any other: ``-p no:xdist`` (or ``-n 0``) runs
   the suite serially to tell a parallel-only failure from a plain one. Mark a test that takes
   more than about 5 s ``slow``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from credit_middleware import Ledger

PG_BASE = os.environ.get("CREDIT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CREDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_warned: set[str] = set()


def _unavailable(service: str, exc: BaseException) -> None:
    msg = f"{service} is unreachable ({exc!r}): its tests cannot run"
    if IN_CI:
        pytest.fail(msg + " and CI=true requires them")
    if service not in _warned:
        _warned.add(service)
        print(f"\n*** SKIPPING {service.upper()} TESTS: {msg} ***", file=sys.stderr)
    pytest.skip(msg)


def _with_db(url: str, db: str) -> str:
    base, _, query = url.partition("?")
    head = base.rsplit("/", 1)[0]
    return f"{head}/{db}" + (f"?{query}" if query else "")


class Clock:
    """A clock the tests move by hand (seconds since the epoch)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    """A database of this run's own; dropped at the end. None when PostgreSQL is down."""
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        yield None
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")  # gw0, gw1, ... under xdist
    name = f"cm_test_{worker}_{os.getpid()}_{secrets.token_hex(3)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_BASE, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        _warned.add("pg-error:" + repr(exc))
        yield None
        return
    try:
        yield _with_db(PG_BASE, name)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(pg_database: str | None) -> Iterator[str]:
    """A fresh schema inside the run's database, as a URL whose search_path points at it."""
    if pg_database is None:
        _unavailable("postgresql", ConnectionError(PG_BASE))
        raise AssertionError  # unreachable
    import asyncpg

    schema = f"s_{secrets.token_hex(4)}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(pg_database, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in pg_database else "?"
    try:
        yield f"{pg_database}{sep}search_path={schema}"
    finally:
        asyncio.run(run(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'credits.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """The same test on the embedded default and on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger_clock(clock: Clock) -> Callable[[], float]:
    """The ``ledger`` fixture's clock: the hand-moved one. A module whose code under test
    reads the wall clock too (tokens, rate-limit windows) overrides this with ``time.time``."""
    return clock


@pytest.fixture
async def ledger(ledger_url: str, ledger_clock: Callable[[], float]) -> AsyncIterator[Ledger]:
    """A migrated ledger on each backend; verified clean at the end."""
    led = Ledger(ledger_url, clock=ledger_clock)
    await led.migrate()
    try:
        yield led
        report = await led.verify()
        assert report.ok, report.discrepancies
    finally:
        await led.close()


@pytest.fixture
async def redis_client() -> AsyncIterator[Any]:
    """A redis.asyncio client; removes its test keys (prefix in ``client.test_prefix``)."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.ping()
    except (OSError, redis.RedisError) as exc:
        await client.aclose()
        _unavailable("redis", exc)
    prefix = f"cmtest:{secrets.token_hex(4)}:"
    client.test_prefix = prefix  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
