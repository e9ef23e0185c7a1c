"""Transaction primitives of the SQL core: lock an account, append entries, sweep expiries.

Each operation locks the account row first (PostgreSQL ``SELECT ... FOR UPDATE``; on SQLite the
transaction already holds the database's write lock), so its checks and writes see no concurrent
change. The constraints and unique indexes of the schema are the second line of defence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import (
    AccountNotFound,
    ChargeVoided,
    IdempotencyConflict,
    LedgerError,
)
from ..money import from_micros
from ._executor import Conn, Row

ACCOUNT_COLS = (
    "account_id, tier, status, balance, held, sweep_at, cohort, metadata, created_at, updated_at"
)
GRANT_COLS = (
    "grant_id, account_id, source, amount, remaining, priority, effective_at, expires_at,"
    " idempotency_key, layer, metadata, created_at"
)
HOLD_COLS = (
    "hold_id, account_id, amount, status, expires_at, idempotency_key, metadata, created_at,"
    " closed_at"
)
ENTRY_COLS = (
    "entry_id, account_id, kind, amount, delta, held_delta, balance_after, held_after, grant_id,"
    " hold_id, ref_entry_id, idempotency_key, layer, route, model, metadata, created_at"
)

_SELECT_ACCOUNT = f"SELECT {ACCOUNT_COLS} FROM credit_accounts WHERE account_id = $1"
_LOCK_ACCOUNT = {"postgresql": _SELECT_ACCOUNT + " FOR UPDATE", "sqlite": _SELECT_ACCOUNT}
# Effective grants with money left, in consumption order: first credits kept past their expiry
# only because an active hold reserved them (only a capture can reach those: while any exist,
# nothing else is available), then priority, soonest expiry, oldest.
LIVE_GRANTS = (
    "SELECT grant_id, remaining FROM credit_grants"
    " WHERE account_id = $1 AND remaining > 0 AND effective_at <= $2"
    " ORDER BY CASE WHEN expires_at IS NOT NULL AND expires_at <= $2 THEN 0 ELSE 1 END,"
    " priority, expires_at NULLS LAST, created_at, grant_id"
)
_KEYED_ENTRY = (
    f"SELECT {ENTRY_COLS} FROM credit_entries WHERE account_id = $1 AND idempotency_key = $2"
)
_VOIDED = "SELECT 1 AS voided FROM credit_voids WHERE account_id = $1 AND charge_key = $2"
_INSERT_ENTRY = (
    "INSERT INTO credit_entries (account_id, kind, amount, delta, held_delta, balance_after,"
    " held_after, grant_id, hold_id, ref_entry_id, idempotency_key, layer, route, model, metadata,"
    " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
    f" RETURNING {ENTRY_COLS}"
)
_INSERT_GRANT = (
    "INSERT INTO credit_grants (account_id, source, amount, remaining, priority, effective_at,"
    " expires_at, idempotency_key, layer, metadata, created_at)"
    f" VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {GRANT_COLS}"
)
_NEXT_SWEEP = (
    "SELECT MIN(t) AS t FROM ("
    " SELECT MIN(expires_at) AS t FROM credit_grants"
    "  WHERE account_id = $1 AND remaining > 0 AND expires_at IS NOT NULL"
    " UNION ALL"
    " SELECT MIN(expires_at) AS t FROM credit_holds WHERE account_id = $1 AND status = 'active'"
    ") AS s"
)


def dumps(metadata: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(metadata or {}), sort_keys=True, separators=(",", ":"), default=str)


@dataclass(slots=True)
class Ctx:
    """An account locked inside a transaction, with its running totals."""

    conn: Conn
    now: int
    account_id: str
    tier: str
    balance: int
    held: int
    sweep_at: int | None


@dataclass(frozen=True, slots=True)
class Tag:
    """Who or what caused an entry."""

    key: str | None = None
    layer: str | None = None
    route: str | None = None
    model: str | None = None
    metadata: Mapping[str, Any] | None = None


async def lock(conn: Conn, account_id: str, now: int) -> Ctx:
    row = await conn.fetchrow(_LOCK_ACCOUNT[conn.dialect], account_id)
    if row is None:
        raise AccountNotFound(account_id)
    return Ctx(
        conn, now, account_id, row["tier"], int(row["balance"]), int(row["held"]), row["sweep_at"]
    )


async def entry(
    ctx: Ctx,
    kind: str,
    amount: int,
    delta: int,
    held_delta: int = 0,
    tag: Tag = Tag(),
    *,
    grant_id: int | None = None,
    hold_id: int | None = None,
    ref_entry_id: int | None = None,
    postings: list[tuple[int, int]] | None = None,
) -> Row:
    """Append one entry (and its postings against grants) and move the running totals."""
    ctx.balance += delta
    ctx.held += held_delta
    row = await ctx.conn.fetchrow(
        _INSERT_ENTRY,
        ctx.account_id,
        kind,
        amount,
        delta,
        held_delta,
        ctx.balance,
        ctx.held,
        grant_id,
        hold_id,
        ref_entry_id,
        tag.key,
        tag.layer,
        tag.route,
        tag.model,
        dumps(tag.metadata),
        ctx.now,
    )
    assert row is not None
    for gid, change in postings or ():
        await ctx.conn.execute(
            "UPDATE credit_grants SET remaining = remaining + $2 WHERE grant_id = $1", gid, change
        )
        await ctx.conn.execute(
            "INSERT INTO credit_postings (entry_id, grant_id, amount) VALUES ($1, $2, $3)",
            row["entry_id"],
            gid,
            change,
        )
    return row


async def save(ctx: Ctx) -> None:
    await ctx.conn.execute(
        "UPDATE credit_accounts SET balance = $2, held = $3, sweep_at = $4, updated_at = $5"
        " WHERE account_id = $1",
        ctx.account_id,
        ctx.balance,
        ctx.held,
        ctx.sweep_at,
        ctx.now,
    )


async def keyed(
    ctx: Ctx, key: str | None, kind: str, amount: int | None, sign: int = 0
) -> Row | None:
    """The entry an idempotency key already produced, if it matches this request (``sign``:
    the direction an ``adjust`` moves the balance, +1 or -1)."""
    if key is None:
        return None
    row = await ctx.conn.fetchrow(_KEYED_ENTRY, ctx.account_id, key)
    if row is None:
        if await ctx.conn.fetchrow(_VOIDED, ctx.account_id, key) is not None:
            raise ChargeVoided(ctx.account_id, key)
        return None
    refusal = key_conflict(ctx.account_id, key, row, kind, amount, sign)
    if refusal is not None:
        raise refusal
    return row


def key_conflict(
    account_id: str, key: str, row: Row, kind: str, amount: int | None, sign: int = 0
) -> IdempotencyConflict | None:
    """Why the entry ``row`` that ``key`` produced is not a replay of this request, if it is
    not. The one rule (and wording) for every path, the server-side functions' included."""
    if row["kind"] != kind:
        return IdempotencyConflict(account_id, key, f"already used for a {row['kind']}")
    if sign and (int(row["delta"]) > 0) != (sign > 0):
        direction = "an increase" if int(row["delta"]) > 0 else "a decrease"
        return IdempotencyConflict(account_id, key, f"already used for {direction}")
    requested = json.loads(row["metadata"] or "{}").get("requested_micros", row["amount"])
    if amount is not None and int(requested) != amount:
        return IdempotencyConflict(
            account_id, key, f"already used for {from_micros(int(requested))} credits"
        )
    return None


