"""``verify``'s checks, on one slice of the ledger: a set of accounts whole, or one page of a
large account's entries. Each slice is a handful of statements bounded by the slice's size (the
walk in ``_audit`` keeps it to some thousands of entries), read in one snapshot.

The four invariants of DESIGN.md, per account: its balance and held amount equal the sums of
its entries, of its grants' remainders and of its active holds; each entry's running balance
is what the entries before it add up to, and its postings move what it moves; each grant's
remainder is within [0, amount] and is what its postings add up to (and postings touch only the
entry's own account's grants); nothing is ever below zero; one trial grant; a key applied once.
Sums are exact on both backends (``_sums``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..money import from_micros
from ._bulk import in_set, set_arg
from ._executor import Conn
from ._sums import exact_sum, total
from .models import Discrepancy

__all__ = [
    "LIMIT",
    "Carry",
    "SliceResult",
    "account_checks",
    "entry_checks",
    "key_walk",
]

LIMIT = 1000  # discrepancies listed at most (per check and slice, and per run)

_PAGE = "e.account_id = $1 AND e.entry_id > $2 AND e.entry_id <= $3"


def _m(value: int) -> str:
    return str(from_micros(value))


@dataclass(slots=True)
class Carry:
    """What one account's earlier pages added up to (a large account is read in pages)."""

    balance: int = 0
    held: int = 0
    entries: int = 0
    posted: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class SliceResult:
    entries: int = 0
    found: list[Discrepancy] = field(default_factory=list)

    def add(self, invariant: int, account_id: str | None, detail: str) -> None:
        if len(self.found) < LIMIT:
            self.found.append(Discrepancy(invariant, account_id, detail))


async def entry_checks(
    conn: Conn,
    out: SliceResult,
    carries: dict[str, Carry],
    accounts: Sequence[str] | None = None,
    page: tuple[str, int, int] | None = None,
) -> None:
    """Entry-level checks over ``accounts`` (all their entries) or one ``page`` (account, after
    id, up to id) of a large account, whose running sums start from ``carries[account]``.
    Adds each account's sums and its postings per grant to its carry.

    Two passes over the slice's entries find whether anything is wrong (per account: sums, a
    running balance that disagrees, a key used twice; per grant: what postings moved, and
    entries whose postings disagree with them); the offending rows are listed only then."""
    if page is not None:
        where, args = _PAGE, [page[0], page[1], page[2]]
        start = carries.setdefault(page[0], Carry())
        base = [start.balance, start.held]
    else:
        assert accounts is not None
        where, args = in_set(conn.dialect, "e.account_id"), [set_arg(conn.dialect, accounts)]
        base = [0, 0]
    n = len(args)
    window = (
        "SELECT e.account_id, e.entry_id, e.kind, e.delta, e.held_delta, e.balance_after,"
        f" e.held_after, e.idempotency_key, SUM(e.delta) OVER w + ${n + 1} AS running,"
        f" SUM(e.held_delta) OVER w + ${n + 2} AS hrunning FROM credit_entries e WHERE {where}"
        " WINDOW w AS (PARTITION BY e.account_id ORDER BY e.entry_id)"
    )
    wrong = "balance_after <> running OR held_after <> hrunning OR balance_after < held_after"
    sums = await conn.fetch(
        f"SELECT account_id, COUNT(*) AS n, {exact_sum('delta', 's')},"
        f" {exact_sum('held_delta', 'h')}, SUM(CASE WHEN {wrong} THEN 1 ELSE 0 END) AS bad,"
        " COUNT(idempotency_key) AS keyed, COUNT(DISTINCT idempotency_key) AS keys"
        f" FROM ({window}) t GROUP BY account_id",
        *args,
        *base,
    )
    repeated = False
    for r in sums:
        carry = carries.setdefault(r["account_id"], Carry())
        carry.balance += total(r, "s")
        carry.held += total(r, "h")
        carry.entries += int(r["n"])
        out.entries += int(r["n"])
        repeated = repeated or int(r["keyed"]) != int(r["keys"])
    if any(int(r["bad"] or 0) for r in sums):
        for r in await conn.fetch(
            f"SELECT * FROM ({window}) t WHERE {wrong} LIMIT {LIMIT}", *args, *base
        ):
            _running_offences(out, r)
    # each entry's postings, once: summed per grant, and per entry against what it moves
    joined = (
        "SELECT e.account_id, e.entry_id, e.kind, e.delta, p.grant_id, p.amount,"
        " SUM(p.amount) OVER (PARTITION BY e.entry_id) AS posted FROM credit_entries e"
        f" LEFT JOIN credit_postings p ON p.entry_id = e.entry_id WHERE {where}"
    )
    unequal = "delta <> COALESCE(posted, 0)"
    posted = await conn.fetch(
        f"SELECT account_id, grant_id, {exact_sum('COALESCE(amount, 0)', 's')},"
        f" SUM(CASE WHEN {unequal} THEN 1 ELSE 0 END) AS bad"
        f" FROM ({joined}) t GROUP BY account_id, grant_id",
        *args,
    )
    for r in posted:
        if r["grant_id"] is not None:
            carry = carries[r["account_id"]]
            gid = int(r["grant_id"])
            carry.posted[gid] = carry.posted.get(gid, 0) + total(r, "s")
    if any(int(r["bad"] or 0) for r in posted):
        for r in await conn.fetch(
            f"SELECT DISTINCT account_id, entry_id, kind, delta, posted FROM ({joined}) t"
            f" WHERE {unequal} LIMIT {LIMIT}",
            *args,
        ):
            out.add(
                1,
                r["account_id"],
                f"entry {r['entry_id']} ({r['kind']}) moves {_m(int(r['delta']))} but its"
                f" postings move {_m(int(r['posted'] or 0))}",
            )
    if repeated:
        keys = await conn.fetch(
            "SELECT e.account_id, e.idempotency_key, COUNT(*) AS n FROM credit_entries e"
            f" WHERE {where} AND e.idempotency_key IS NOT NULL"
            f" GROUP BY e.account_id, e.idempotency_key HAVING COUNT(*) > 1 LIMIT {LIMIT}",
            *args,
        )
        for r in keys:
            times = f"applied {r['n']} times"
            out.add(4, r["account_id"], f"idempotency key {r['idempotency_key']!r} {times}")


