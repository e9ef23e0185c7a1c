"""What a charge still stands for, and taking it back: the reads and reversals the request side
of the ledger shares (``contract``, ``_resolve``). Each runs inside the caller's transaction."""

from __future__ import annotations

from typing import Any

from . import _ops, _requests
from ._executor import Conn, Row
from ._tx import ENTRY_COLS, HOLD_COLS, Ctx, Tag, lock
from .models import Entry, Hold, Receipt

__all__ = ["billed", "charged", "hold_of", "refund", "reverse", "standing"]


async def hold_of(conn: Conn, entry: Entry) -> Row | None:
    if entry.hold_id is None:
        return None
    return await conn.fetchrow(
        f"SELECT {HOLD_COLS} FROM credit_holds WHERE hold_id = $1", entry.hold_id
    )


async def billed(conn: Conn, entry: Entry, h: Row | None) -> Entry | None:
    """What a charge bills: a debit itself, a captured hold's capture (or late debit); None
    for a hold not captured. A charge refunded in full bills nothing."""
    billed: Entry | None = entry
    if entry.kind == "hold":
        closing = None
        if h is not None and h["status"] == "captured":
            closing = await _ops.closing_charge(conn, int(h["hold_id"]))
        billed = None if closing is None else Entry.from_row(closing)
    if billed is None:
        return None
    done = await conn.fetchval(
        "SELECT COALESCE(SUM(amount), 0) FROM credit_entries"
        " WHERE ref_entry_id = $1 AND kind = 'refund'",
        billed.entry_id,
    )
    return billed if int(done) < billed.amount_micros else None


async def charged(conn: Conn, ctx: Ctx, charge_key: str) -> Receipt | None:
    """The receipt of the charge keyed ``charge_key`` (``replayed``: found, not applied now),
    with its hold; for a captured hold, the entry that billed it."""
    row = await _requests.charge_entry(conn, ctx.account_id, charge_key)
    if row is None:
        return None
    entry = Entry.from_row(row)
    h = await hold_of(conn, entry)
    if h is not None and h["status"] == "captured":
        entry = await billed(conn, entry, h) or entry
    hold = None if h is None else Hold.from_row(h)
    return Receipt(entry, True, await _ops._available(ctx), hold=hold)


async def standing(conn: Conn, now: int, account_id: str, charge_key: str) -> Receipt | None:
    """The receipt of a charge that still pays: a debit not refunded, a hold still active (not
    timed out), or a captured one (its capture's entry)."""
    row = await _requests.charge_entry(conn, account_id, charge_key)
    if row is None:
        return None
    entry = Entry.from_row(row)
    h = await hold_of(conn, entry)
    if h is not None and h["status"] == "active":
        if int(h["expires_at"]) <= now:
            return None
    elif await billed(conn, entry, h) is None:
        return None
    ctx = await lock(conn, account_id, now)
    return await charged(conn, ctx, charge_key)


async def refund(
    conn: Any, now: int, account_id: str, entry: Entry, reason: str, layer: str | None
) -> _ops.Outcome | None:
    """Refund what is left of a charge entry (a debit or a capture); None if nothing is."""
    done = await conn.fetchval(
        "SELECT COALESCE(SUM(amount), 0) FROM credit_entries"
        " WHERE ref_entry_id = $1 AND kind = 'refund'",
        entry.entry_id,
    )
    left = entry.amount_micros - int(done)
    if left <= 0:
        return None
    tag = Tag(f"refund:{entry.entry_id}", layer, None, None, {"reason": reason})
    return await _ops.refund(conn, now, account_id, left, entry.entry_id, None, tag)


async def reverse(
    conn: Any, now: int, account_id: str, entry: Entry, reason: str
) -> _ops.Outcome | None:
    """Undo a charge: refund a debit, release an active hold, refund a captured one."""
    reason = f"reversed: {reason}"[:255]
    if entry.kind != "hold":
        return await refund(conn, now, account_id, entry, reason, "request")
    assert entry.hold_id is not None
    h = await conn.fetchrow("SELECT status FROM credit_holds WHERE hold_id = $1", entry.hold_id)
    if h is not None and h["status"] == "active":
        return await _ops.release(conn, now, entry.hold_id, Tag(metadata={"reason": reason}))
    captured = await _ops.closing_charge(conn, entry.hold_id)
    if captured is None:
        return None
    row = await conn.fetchrow(
        f"SELECT {ENTRY_COLS} FROM credit_entries WHERE entry_id = $1", captured["entry_id"]
    )
    assert row is not None
    return await refund(conn, now, account_id, Entry.from_row(row), reason, "request")
