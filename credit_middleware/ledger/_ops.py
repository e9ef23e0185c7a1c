"""The money-moving operations, written once; each runs inside one transaction.

Amounts here are already-validated µc integers and times are µs since the epoch; the public
:class:`~credit_middleware.ledger.Ledger` converts and validates before calling in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import HoldNotActive, HoldNotFound, InsufficientCredits, InvalidAmount, LedgerError
from ..money import MAX_BALANCE_MICROS, from_micros
from ._executor import Conn, Row
from ._tx import (
    ACCOUNT_COLS,
    ENTRY_COLS,
    GRANT_COLS,
    HOLD_COLS,
    Ctx,
    Tag,
    dumps,
    entry,
    keyed,
    live_grants,
    lock,
    plan,
    save,
    sweep,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    entry: Row
    replayed: bool
    available: int
    grant: Row | None = None
    hold: Row | None = None


@dataclass(frozen=True, slots=True)
class GrantSpec:
    amount: int
    source: str
    key: str
    priority: int = 0
    effective_at: int | None = None
    expires_at: int | None = None


def _insufficient(ctx: Ctx, required: int, available: int) -> InsufficientCredits:
    return InsufficientCredits(
        ctx.account_id,
        required=from_micros(required),
        available=from_micros(max(0, available)),
        tier=ctx.tier,
    )


async def _available(ctx: Ctx) -> int:
    _, total = await live_grants(ctx)
    return total - ctx.held


async def open_account(
    conn: Conn,
    now: int,
    account_id: str,
    tier: str,
    cohort: str | None,
    metadata: Mapping[str, Any] | None,
) -> tuple[Row, bool]:
    """Create the account if it does not exist. Returns (row, created)."""
    created = await conn.fetchrow(
        "INSERT INTO credit_accounts (account_id, tier, cohort, metadata, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (account_id) DO NOTHING"
        " RETURNING account_id",
        account_id,
        tier,
        cohort,
        dumps(metadata),
        now,
    )
    row = await conn.fetchrow(
        f"SELECT {ACCOUNT_COLS} FROM credit_accounts WHERE account_id = $1", account_id
    )
    assert row is not None
    return row, created is not None


async def grant(
    conn: Conn,
    now: int,
    account_id: str,
    spec: GrantSpec,
    tag: Tag,
    *,
    kind: str = "grant",
    ref_entry_id: int | None = None,
) -> Outcome:
    ctx = await lock(conn, account_id, now)
    existing = await conn.fetchrow(
        f"SELECT {GRANT_COLS} FROM credit_grants WHERE account_id = $1 AND idempotency_key = $2",
        account_id,
        spec.key,
    )
    if existing is not None:
        prior = await keyed(ctx, spec.key, kind, spec.amount, 1 if kind == "adjust" else 0)
        if prior is None or existing["source"] != spec.source:
            raise LedgerError(f"grant key {spec.key!r} was used for a {existing['source']} grant")
        return Outcome(prior, True, await _available(ctx), grant=existing)
    # the key must not name another operation
    await keyed(ctx, spec.key, kind, spec.amount, 1 if kind == "adjust" else 0)
    await sweep(ctx)
    if ctx.balance + spec.amount > MAX_BALANCE_MICROS:
        raise InvalidAmount(f"a balance above {from_micros(MAX_BALANCE_MICROS)} credits")
    g = await conn.fetchrow(
        "INSERT INTO credit_grants (account_id, source, amount, remaining, priority, effective_at,"
        " expires_at, idempotency_key, layer, metadata, created_at)"
        " VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8, $9, $10)"
        f" RETURNING {GRANT_COLS}",
        account_id,
        spec.source,
        spec.amount,
        spec.priority,
        spec.effective_at if spec.effective_at is not None else now,
        spec.expires_at,
        spec.key,
        tag.layer,
        dumps(tag.metadata),
        now,
    )
    assert g is not None
    gid = int(g["grant_id"])
    tag = Tag(spec.key, tag.layer, tag.route, tag.model, tag.metadata)
    row = await entry(
        ctx,
        kind,
        spec.amount,
        spec.amount,
        0,
        tag,
        grant_id=gid,
        ref_entry_id=ref_entry_id,
        postings=[(gid, spec.amount)],
    )
    if spec.expires_at is not None and (ctx.sweep_at is None or spec.expires_at < ctx.sweep_at):
        ctx.sweep_at = spec.expires_at
    await save(ctx)
    g = await conn.fetchrow(f"SELECT {GRANT_COLS} FROM credit_grants WHERE grant_id = $1", gid)
    return Outcome(row, False, await _available(ctx), grant=g)


async def debit(
    conn: Conn, now: int, account_id: str, amount: int, tag: Tag, *, kind: str = "debit"
) -> Outcome:
    ctx = await lock(conn, account_id, now)
    prior = await keyed(ctx, tag.key, kind, amount, -1 if kind == "adjust" else 0)
    if prior is not None:
        return Outcome(prior, True, await _available(ctx))
    await sweep(ctx)
    grants, total = await live_grants(ctx)
    available = total - ctx.held
    if amount > available:
        raise _insufficient(ctx, amount, available)
    row = await entry(ctx, kind, amount, -amount, 0, tag, postings=plan(grants, amount))
    await save(ctx)
    return Outcome(row, False, available - amount)


async def hold(
    conn: Conn, now: int, account_id: str, amount: int, expires_at: int, tag: Tag
) -> Outcome:
    ctx = await lock(conn, account_id, now)
    prior = await keyed(ctx, tag.key, "hold", amount)
    if prior is not None:
        held_row = await _hold_row(conn, int(prior["hold_id"]))
        return Outcome(prior, True, await _available(ctx), hold=held_row)
    await sweep(ctx)
    available = await _available(ctx)
    if amount > available:
        raise _insufficient(ctx, amount, available)
    h = await conn.fetchrow(
        "INSERT INTO credit_holds (account_id, amount, status, expires_at, idempotency_key,"
        " metadata, created_at) VALUES ($1, $2, 'active', $3, $4, $5, $6)"
        f" RETURNING {HOLD_COLS}",
        account_id,
        amount,
        expires_at,
        tag.key,
        dumps(tag.metadata),
        now,
    )
    assert h is not None
    row = await entry(ctx, "hold", amount, 0, amount, tag, hold_id=int(h["hold_id"]))
    if ctx.sweep_at is None or expires_at < ctx.sweep_at:
        ctx.sweep_at = expires_at
    await save(ctx)
    return Outcome(row, False, available - amount, hold=h)


async def _hold_row(conn: Conn, hold_id: int) -> Row:
    h = await conn.fetchrow(f"SELECT {HOLD_COLS} FROM credit_holds WHERE hold_id = $1", hold_id)
    if h is None:
        raise HoldNotFound(hold_id)
    return h


async def _closing_entry(conn: Conn, hold_id: int, kind: str) -> Row | None:
    return await conn.fetchrow(
        f"SELECT {ENTRY_COLS} FROM credit_entries WHERE hold_id = $1 AND kind = $2",
        hold_id,
        kind,
    )


async def _locked_hold(conn: Conn, now: int, hold_id: int) -> tuple[Ctx, Row]:
    h = await _hold_row(conn, hold_id)
    ctx = await lock(conn, h["account_id"], now)
    return ctx, await _hold_row(conn, hold_id)  # re-read under the account lock


async def capture(
    conn: Conn, now: int, hold_id: int, amount: int, tag: Tag, *, late: bool = False
) -> Outcome:
    """Charge ``amount`` against a hold: up to what the hold and the balance cover, no more.

    A hold that timed out (never released by anyone) cannot be captured, unless ``late``: then
    it is billed as a ``debit`` of at most the hold's amount (and what is available), marked
    ``late`` in its metadata, and the hold counts as captured.
    """
    ctx, h = await _locked_hold(conn, now, hold_id)
    if h["status"] == "captured":
        prior = await closing_charge(conn, hold_id)
        assert prior is not None
        requested = int(_meta(prior).get("requested_micros") or prior["amount"])
        if requested != amount:
            raise HoldNotActive(hold_id, "captured")
        return Outcome(prior, True, await _available(ctx), hold=h)
    timed_out = h["status"] == "expired" or (
        h["status"] == "active" and int(h["expires_at"]) <= now
    )
    if h["status"] not in ("active", "expired") or (timed_out and not late):
        raise HoldNotActive(hold_id, "expired" if h["status"] == "active" else h["status"])
    await sweep(ctx)
    if timed_out:
        return await _late_capture(ctx, h, amount, tag)
    held = int(h["amount"])
    await conn.execute(
        "UPDATE credit_holds SET status = 'captured', closed_at = $2 WHERE hold_id = $1",
        hold_id,
        now,
    )
    grants, total = await live_grants(ctx)
    charge = max(0, min(amount, total - (ctx.held - held)))
    meta: dict[str, Any] = dict(tag.metadata or {})
    meta["requested_micros"] = amount
    if charge < amount:
        meta["shortfall_micros"] = amount - charge
    tag = Tag(tag.key, tag.layer, tag.route, tag.model, meta)
    row = await entry(
        ctx, "capture", charge, -charge, -held, tag, hold_id=hold_id, postings=plan(grants, charge)
    )
    await sweep(ctx, force=True)
    await save(ctx)
    return Outcome(row, False, await _available(ctx), hold=await _hold_row(conn, hold_id))


async def closing_charge(conn: Conn, hold_id: int) -> Row | None:
    """The entry that billed a captured hold: its capture, or its late debit."""
    return await _closing_entry(conn, hold_id, "capture") or await _closing_entry(
        conn, hold_id, "debit"
    )


async def _late_capture(ctx: Ctx, h: Row, amount: int, tag: Tag) -> Outcome:
    """Bill a hold that timed out under a call that was still running, as a debit bounded by
    the hold's amount (its reservation is gone: what is available now pays)."""
    hold_id = int(h["hold_id"])
    grants, total = await live_grants(ctx)
    available = total - ctx.held
    charge = max(0, min(amount, int(h["amount"]), available))
    if charge == 0:
        raise HoldNotActive(hold_id, "expired")
    await ctx.conn.execute(
        "UPDATE credit_holds SET status = 'captured', closed_at = $2 WHERE hold_id = $1",
        hold_id,
        ctx.now,
    )
    meta: dict[str, Any] = dict(tag.metadata or {})
    meta["requested_micros"] = amount
    meta["late"] = True
    if charge < amount:
        meta["shortfall_micros"] = amount - charge
    tag = Tag(tag.key, tag.layer, tag.route, tag.model, meta)
    row = await entry(
        ctx, "debit", charge, -charge, 0, tag, hold_id=hold_id, postings=plan(grants, charge)
    )
    await save(ctx)
    return Outcome(row, False, available - charge, hold=await _hold_row(ctx.conn, hold_id))


