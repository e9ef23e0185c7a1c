"""The report's rollups, kept up to date by a job with an exact watermark.

Entries are append-only, so what a report counts can be added up once, as entries arrive, into
a few rows per day (``credit_rollup_days``: entries per kind and route; ``credit_rollup_grants``:
grants per source; ``credit_rollup_usage``: each account's calls, charges and refunds per day
and route) and per account (``_facts``). A report then reads O(days x dimensions) rows, not
O(entries).

The job (``refresh``) runs outside the debits' transactions: from the app's lifespan on a
schedule (``Credits(maintenance_interval=...)``), and before a report, a dashboard view or a
usage page, which so always see every entry committed before they asked. It keeps a
watermark of the entries and accounts it has rolled up and only ever moves it to a fence
(``_fence``): ids commit out of order, and a watermark past an id still being written would
skip that entry for good. Each batch (at most ``BATCH`` entries and accounts) is one
transaction that adds the batch to the rollups and moves the watermark, so a batch is counted
exactly once, and two refreshes at once (two processes) take turns on the watermark's row.
A refresh with nothing new to do takes no lock at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._bulk import in_set, set_arg, upsert
from ._executor import Conn, Executor
from ._facts import DAY_US, apply_changes, derive, load_state
from ._fence import fence
from ._sums import split

__all__ = ["BATCH", "DAY_US", "refresh"]

BATCH = 2000  # entries (and accounts) per transaction

_SEQ = {"postgresql": "rollup_seq", "sqlite": "rowid"}
_STATE = "SELECT entry_mark, account_mark, backfill FROM credit_rollup_state WHERE name = 'rollup'"
_ENTRIES = (
    "SELECT e.entry_id, e.account_id, e.kind, e.amount, e.delta, e.route, e.grant_id,"
    " e.created_at, c.entry_id AS ref_id, c.route AS ref_route FROM credit_entries e"
    " LEFT JOIN credit_entries c ON c.entry_id = e.ref_entry_id"
    " WHERE e.entry_id > $1 AND e.entry_id <= $2 ORDER BY e.entry_id LIMIT $3"
)
_DAYS = (
    ("day", "bigint"),
    ("kind", "text"),
    ("route", "text"),
    ("linked", "smallint"),
    ("n", "bigint"),
    ("amount_hi", "bigint"),
    ("amount_lo", "bigint"),
    ("out_hi", "bigint"),
    ("out_lo", "bigint"),
)
_GRANTS = (
    ("day", "bigint"),
    ("source", "text"),
    ("n", "bigint"),
    ("amount_hi", "bigint"),
    ("amount_lo", "bigint"),
)
_USAGE = (
    ("account_id", "text"),
    ("day", "bigint"),
    ("route", "text"),
    ("calls", "bigint"),
    ("charged_hi", "bigint"),
    ("charged_lo", "bigint"),
    ("refunded_hi", "bigint"),
    ("refunded_lo", "bigint"),
)


@dataclass(slots=True)
class _Fold:
    """One batch of entries, added up."""

    days: dict[tuple[int, str, str, int], list[int]] = field(default_factory=dict)
    usage: dict[tuple[str, int, str], list[int]] = field(default_factory=dict)
    consumed: dict[str, int] = field(default_factory=dict)
    expired: dict[str, set[int]] = field(default_factory=dict)
    created: list[int] = field(default_factory=list)

    def add(self, e: Any) -> None:
        aid, kind, amount = e["account_id"], e["kind"], int(e["amount"])
        day = int(e["created_at"]) // DAY_US
        if kind == "refund":  # what a refund gives back counts on the route it refunds
            linked = e["ref_id"] is not None
            route = (e["ref_route"] or "") if linked else ""
        else:
            linked, route = True, e["route"] or ""
        cell = self.days.setdefault((day, kind, route, int(linked)), [0, 0, 0])
        cell[0] += 1
        cell[1] += amount
        if int(e["delta"]) < 0:
            cell[2] += amount
        if kind in ("debit", "capture"):
            use = self.usage.setdefault((aid, day, route), [0, 0, 0])
            use[0] += 1
            use[1] += amount
            self.consumed[aid] = self.consumed.get(aid, 0) + amount
        elif kind == "refund" and linked:
            self.usage.setdefault((aid, day, route), [0, 0, 0])[2] += amount
        if kind == "expire" and e["grant_id"] is not None:
            self.expired.setdefault(aid, set()).add(int(e["grant_id"]))
        if int(e["delta"]) > 0 and e["grant_id"] is not None:  # the entry that made a grant
            self.created.append(int(e["grant_id"]))


async def refresh(executor: Executor, now_us: int, *, patience: float | None = None) -> int:
    """Roll up every entry and account committed before now; returns how many entries.
    Raises ``BackendUnavailable`` when a writer keeps the fence away for ``patience`` s."""
    todo = await executor.run(_pending, write=False)
    if not todo:
        return 0
    entries = await fence(executor, "credit_entries", patience=patience)
    accounts = await fence(executor, "credit_accounts", patience=patience)
    done = 0
    while True:

        async def batch(conn: Conn) -> tuple[int, bool]:
            return await _batch(conn, now_us, entries, accounts)

        n, finished = await executor.run(batch)
        done += n
        if finished:
            return done


async def _pending(conn: Conn) -> bool:
    """Whether anything has been committed past the watermark (no lock needed to tell)."""
    state = await conn.fetchrow(_STATE)
    if state is None:
        return False
    seq = _SEQ[conn.dialect]
    top = await conn.fetchrow(
        "SELECT (SELECT COALESCE(MAX(entry_id), 0) FROM credit_entries) AS e,"
        f" (SELECT COALESCE(MAX({seq}), 0) FROM credit_accounts) AS a"
    )
    assert top is not None
    return (
        state["backfill"] is not None
        or int(top["e"]) > int(state["entry_mark"])
        or int(top["a"]) > int(state["account_mark"])
    )


async def _batch(conn: Conn, now: int, entry_fence: int, account_fence: int) -> tuple[int, bool]:
    lock = " FOR UPDATE" if conn.dialect == "postgresql" else ""
    state = await conn.fetchrow(_STATE + lock)  # refreshes in other processes wait here
    assert state is not None
    mark, account_mark = int(state["entry_mark"]), int(state["account_mark"])
    backfill: str | None = state["backfill"]
    entries: Sequence[Any] = []
    if mark < entry_fence:
        entries = await conn.fetch(_ENTRIES, mark, entry_fence, BATCH)
        mark = int(entries[-1]["entry_id"]) if len(entries) == BATCH else entry_fence
    found: list[str] = []
    if backfill is not None:  # PostgreSQL accounts from before migration 10, once, by id
        rows = await conn.fetch(
            "SELECT account_id FROM credit_accounts WHERE rollup_seq IS NULL"
            " AND account_id > $1 ORDER BY account_id LIMIT $2",
            backfill,
            BATCH,
        )
        found = [r["account_id"] for r in rows]
        backfill = found[-1] if len(found) == BATCH else None
    elif account_mark < account_fence:
        seq = _SEQ[conn.dialect]
        rows = await conn.fetch(
            f"SELECT account_id, {seq} AS seq FROM credit_accounts"
            f" WHERE {seq} > $1 AND {seq} <= $2 ORDER BY {seq} LIMIT $3",
            account_mark,
            account_fence,
            BATCH,
        )
        found = [r["account_id"] for r in rows]
        account_mark = int(rows[-1]["seq"]) if len(rows) == BATCH else account_fence
    fold = _Fold()
    for e in entries:
        fold.add(e)
    await _apply(conn, fold, sorted({e["account_id"] for e in entries} | set(found)))
    await conn.execute(
        "UPDATE credit_rollup_state SET entry_mark = $1, account_mark = $2, backfill = $3,"
        " updated_at = $4 WHERE name = 'rollup'",
        mark,
        account_mark,
        backfill,
        now,
    )
    finished = mark >= entry_fence and account_mark >= account_fence and backfill is None
    return len(entries), finished


async def _apply(conn: Conn, fold: _Fold, dirty: list[str]) -> None:
    await upsert(
        conn,
        "credit_rollup_days",
        _DAYS,
        ("day", "kind", "route", "linked"),
        [(*k, v[0], *split(v[1]), *split(v[2])) for k, v in fold.days.items()],
        add=("n", "amount_hi", "amount_lo", "out_hi", "out_lo"),
    )
    await upsert(
        conn,
        "credit_rollup_usage",
        _USAGE,
        ("account_id", "day", "route"),
        [(*k, v[0], *split(v[1]), *split(v[2])) for k, v in fold.usage.items()],
        add=("calls", "charged_hi", "charged_lo", "refunded_hi", "refunded_lo"),
    )
    if fold.created:
        grants = await conn.fetch(
            "SELECT source, amount, created_at FROM credit_grants"
            f" WHERE {in_set(conn.dialect, 'grant_id', type='bigint')}",
            set_arg(conn.dialect, fold.created),
        )
        by_day: dict[tuple[int, str], list[int]] = {}
        for g in grants:
            cell = by_day.setdefault((int(g["created_at"]) // DAY_US, g["source"]), [0, 0])
            cell[0] += 1
            cell[1] += int(g["amount"])
        await upsert(
            conn,
            "credit_rollup_grants",
            _GRANTS,
            ("day", "source"),
            [(*k, v[0], *split(v[1])) for k, v in by_day.items()],
            add=("n", "amount_hi", "amount_lo"),
        )
    if dirty:
        state = await load_state(conn, dirty)
        new = [
            derive(conn.dialect, state, aid, fold.expired.get(aid, ()), fold.consumed.get(aid))
            for aid in dirty
        ]
        await apply_changes(conn, state.old, new)