async def live_grants(ctx: Ctx) -> tuple[list[Row], int]:
    rows = await ctx.conn.fetch(LIVE_GRANTS, ctx.account_id, ctx.now)
    return rows, sum(int(r["remaining"]) for r in rows)


def plan(grants: list[Row], amount: int) -> list[tuple[int, int]]:
    """Take ``amount`` from grants in order: (grant_id, -taken) pairs."""
    out: list[tuple[int, int]] = []
    left = amount
    for g in grants:
        if left <= 0:
            break
        take = min(int(g["remaining"]), left)
        out.append((int(g["grant_id"]), -take))
        left -= take
    if left > 0:  # callers check availability first; reaching here is a bug, not a user error
        raise LedgerError(f"grants of {grants and grants[0]} cannot cover {amount}")
    return out


async def sweep(ctx: Ctx, *, force: bool = False) -> None:
    """Release timed-out holds, then expire grants past their expiry, each with an entry.

    An expiring grant keeps only what active holds still need (so a hold placed before the
    expiry can still be captured); the rest leaves the balance through an ``expire`` entry.
    """
    if not force and (ctx.sweep_at is None or ctx.sweep_at > ctx.now):
        return
    conn, now = ctx.conn, ctx.now
    holds = await conn.fetch(
        "SELECT hold_id, amount FROM credit_holds"
        " WHERE account_id = $1 AND status = 'active' AND expires_at <= $2 ORDER BY hold_id",
        ctx.account_id,
        now,
    )
    for h in holds:
        await conn.execute(
            "UPDATE credit_holds SET status = 'expired', closed_at = $2 WHERE hold_id = $1",
            h["hold_id"],
            now,
        )
        amount = int(h["amount"])
        tag = Tag(metadata={"reason": "timeout"})
        await entry(ctx, "release", amount, 0, -amount, tag, hold_id=int(h["hold_id"]))
    expired = await conn.fetch(
        "SELECT grant_id, remaining FROM credit_grants WHERE account_id = $1 AND remaining > 0"
        " AND expires_at IS NOT NULL AND expires_at <= $2 ORDER BY expires_at DESC, grant_id",
        ctx.account_id,
        now,
    )
    if expired:
        unexpired = await conn.fetchval(
            "SELECT COALESCE(SUM(remaining), 0) FROM credit_grants WHERE account_id = $1"
            " AND remaining > 0 AND effective_at <= $2 AND (expires_at IS NULL OR expires_at > $2)",
            ctx.account_id,
            now,
        )
        need = max(0, ctx.held - int(unexpired))
        for g in expired:
            remaining = int(g["remaining"])
            keep = min(remaining, need)
            need -= keep
            gone = remaining - keep
            if gone > 0:
                gid = int(g["grant_id"])
                await entry(ctx, "expire", gone, -gone, 0, grant_id=gid, postings=[(gid, -gone)])
    ctx.sweep_at = await conn.fetchval(_NEXT_SWEEP, ctx.account_id)