async def extend_hold(conn: Conn, now: int, hold_id: int, expires_at: int) -> Row:
    """Move an active hold's timeout to ``expires_at`` (never earlier); one that timed out but
    was not swept yet is still reserved, and lives on."""
    ctx, h = await _locked_hold(conn, now, hold_id)
    if h["status"] != "active":
        raise HoldNotActive(hold_id, h["status"])
    if int(h["expires_at"]) < expires_at:
        await conn.execute(
            "UPDATE credit_holds SET expires_at = $2 WHERE hold_id = $1", hold_id, expires_at
        )
        if ctx.sweep_at is not None and ctx.sweep_at <= now:
            await sweep(ctx)  # it no longer times out: the next sweep time moves on
            await save(ctx)
    return await _hold_row(conn, hold_id)


async def release(conn: Conn, now: int, hold_id: int, tag: Tag) -> Outcome:
    ctx, h = await _locked_hold(conn, now, hold_id)
    if h["status"] in ("released", "expired"):
        prior = await _closing_entry(conn, hold_id, "release")
        assert prior is not None
        return Outcome(prior, True, await _available(ctx), hold=h)
    if h["status"] != "active":
        raise HoldNotActive(hold_id, h["status"])
    held = int(h["amount"])
    await conn.execute(
        "UPDATE credit_holds SET status = 'released', closed_at = $2 WHERE hold_id = $1",
        hold_id,
        now,
    )
    row = await entry(ctx, "release", held, 0, -held, tag, hold_id=hold_id)
    await sweep(ctx, force=True)
    await save(ctx)
    return Outcome(row, False, await _available(ctx), hold=await _hold_row(conn, hold_id))


