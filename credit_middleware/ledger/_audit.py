"""``verify`` over a ledger of any size: bounded slices, progress, resume, incremental.

The walk takes accounts in id order and verifies them a slice at a time (``_verify``): as many
whole accounts as add up to about ``budget`` entries (at most 1,000 accounts), one read each,
so no statement reads more than some thousands of entries and none comes near a statement
timeout, and on SQLite the ledger's one thread serves debits between slices. An account with
more entries than that is read in pages of ``budget`` entries (its running sums carried from
page to page, its account-level checks with the last page, in the same snapshot); its entry
keys are walked in key order for duplicates.

With ``checkpoint`` (the CLI's way) a run records where it is (``credit_verify_checkpoints``):
``resume`` continues an interrupted run from the last account it finished, and a run that ends
clean records the fence of entries it started from (``_fence``): ``incremental`` then verifies
only the accounts with an entry after that fence, whole. Entries are append-only (triggers) and
every change of money is an entry, so an account without a new entry has not changed since it
was found clean.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import LedgerError
from ._bulk import in_set, set_arg, snapshot
from ._checkpoints import Checkpoint, Checkpoints
from ._executor import Conn, Executor
from ._fence import fence
from ._verify import (
    LIMIT,
    Carry,
    SliceResult,
    account_checks,
    entry_checks,
    key_walk,
)
from .models import VerifyReport

__all__ = ["BUDGET", "Audit", "VerifyProgress"]

BUDGET = 20_000  # entries per slice, and per page of a large account
MAX_ACCOUNTS = 1_000  # accounts per slice
_CHANGED_PAGE = 50_000  # entry ids per look for changed accounts

_PLAN = (
    "SELECT a.account_id, (SELECT COUNT(*) FROM (SELECT 1 FROM credit_entries e"
    " WHERE e.account_id = a.account_id LIMIT $3) AS x) AS n"
    " FROM credit_accounts a WHERE a.account_id > $1 ORDER BY a.account_id LIMIT $2"
)
_PLAN_SET = (
    "SELECT a.account_id, (SELECT COUNT(*) FROM (SELECT 1 FROM credit_entries e"
    " WHERE e.account_id = a.account_id LIMIT $2) AS x) AS n"
    " FROM credit_accounts a WHERE {where} ORDER BY a.account_id"
)
_ESTIMATE = {
    "postgresql": "SELECT GREATEST(reltuples, 0)::bigint FROM pg_class"
    " WHERE oid = 'credit_accounts'::regclass",
    "sqlite": "SELECT COALESCE(MAX(rowid), 0) FROM credit_accounts",
}


@dataclass(frozen=True, slots=True)
class VerifyProgress:
    """How far a walk is: accounts verified of about ``total``, entries read, problems found."""

    accounts: int
    total: int
    entries: int
    discrepancies: int


Progress = Callable[[VerifyProgress], None]


class Audit:
    """One verify run over ``executor``'s ledger (see the module docstring)."""

    def __init__(
        self,
        executor: Executor,
        now_us: Callable[[], int],
        *,
        budget: int = BUDGET,
        progress: Progress | None = None,
        checkpoint: bool = False,
    ) -> None:
        if not isinstance(budget, int) or not 10 <= budget <= 1_000_000:
            raise ValueError("budget must be between 10 and 1,000,000 entries")
        self._x = executor
        self._points = Checkpoints(executor, now_us)
        self._budget = budget
        self._progress = progress
        self._checkpoint = checkpoint
        self._out = SliceResult()
        self._accounts = 0
        self._total = 0
        self._cursor = ""
        self._mark = 0

    # ------------------------------------------------------------------ modes

    async def full(self, *, resume: bool = False) -> VerifyReport:
        """Every account, from the first (or, with ``resume``, after the last one an
        interrupted checkpointed run finished)."""
        scope = "full"
        if self._checkpoint:
            run = await self._points.load("run") if resume else None
            if run is not None:
                scope = "resumed"
                self._mark, self._cursor = run.mark, run.cursor
                self._accounts, self._out.entries = run.accounts, run.entries
                self._out.found = list(run.found)
            else:
                self._mark = await fence(self._x, "credit_entries")
        self._total = await self._x.run(self._estimate, write=False)
        await self._walk(self._all_after())
        return await self._finish(scope)

    async def incremental(self) -> VerifyReport:
        """Only the accounts with an entry after the last clean run's fence."""
        clean = await self._points.load("clean")
        if clean is None:
            raise LedgerError("no clean verify recorded yet: run a full `verify` first")
        since = clean.mark
        self._mark = await fence(self._x, "credit_entries")
        changed = await self._changed(since, self._mark)
        self._total = len(changed)
        await self._walk(self._these(changed))
        return await self._finish("incremental")

    # ------------------------------------------------------------------ the walk

    async def _estimate(self, conn: Conn) -> int:
        return int(await conn.fetchval(_ESTIMATE[conn.dialect]) or 0)

    async def _all_after(self) -> AsyncIterator[list[Any]]:
        after = self._cursor
        while True:

            async def plan(conn: Conn, after: str = after) -> list[Any]:
                return await conn.fetch(_PLAN, after, MAX_ACCOUNTS, self._budget + 1)

            rows = await self._x.run(plan, write=False)
            if not rows:
                return
            yield rows
            after = rows[-1]["account_id"]

    async def _these(self, ids: Sequence[str]) -> AsyncIterator[list[Any]]:
        for i in range(0, len(ids), MAX_ACCOUNTS):
            chunk = ids[i : i + MAX_ACCOUNTS]

            async def plan(conn: Conn, chunk: Sequence[str] = chunk) -> list[Any]:
                sql = _PLAN_SET.format(where=in_set(conn.dialect, "a.account_id"))
                return await conn.fetch(sql, set_arg(conn.dialect, chunk), self._budget + 1)

            yield await self._x.run(plan, write=False)

    async def _changed(self, since: int, upto: int) -> list[str]:
        found: set[str] = set()
        lo = since
        while lo < upto:
            hi = min(upto, lo + _CHANGED_PAGE)

            async def look(conn: Conn, lo: int = lo, hi: int = hi) -> list[Any]:
                return await conn.fetch(
                    "SELECT DISTINCT account_id FROM credit_entries"
                    " WHERE entry_id > $1 AND entry_id <= $2",
                    lo,
                    hi,
                )

            rows = await self._x.run(look, write=False)
            found.update(r["account_id"] for r in rows)
            lo = hi
        return sorted(found)

    async def _walk(self, plans: AsyncIterator[list[Any]]) -> None:
        group: list[str] = []
        size = 0
        async for rows in plans:
            for r in rows:
                aid, n = r["account_id"], int(r["n"])
                if n > self._budget:
                    await self._slice(group)
                    group, size = [], 0
                    await self._large(aid)
                    continue
                if group and (size + n > self._budget or len(group) >= MAX_ACCOUNTS):
                    await self._slice(group)
                    group, size = [], 0
                group.append(aid)
                size += n
        await self._slice(group)

    async def _slice(self, accounts: list[str]) -> None:
        if not accounts:
            return

        async def check(conn: Conn) -> int:
            carries: dict[str, Carry] = {}
            async with snapshot(conn, by_index=True):
                await entry_checks(conn, self._out, carries, accounts=accounts)
                return await account_checks(conn, self._out, accounts, carries)

        self._accounts += await self._x.run(check, write=False)
        await self._done_upto(accounts[-1])

    async def _large(self, account_id: str) -> None:
        carries: dict[str, Carry] = {}
        after, existing = 0, 0
        while True:

            async def page(conn: Conn, lo: int = after) -> tuple[int, bool, int]:
                async with snapshot(conn, by_index=True):
                    hi = await conn.fetchval(
                        "SELECT entry_id FROM credit_entries WHERE account_id = $1"
                        " AND entry_id > $2 ORDER BY entry_id LIMIT 1 OFFSET $3",
                        account_id,
                        lo,
                        self._budget - 1,
                    )
                    last = hi is None
                    upper = 2**62 if hi is None else int(hi)
                    await entry_checks(conn, self._out, carries, page=(account_id, lo, upper))
                    if not last:
                        return upper, False, 0
                    return upper, True, await account_checks(conn, self._out, [account_id], carries)

            after, last, existing = await self._x.run(page, write=False)
            self._report()
            if last:
                break
        await self._keys(account_id)
        self._accounts += existing
        await self._done_upto(account_id)

    async def _keys(self, account_id: str) -> None:
        previous: tuple[str, int] | None = None
        repeats = 0
        while True:

            async def walk(conn: Conn, after: tuple[str, int] | None = previous) -> list[Any]:
                return await key_walk(conn, account_id, after, self._budget)

            rows = await self._x.run(walk, write=False)
            for r in rows:
                key = r["idempotency_key"]
                if previous is not None and previous[0] == key:
                    repeats += 1
                else:
                    self._repeated(account_id, previous, repeats)
                    repeats = 1
                previous = (key, int(r["entry_id"]))
            if len(rows) < self._budget:
                self._repeated(account_id, previous, repeats)
                return

    def _repeated(self, account_id: str, key: tuple[str, int] | None, times: int) -> None:
        if key is not None and times > 1:
            self._out.add(4, account_id, f"idempotency key {key[0]!r} applied {times} times")

    async def _done_upto(self, account_id: str) -> None:
        self._cursor = account_id
        self._report()
        if self._checkpoint:  # one small write per slice: a run stopped anywhere resumes
            await self._points.save("run", self._point())

    def _report(self) -> None:
        if self._progress is not None:
            total = max(self._total, self._accounts)
            found = len(self._out.found)
            self._progress(VerifyProgress(self._accounts, total, self._out.entries, found))

    # ------------------------------------------------------------------ checkpoints

    def _point(self) -> Checkpoint:
        found = tuple(self._out.found[:LIMIT])
        return Checkpoint(self._mark, self._cursor, self._accounts, self._out.entries, found)

    async def _finish(self, scope: str) -> VerifyReport:
        point = self._point()
        if self._checkpoint:
            await self._points.finish(point)
        return VerifyReport(point.accounts, point.entries, point.found, scope=scope)
