"""``verify`` in bounded slices: the same answer whatever the slice size (a large account read
in pages), tampering found in any page, an interrupted run resumed, an incremental run over
the accounts changed since the last clean one, and the CLI's timeout, progress and modes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import pytest

from credit_middleware import Ledger
from credit_middleware.cli import main
from credit_middleware.errors import LedgerError

if TYPE_CHECKING:
    from credit_middleware.ledger._audit import VerifyProgress

pytestmark = pytest.mark.anyio


async def _fill(ledger: Ledger) -> None:
    """Ten small accounts and a large one (grants, debits, holds, captures, releases, refunds),
    so that a budget of 10 entries puts the large one in pages and groups the small ones."""
    for i in range(10):
        aid = f"a{i}"
        await ledger.provision(aid, tier="trial", trial_amount="5", layer="signup")
        await ledger.debit(aid, "0.5", key=f"d-{aid}", route="/v1/chat")
    await ledger.open_account("big", tier="pro")
    await ledger.grant("big", "100", key="g1")
    for i in range(30):
        d = await ledger.debit("big", "0.25", key=f"b{i}", route="/v1/chat")
        if i % 7 == 0:
            await ledger.refund("big", "0.1", entry_id=d.entry.entry_id, key=f"r{i}")
        if i % 9 == 0:
            h = await ledger.hold("big", "1", key=f"h{i}")
            assert h.hold is not None
            if i % 2:
                await ledger.capture(h.hold.hold_id, "0.5")
            else:
                await ledger.release(h.hold.hold_id)
    await ledger.hold("big", "2", key="open-hold")
    await ledger.grant("big", "5", source="promo", key="g2")


async def _counts(ledger: Ledger) -> tuple[int, int]:
    async def count(conn: Any) -> tuple[int, int]:
        a = await conn.fetchval("SELECT COUNT(*) FROM credit_accounts")
        e = await conn.fetchval("SELECT COUNT(*) FROM credit_entries")
        return int(a), int(e)

    return await ledger._x.run(count, write=False)


async def test_every_slice_size_gives_the_same_clean_answer(ledger: Ledger) -> None:
    await _fill(ledger)
    expected = await _counts(ledger)
    seen: list[VerifyProgress] = []
    for budget in (10, 25, 1_000_000):
        report = await ledger.verify(budget=budget, progress=seen.append)
        assert report.ok, report.discrepancies
        assert (report.accounts, report.entries) == expected
    assert seen and seen[-1].accounts == expected[0] and seen[-1].discrepancies == 0
    with pytest.raises(ValueError, match="budget"):
        await ledger.verify(budget=1)


async def test_tampering_is_found_in_any_page_of_a_large_account(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)  # not the fixture's: an appended bad entry cannot be undone
    await ledger.migrate()
    try:
        await _fill(ledger)

        async def tamper(conn: Any) -> None:
            await conn.execute(
                "UPDATE credit_accounts SET balance = balance + 7 WHERE account_id = 'a3'"
            )
            # an entry whose balance_after does not follow, with no postings behind it
            await conn.execute(
                "INSERT INTO credit_entries (account_id, kind, amount, delta, balance_after,"
                " held_after, created_at) VALUES ('big', 'adjust', 1, 1, 5, 0, 1)"
            )

        await ledger._x.run(tamper)
        for budget in (10, 1_000_000):
            report = await ledger.verify(budget=budget)
            found = {
                (d.invariant, d.account_id, d.detail.split(" ")[0]) for d in report.discrepancies
            }
            details = " | ".join(d.detail for d in report.discrepancies)
            assert (1, "a3", "balance") in found, details
            assert "entries sum to" in details and "the entries before it sum to" in details
            assert "its postings move" in details
            assert {d.account_id for d in report.discrepancies} == {"a3", "big"}
    finally:
        await ledger.close()


class _Stop(Exception):
    pass


async def test_an_interrupted_verify_resumes_where_it_stopped(ledger: Ledger) -> None:
    await _fill(ledger)
    total, entries = await _counts(ledger)
    calls = 0

    def stop_soon(p: VerifyProgress) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise _Stop

    with pytest.raises(_Stop):
        await ledger.verify(checkpoint=True, budget=10, progress=stop_soon)
    resumed: list[VerifyProgress] = []
    report = await ledger.verify(resume=True, budget=10, progress=resumed.append)
    assert report.ok and report.scope == "resumed"
    assert (report.accounts, report.entries) == (total, entries)  # the whole run's figures
    assert resumed[0].accounts > 1  # it went on from the checkpoint, not from the start
    again = await ledger.verify(resume=True)  # nothing left to resume: a full run
    assert again.scope == "full" and again.ok


async def test_incremental_verify_checks_the_accounts_changed_since_the_last_clean_run(
    ledger: Ledger,
) -> None:
    await _fill(ledger)
    with pytest.raises(LedgerError, match="full `verify` first"):
        await ledger.verify(incremental=True)
    assert (await ledger.verify(checkpoint=True)).ok
    nothing = await ledger.verify(incremental=True)
    assert nothing.ok and (nothing.accounts, nothing.entries) == (0, 0)
    await ledger.debit("a1", "0.1")
    await ledger.debit("big", "0.1")
    changed = await ledger.verify(incremental=True, budget=10)
    assert changed.ok and changed.scope == "incremental" and changed.accounts == 2
    assert changed.to_json()["scope"] == "incremental"
    # an account found broken is checked again by every incremental run until it is clean
    await ledger.debit("a2", "0.1")

    async def shift(conn: Any, by: int) -> None:
        await conn.execute(
            f"UPDATE credit_accounts SET balance = balance + {by} WHERE account_id = 'a2'"
        )

    await ledger._x.run(lambda conn: shift(conn, 7))
    try:
        broken = await ledger.verify(incremental=True)
        assert not broken.ok and {d.account_id for d in broken.discrepancies} == {"a2"}
        still = await ledger.verify(incremental=True)
        assert not still.ok  # no clean checkpoint was recorded past it
    finally:
        await ledger._x.run(lambda conn: shift(conn, -7))
    assert (await ledger.verify(incremental=True)).ok


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_verify_modes_and_progress(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ("--database-url", sqlite_url)
    assert _cli(capsys, "migrate", *db)[0] == 0
    assert _cli(capsys, "grant", "alice", "10", "--create", *db)[0] == 0
    code, out, err = _cli(capsys, "verify", "--progress", *db)
    assert code == 0 and "ok: 1 accounts" in out
    assert "verify: 1 of ~1 accounts (100%), 1 entries, 0 discrepancies" in err
    code, out, _ = _cli(capsys, "verify", "--incremental", "--json", *db)
    assert code == 0 and json.loads(out) == {
        "ok": True,
        "accounts": 0,
        "entries": 0,
        "discrepancies": [],
        "scope": "incremental",
    }
    code, out, _ = _cli(capsys, "verify", "--resume", *db)
    assert code == 0 and "ok: 1 accounts, 1 entries" in out
    with pytest.raises(SystemExit):  # one mode at a time
        main(["verify", "--incremental", "--resume", *db])


def test_cli_timeouts_are_checked(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["verify", "--timeout", "0", "--database-url", sqlite_url])
    with pytest.raises(SystemExit):
        main(["verify", "--timeout", "soon", "--database-url", sqlite_url])
    _cli(capsys, "migrate", "--database-url", sqlite_url)
    monkeypatch.setenv("CREDIT_TIMEOUT", "soon")
    code, _, err = _cli(capsys, "verify", "--database-url", sqlite_url)
    assert code == 2 and "CREDIT_TIMEOUT='soon' cannot be used" in err


async def _cli_process(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "credit_middleware",
        *args,
        "--database-url",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode()


@pytest.mark.slow
async def test_the_cli_honours_timeout_and_credit_timeout(pg_url: str) -> None:
    """A verify that must wait on a lock: ``--timeout 0.5`` gives up with a clear error;
    ``CREDIT_TIMEOUT=60`` waits past the default 5 s and completes once the lock goes."""
    import asyncpg

    ledger = Ledger(pg_url)
    await ledger.migrate()
    await ledger.open_account("alice", tier="t")
    await ledger.grant("alice", "3", key="g")
    await ledger.close()
    blocker = await asyncpg.connect(pg_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE credit_accounts IN ACCESS EXCLUSIVE MODE")
        code, out = await _cli_process(pg_url, "verify", "--timeout", "0.5")
        assert code == 2 and "error:" in out and "Timeout" in out, out
        code, out = await _cli_process(pg_url, "verify", env={"CREDIT_TIMEOUT": "0.5"})
        assert code == 2 and "Timeout" in out, out
        waiting = asyncio.create_task(_cli_process(pg_url, "verify", env={"CREDIT_TIMEOUT": "60"}))
        # hold the lock past the default 5 s while the verify waits for it
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            waiters = await blocker.fetchval(
                "SELECT COUNT(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE c.relname = 'credit_accounts' AND NOT l.granted"
            )
            if waiters or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(6)
        await tx.rollback()
        code, out = await waiting
        assert code == 0 and "ok: 1 accounts" in out, out
    finally:
        await blocker.close()