async def refund(
    conn: Conn,
    now: int,
    account_id: str,
    amount: int,
    ref_entry_id: int | None,
    expires_at: int | None,
    tag: Tag,
) -> Outcome:
    """Return credits as a new ``refund`` grant; against an entry, never more than it took."""
    ctx = await lock(conn, account_id, now)
    prior = await keyed(ctx, tag.key, "refund", amount)
    if prior is not None:
        return Outcome(prior, True, await _available(ctx))
    priority = 0
    if ref_entry_id is not None:
        ref = await conn.fetchrow(
            "SELECT kind, amount, delta FROM credit_entries"
            " WHERE entry_id = $1 AND account_id = $2",
            ref_entry_id,
            account_id,
        )
        if ref is None or int(ref["delta"]) >= 0:
            raise LedgerError(f"entry {ref_entry_id} is not a charge on account {account_id!r}")
        done = await conn.fetchval(
            "SELECT COALESCE(SUM(amount), 0) FROM credit_entries"
            " WHERE ref_entry_id = $1 AND kind = 'refund'",
            ref_entry_id,
        )
        if int(done) + amount > -int(ref["delta"]):
            charged = from_micros(-int(ref["delta"]))
            raise InvalidAmount(
                f"refunds of entry {ref_entry_id} would exceed the {charged} credits it charged"
            )
        if expires_at is None:  # refunded credits keep the life of the credits they replace
            touched = await conn.fetch(
                "SELECT g.expires_at, g.priority FROM credit_postings p"
                " JOIN credit_grants g ON g.grant_id = p.grant_id WHERE p.entry_id = $1",
                ref_entry_id,
            )
            ends = [t["expires_at"] for t in touched]
            if ends and None not in ends:
                expires_at = max(int(e) for e in ends)
            priority = min((int(t["priority"]) for t in touched), default=0)
    key = tag.key or f"refund:{ref_entry_id}:{now}"
    spec = GrantSpec(amount, "refund", key, priority, now, expires_at)
    tagged = Tag(key, tag.layer, tag.route, tag.model, tag.metadata)
    return await grant(
        conn, now, account_id, spec, tagged, kind="refund", ref_entry_id=ref_entry_id
    )


def _meta(row: Row) -> dict[str, Any]:
    raw = row["metadata"]
    loaded = json.loads(raw) if isinstance(raw, str) and raw else {}
    return loaded if isinstance(loaded, dict) else {}
