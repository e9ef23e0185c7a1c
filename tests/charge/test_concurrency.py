"""Many tasks, and several processes, on one account: one trial grant, no overdraft."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from credit_middleware import (
    Identity,
    InsufficientCredits,
    Ledger,
    LocalLocks,
    Provisioner,
    RedisLocks,
    TrialPolicy,
)

pytestmark = pytest.mark.anyio
WORKER = Path(__file__).parents[1] / "_worker.py"


def run_processes(n: int, *args: str) -> list[dict[str, Any]]:
    start_at = str(time.time() + 2.0)  # every process starts its tasks at the same instant
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), args[0], args[1], args[2], args[3], start_at, *args[4:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


async def test_200_concurrent_ensures_grant_once(ledger: Ledger) -> None:
    # separate provisioners: no shared lock or cache, only the database stands in the way
    provs = [Provisioner(ledger) for _ in range(200)]
    results = await asyncio.gather(*(p.ensure_account("newbie", layer="request") for p in provs))
    assert sum(r.created for r in results) == 1
    assert sum(r.granted for r in results) == 1
    entries = await ledger.history("newbie")
    assert [e.kind for e in entries] == ["grant"]
    assert (await ledger.balance("newbie")).available == Decimal("5.0")


async def test_200_concurrent_ensures_through_one_lock(ledger: Ledger) -> None:
    prov = Provisioner(ledger, locks=LocalLocks())
    results = await asyncio.gather(
        *(prov.ensure_account("herd", layer="request") for _ in range(200))
    )
    assert sum(r.granted for r in results) == 1
    assert len(await ledger.history("herd")) == 1


async def test_500_debits_against_300_exactly_300_win(ledger: Ledger) -> None:
    await ledger.open_account("acct")
    await ledger.grant("acct", "3")  # 300 debits of 0.01

    async def one() -> bool:
        try:
            await ledger.debit("acct", "0.01")
            return True
        except InsufficientCredits:
            return False

    results = await asyncio.gather(*(one() for _ in range(500)))
    assert results.count(True) == 300
    assert results.count(False) == 200
    assert (await ledger.balance("acct")).available == 0
    assert (await ledger.get_account("acct")).balance_micros == 0  # type: ignore[union-attr]


@pytest.mark.slow
async def test_ensure_from_several_processes_grants_once(pg_url: str) -> None:
    async with Ledger(pg_url) as ledger:
        await ledger.migrate()
    results = await asyncio.to_thread(run_processes, 4, "ensure", pg_url, "multi", "50")
    assert sum(r["created"] for r in results) == 1
    assert sum(r["granted"] for r in results) == 1
    async with Ledger(pg_url) as ledger:
        assert [e.kind for e in await ledger.history("multi")] == ["grant"]
        assert (await ledger.verify()).ok


@pytest.mark.slow
async def test_ensure_from_processes_with_redis_lock(pg_url: str, redis_client: Any) -> None:
    async with Ledger(pg_url) as ledger:
        await ledger.migrate()
    redis_url = "redis://127.0.0.1:6379/0"
    prefix = redis_client.test_prefix + "lock:"
    results = await asyncio.to_thread(
        run_processes, 4, "ensure", pg_url, "multi-r", "50", redis_url, prefix
    )
    assert sum(r["granted"] for r in results) == 1
    async with Ledger(pg_url) as ledger:
        assert len(await ledger.history("multi-r")) == 1
        assert (await ledger.verify()).ok
    assert [k async for k in redis_client.scan_iter(match=prefix + "*")] == []  # released


@pytest.mark.slow
async def test_a_late_trial_from_several_processes_is_granted_once(
    pg_url: str, redis_client: Any
) -> None:
    """A user denied for an unverified e-mail comes back verified, in 4 processes at once
    (half of them without the Redis lock): one late trial grant."""
    async with Ledger(pg_url) as ledger:
        await ledger.migrate()
        denied = await Provisioner(ledger, TrialPolicy(require_verified_email=True)).ensure_account(
            Identity("late", email_verified=False), layer="request"
        )
        assert not denied.granted
    redis_url = "redis://127.0.0.1:6379/0"
    prefix = redis_client.test_prefix + "lock:"
    locked, unlocked = await asyncio.gather(
        asyncio.to_thread(run_processes, 2, "reconsider", pg_url, "late", "40", redis_url, prefix),
        asyncio.to_thread(run_processes, 2, "reconsider", pg_url, "late", "40"),
    )
    results = locked + unlocked
    assert sum(r["created"] for r in results) == 0
    assert sum(r["granted"] for r in results) == 1
    async with Ledger(pg_url) as ledger:
        assert [e.kind for e in await ledger.history("late")] == ["grant"]
        assert (await ledger.balance("late")).available == 5
        assert (await ledger.verify()).ok


@pytest.mark.slow
async def test_debits_from_several_processes_never_overdraw(pg_url: str) -> None:
    async with Ledger(pg_url) as ledger:
        await ledger.migrate()
        await ledger.open_account("shared")
        await ledger.grant("shared", "3")
    results = await asyncio.to_thread(run_processes, 4, "debit", pg_url, "shared", "125")
    assert sum(r["ok"] for r in results) == 300
    assert sum(r["insufficient"] for r in results) == 200
    async with Ledger(pg_url) as ledger:
        assert (await ledger.balance("shared")).available == 0
        assert (await ledger.verify()).ok


async def test_sqlite_file_shared_by_two_processes(sqlite_url: str) -> None:
    """The CLI next to a running app: two processes on one SQLite file stay correct."""
    async with Ledger(sqlite_url) as ledger:
        await ledger.migrate()
        await ledger.open_account("file")
        await ledger.grant("file", "1")  # 100 debits of 0.01
    results = await asyncio.to_thread(run_processes, 2, "debit", sqlite_url, "file", "80")
    assert sum(r["ok"] for r in results) == 100
    assert sum(r["insufficient"] for r in results) == 60
    async with Ledger(sqlite_url) as ledger:
        assert (await ledger.verify()).ok


async def test_redis_lock_excludes_and_expires(redis_client: Any) -> None:
    locks = RedisLocks(redis_client, prefix=redis_client.test_prefix, ttl=0.3, wait=0.1)
    async with locks.acquire("k") as first:
        assert first
        async with locks.acquire("k") as second:
            assert not second  # held by the first: bounded wait, then go on without it
    key = redis_client.test_prefix + "k"
    other = RedisLocks(redis_client, prefix=redis_client.test_prefix, ttl=5, wait=0.1)
    stolen_cm = other.acquire("k")
    async with locks.acquire("k") as again:
        assert again  # the first was released
        assert 0 < await redis_client.pttl(key) <= 300  # it would expire after our ttl...
        await redis_client.delete(key)  # ...as it does here: the lock is gone under us
        assert await stolen_cm.__aenter__() is True  # someone else takes it
        token = await redis_client.get(key)
    # leaving our block must not delete the other holder's lock (compare-and-delete)
    assert await redis_client.get(key) == token is not None
    await stolen_cm.__aexit__(None, None, None)
    assert await redis_client.get(key) is None


async def test_redis_lock_at_dead_port_degrades_to_no_lock() -> None:
    import redis.asyncio as redis

    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    locks = RedisLocks(client, wait=0.1)
    async with locks.acquire("k") as got:
        assert got is False
    await client.aclose()


@pytest.mark.parametrize("fast_path", [True, False], ids=["server-side", "generic"])
async def test_both_provisioning_paths_grant_once_on_postgres(pg_url: str, fast_path: bool) -> None:
    async with Ledger(pg_url, fast_path=fast_path) as ledger:
        await ledger.migrate()
        results = await asyncio.gather(
            *(Provisioner(ledger).ensure_account("both", layer="request") for _ in range(100))
        )
        assert sum(r.created for r in results) == 1
        assert sum(r.granted for r in results) == 1
        bal = await ledger.balance("both")
        assert bal.available == Decimal("5.0")
        assert bal.grants[0].layer == "request"
        assert bal.grants[0].expires_at is not None
        account = await ledger.get_account("both")
        assert account is not None
        assert account.metadata["provisioned_by"] == "request"
        await ledger.debit("both", "0.001")  # the trial is spendable at once
        assert (await ledger.verify()).ok
