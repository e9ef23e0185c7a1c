"""``verify``: the four invariants of DESIGN.md, each as queries that list every offender."""

from __future__ import annotations

from ..money import from_micros
from ._executor import Conn
from .models import Discrepancy, VerifyReport

_LIMIT = 1000

# (invariant, query, how to describe an offending row)
_CHECKS: list[tuple[int, str, str]] = [
    (
        1,
        "SELECT a.account_id, a.balance, a.held, COALESCE(e.s, 0) AS s, COALESCE(e.h, 0) AS h"
        " FROM credit_accounts a LEFT JOIN (SELECT account_id, SUM(delta) AS s,"
        " SUM(held_delta) AS h FROM credit_entries GROUP BY account_id) e"
        " ON e.account_id = a.account_id"
        " WHERE a.balance <> COALESCE(e.s, 0) OR a.held <> COALESCE(e.h, 0)",
        "balance {balance} / held {held} but entries sum to {s} / {h}",
    ),
    (
        1,
        "SELECT a.account_id, a.balance, COALESCE(g.s, 0) AS s FROM credit_accounts a"
        " LEFT JOIN (SELECT account_id, SUM(remaining) AS s FROM credit_grants"
        " GROUP BY account_id) g ON g.account_id = a.account_id"
        " WHERE a.balance <> COALESCE(g.s, 0)",
        "balance {balance} but grants hold {s}",
    ),
    (
        1,
        "SELECT a.account_id, a.held, COALESCE(h.s, 0) AS s FROM credit_accounts a"
        " LEFT JOIN (SELECT account_id, SUM(amount) AS s FROM credit_holds"
        " WHERE status = 'active' GROUP BY account_id) h ON h.account_id = a.account_id"
        " WHERE a.held <> COALESCE(h.s, 0)",
        "held {held} but active holds sum to {s}",
    ),
    (
        1,
        "SELECT g.account_id, g.grant_id, g.amount, g.remaining, COALESCE(p.s, 0) AS s"
        " FROM credit_grants g LEFT JOIN (SELECT grant_id, SUM(amount) AS s FROM credit_postings"
        " GROUP BY grant_id) p ON p.grant_id = g.grant_id"
        " WHERE g.remaining <> COALESCE(p.s, 0) OR g.remaining < 0 OR g.remaining > g.amount",
        "grant {grant_id}: remaining {remaining} of {amount}, postings sum to {s}",
    ),
    (
        1,
        "SELECT e.account_id, e.entry_id, e.kind, e.delta, COALESCE(p.s, 0) AS s"
        " FROM credit_entries e LEFT JOIN (SELECT entry_id, SUM(amount) AS s FROM credit_postings"
        " GROUP BY entry_id) p ON p.entry_id = e.entry_id WHERE e.delta <> COALESCE(p.s, 0)",
        "entry {entry_id} ({kind}) moves {delta} but its postings move {s}",
    ),
    (
        1,
        "SELECT account_id, entry_id, balance_after, running, held_after, hrunning FROM ("
        " SELECT account_id, entry_id, balance_after, held_after,"
        " SUM(delta) OVER (PARTITION BY account_id ORDER BY entry_id) AS running,"
        " SUM(held_delta) OVER (PARTITION BY account_id ORDER BY entry_id) AS hrunning"
        " FROM credit_entries) t WHERE balance_after <> running OR held_after <> hrunning",
        "entry {entry_id} says balance {balance_after} / held {held_after},"
        " the entries before it sum to {running} / {hrunning}",
    ),
    (
        2,
        "SELECT account_id, balance, held FROM credit_accounts WHERE balance < held",
        "available below zero: balance {balance}, held {held}",
    ),
    (
        2,
        "SELECT account_id, entry_id, balance_after, held_after FROM credit_entries"
        " WHERE balance_after < held_after",
        "entry {entry_id} left available below zero: {balance_after} - {held_after}",
    ),
    (
        3,
        "SELECT account_id, COUNT(*) AS n FROM credit_grants WHERE source = 'trial'"
        " GROUP BY account_id HAVING COUNT(*) > 1",
        "{n} trial grants",
    ),
    (
        4,
        "SELECT account_id, idempotency_key, COUNT(*) AS n FROM credit_entries"
        " WHERE idempotency_key IS NOT NULL GROUP BY account_id, idempotency_key"
        " HAVING COUNT(*) > 1",
        "idempotency key {idempotency_key!r} applied {n} times",
    ),
    (
        4,
        "SELECT account_id, idempotency_key, COUNT(*) AS n FROM credit_grants"
        " GROUP BY account_id, idempotency_key HAVING COUNT(*) > 1",
        "grant key {idempotency_key!r} used by {n} grants",
    ),
]

_MONEY_FIELDS = {
    "balance",
    "held",
    "s",
    "h",
    "amount",
    "remaining",
    "delta",
    "balance_after",
    "running",
    "held_after",
    "hrunning",
}


async def verify(conn: Conn) -> VerifyReport:
    found: list[Discrepancy] = []
    for invariant, sql, template in _CHECKS:
        for row in await conn.fetch(f"{sql} LIMIT {_LIMIT}"):
            values = {
                k: (from_micros(int(v)) if k in _MONEY_FIELDS and v is not None else v)
                for k, v in row.items()
            }
            found.append(Discrepancy(invariant, row["account_id"], template.format(**values)))
    accounts = await conn.fetchval("SELECT COUNT(*) FROM credit_accounts")
    entries = await conn.fetchval("SELECT COUNT(*) FROM credit_entries")
    return VerifyReport(int(accounts), int(entries), tuple(found))