def _running_offences(out: SliceResult, r: Any) -> None:
    aid, eid = r["account_id"], r["entry_id"]
    after, held_after = int(r["balance_after"]), int(r["held_after"])
    running, hrunning = int(r["running"]), int(r["hrunning"])
    if after != running or held_after != hrunning:
        out.add(
            1,
            aid,
            f"entry {eid} says balance {_m(after)} / held {_m(held_after)},"
            f" the entries before it sum to {_m(running)} / {_m(hrunning)}",
        )
    if after < held_after:
        out.add(2, aid, f"entry {eid} left available below zero: {_m(after)} - {_m(held_after)}")


async def key_walk(
    conn: Conn, account_id: str, after: tuple[str, int] | None, size: int
) -> list[Any]:
    """One page of a large account's entry keys in key order (a key applied twice shows up as
    two neighbours, across pages too)."""
    if after is None:
        return await conn.fetch(
            "SELECT idempotency_key, entry_id FROM credit_entries WHERE account_id = $1"
            " AND idempotency_key IS NOT NULL ORDER BY idempotency_key, entry_id LIMIT $2",
            account_id,
            size,
        )
    return await conn.fetch(
        "SELECT idempotency_key, entry_id FROM credit_entries WHERE account_id = $1"
        " AND idempotency_key >= $2 AND (idempotency_key > $2 OR entry_id > $3)"
        " ORDER BY idempotency_key, entry_id LIMIT $4",
        account_id,
        after[0],
        after[1],
        size,
    )


async def account_checks(
    conn: Conn, out: SliceResult, accounts: Sequence[str], carries: dict[str, Carry]
) -> int:
    """Account-level checks of ``accounts``, whose entries' sums are in ``carries``; returns
    how many of them exist."""
    where, arg = in_set(conn.dialect, "account_id"), set_arg(conn.dialect, accounts)
    rows = await conn.fetch(
        f"SELECT account_id, balance, held FROM credit_accounts WHERE {where}", arg
    )
    grants = await conn.fetch(
        f"SELECT account_id, grant_id, amount, remaining, source FROM credit_grants WHERE {where}",
        arg,
    )
    holds = await conn.fetch(
        f"SELECT account_id, {exact_sum('amount', 's')} FROM credit_holds"
        f" WHERE status = 'active' AND {where} GROUP BY account_id",
        arg,
    )
    grant_keys = await conn.fetch(
        "SELECT account_id, idempotency_key, COUNT(*) AS n FROM credit_grants"
        f" WHERE {where} GROUP BY account_id, idempotency_key HAVING COUNT(*) > 1",
        arg,
    )
    held = {r["account_id"]: total(r, "s") for r in holds}
    by_account: dict[str, list[Any]] = {}
    for g in grants:
        by_account.setdefault(g["account_id"], []).append(g)
    for r in rows:
        aid = r["account_id"]
        balance, held_now = int(r["balance"]), int(r["held"])
        carry = carries.get(aid, Carry())
        if balance != carry.balance or held_now != carry.held:
            out.add(
                1,
                aid,
                f"balance {_m(balance)} / held {_m(held_now)} but entries sum to"
                f" {_m(carry.balance)} / {_m(carry.held)}",
            )
        mine = by_account.get(aid, [])
        remaining = sum(int(g["remaining"]) for g in mine)
        if balance != remaining:
            out.add(1, aid, f"balance {_m(balance)} but grants hold {_m(remaining)}")
        if held_now != held.get(aid, 0):
            out.add(1, aid, f"held {_m(held_now)} but active holds sum to {_m(held.get(aid, 0))}")
        _grant_offences(out, aid, mine, carry)
        if balance < held_now:
            out.add(2, aid, f"available below zero: balance {_m(balance)}, held {_m(held_now)}")
        trials = sum(1 for g in mine if g["source"] == "trial")
        if trials > 1:
            out.add(3, aid, f"{trials} trial grants")
    for r in grant_keys:
        out.add(4, r["account_id"], f"grant key {r['idempotency_key']!r} used by {r['n']} grants")
    return len(rows)


def _grant_offences(out: SliceResult, aid: str, grants: Iterable[Any], carry: Carry) -> None:
    own = {int(g["grant_id"]) for g in grants}
    for gid in sorted(set(carry.posted) - own):
        out.add(1, aid, f"postings of its entries reach grant {gid}, not one of its own")
    for g in grants:
        gid, amount, remaining = int(g["grant_id"]), int(g["amount"]), int(g["remaining"])
        posted = carry.posted.get(gid, 0)
        if remaining != posted or remaining < 0 or remaining > amount:
            out.add(
                1,
                aid,
                f"grant {gid}: remaining {_m(remaining)} of {_m(amount)}, postings sum to"
                f" {_m(posted)}",
            )
