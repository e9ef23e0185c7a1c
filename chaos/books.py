"""The private PostgreSQL's ledger, read directly after the load (and ``Ledger.verify()``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from credit_middleware import Ledger
from credit_middleware.ledger import postgres_schema

from . import contract


@dataclass(frozen=True)
class Entry:
    entry_id: int
    account_id: str
    kind: str
    amount: int  # µc
    key: str | None
    ref_entry_id: int | None
    created_at: float  # seconds (the ledger stores µs)
    hold_id: int | None = None  # a hold, capture or release: the hold it moved


@dataclass
class Books:
    entries: list[Entry] = field(default_factory=list)
    accounts: set[str] = field(default_factory=set)
    trials: dict[str, int] = field(default_factory=dict)  # account -> trial grants
    open_holds: int = 0
    verify: dict[str, Any] = field(default_factory=dict)

    def charges(self) -> list[tuple[Entry, int]]:
        """Each entry that took money for a call, with what stands of it after the reversals
        that reference it (0: a debit+refund pair, not charged)."""
        refunded: dict[int, int] = {}
        for e in self.entries:
            if e.kind in contract.REVERSAL_KINDS and e.ref_entry_id is not None:
                refunded[e.ref_entry_id] = refunded.get(e.ref_entry_id, 0) + e.amount
        return [
            (e, e.amount - refunded.get(e.entry_id, 0))
            for e in self.entries
            if e.kind in contract.CHARGE_KINDS and e.amount > 0
        ]


async def read_books(url: str, users: list[str]) -> Books:
    """The entries, accounts, trials and open holds of ``users`` (the load's own), and
    ``verify`` over the whole ledger."""
    books = Books()
    schema = postgres_schema(url) or "public"
    conn = await asyncpg.connect(url, timeout=10, server_settings={"search_path": schema})
    try:
        rows = await conn.fetch(
            "SELECT entry_id, account_id, kind, amount, idempotency_key, ref_entry_id,"
            " created_at, hold_id FROM credit_entries WHERE account_id = ANY($1)"
            " ORDER BY entry_id",
            users,
        )
        books.entries = [
            Entry(
                r["entry_id"],
                r["account_id"],
                r["kind"],
                r["amount"],
                r["idempotency_key"],
                r["ref_entry_id"],
                r["created_at"] / 1_000_000,
                r["hold_id"],
            )
            for r in rows
        ]
        books.accounts = {
            r[0]
            for r in await conn.fetch(
                "SELECT account_id FROM credit_accounts WHERE account_id = ANY($1)", users
            )
        }
        trials = await conn.fetch(
            "SELECT account_id, COUNT(*) FROM credit_grants WHERE source = $1"
            " AND account_id = ANY($2) GROUP BY 1",
            contract.TRIAL_SOURCE,
            users,
        )
        books.trials = {r[0]: r[1] for r in trials}
        books.open_holds = await conn.fetchval(
            "SELECT COUNT(*) FROM credit_holds WHERE status = 'active' AND account_id = ANY($1)",
            users,
        )
    finally:
        await conn.close()
    ledger = Ledger(url)
    try:
        books.verify = (await ledger.verify()).to_json()
    finally:
        await ledger.close()
    return books
