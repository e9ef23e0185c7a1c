"""Tier changes: an audited, idempotent update of an account's tier (migration 6).

A tier change moves no money, so it is not a ledger entry (entry kinds are money moves, fixed by
a CHECK). Each change appends one row to ``credit_account_events`` (append-only by trigger on
both dialects): the old and new tier, who (``layer``), why (``reason``), when, the idempotency
key, and for a purchase the grant entry it came with. The account row's ``tier`` is the current
value; the events are its history.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import IdempotencyConflict
from ._executor import Conn, Row
from ._tx import dumps, lock
from .models import Receipt, us_to_dt

__all__ = ["MAX_TIER_LENGTH", "Purchase", "TierChange", "change_tier", "check_tier"]

MAX_TIER_LENGTH = 64
_MAX_REASON = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

EVENT_COLS = (
    "event_id, account_id, kind, old_value, new_value, entry_id, idempotency_key, layer, reason,"
    " metadata, created_at"
)


def check_tier(tier: object) -> str:
    """A tier name: 1 to 64 characters, no control characters, no surrounding blanks."""
    if not isinstance(tier, str):
        raise ValueError(f"tier must be a str, not {type(tier).__name__}")
    if not tier or tier != tier.strip():
        raise ValueError("tier must be a non-empty name without surrounding blanks")
    if len(tier) > MAX_TIER_LENGTH:
        raise ValueError(f"tier must be at most {MAX_TIER_LENGTH} characters")
    if _CONTROL.search(tier):
        raise ValueError("tier must not contain control characters (NUL, newline, ...)")
    return tier


def check_reason(reason: object) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason) > _MAX_REASON or "\x00" in reason:
        raise ValueError(f"reason must be a str of at most {_MAX_REASON} characters without NUL")
    return reason


@dataclass(frozen=True, slots=True)
class TierChange:
    """One audited tier change. ``replayed`` is true when the key had already been applied."""

    event_id: int
    account_id: str
    old_tier: str
    new_tier: str
    key: str
    entry_id: int | None
    layer: str | None
    reason: str | None
    metadata: Mapping[str, Any]
    created_at: datetime
    replayed: bool = False

    @classmethod
    def from_row(cls, row: Row, *, replayed: bool = False) -> TierChange:
        raw = row["metadata"]
        meta = json.loads(raw) if isinstance(raw, str) and raw else {}
        created = us_to_dt(int(row["created_at"]))
        assert created is not None
        return cls(
            event_id=int(row["event_id"]),
            account_id=row["account_id"],
            old_tier=row["old_value"],
            new_tier=row["new_value"],
            key=row["idempotency_key"],
            entry_id=None if row["entry_id"] is None else int(row["entry_id"]),
            layer=row["layer"],
            reason=row["reason"],
            metadata=meta if isinstance(meta, dict) else {},
            created_at=created,
            replayed=replayed,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "account_id": self.account_id,
            "old_tier": self.old_tier,
            "new_tier": self.new_tier,
            "idempotency_key": self.key,
            "entry_id": self.entry_id,
            "layer": self.layer,
            "reason": self.reason,
            "metadata": dict(self.metadata),
            "created_at": self.created_at.isoformat(),
            "replayed": self.replayed,
        }


@dataclass(frozen=True, slots=True)
class Purchase:
    """A purchase: the ``purchase`` grant and, when a tier was given, the tier change."""

    receipt: Receipt
    tier_change: TierChange | None

    @property
    def replayed(self) -> bool:
        return self.receipt.replayed


async def keyed_event(conn: Conn, account_id: str, key: str) -> Row | None:
    return await conn.fetchrow(
        f"SELECT {EVENT_COLS} FROM credit_account_events"
        " WHERE account_id = $1 AND idempotency_key = $2",
        account_id,
        key,
    )


async def change_tier(
    conn: Conn,
    now: int,
    account_id: str,
    tier: str,
    key: str,
    *,
    layer: str | None,
    reason: str | None,
    metadata: Mapping[str, Any] | None,
    entry_id: int | None = None,
) -> TierChange:
    """Set the tier and append its event, inside the caller's transaction (account locked).

    The same key again returns the first change and writes nothing, even if the tier has been
    changed since: a retry must not undo a later change. The key reused for another tier (or a
    purchase's key for a plain change) is an :class:`IdempotencyConflict`.
    """
    ctx = await lock(conn, account_id, now)
    prior = await keyed_event(conn, account_id, key)
    if prior is not None:
        same_entry = (prior["entry_id"] is None) == (entry_id is None) and (
            entry_id is None or int(prior["entry_id"]) == entry_id
        )
        if prior["new_value"] != tier or not same_entry:
            what = "a purchase" if prior["entry_id"] is not None else "a tier change"
            raise IdempotencyConflict(
                account_id, key, f"already used for {what} to tier {prior['new_value']!r}"
            )
        return TierChange.from_row(prior, replayed=True)
    row = await conn.fetchrow(
        "INSERT INTO credit_account_events (account_id, kind, old_value, new_value, entry_id,"
        " idempotency_key, layer, reason, metadata, created_at)"
        " VALUES ($1, 'tier', $2, $3, $4, $5, $6, $7, $8, $9)"
        f" RETURNING {EVENT_COLS}",
        account_id,
        ctx.tier,
        tier,
        entry_id,
        key,
        layer,
        reason,
        dumps(metadata),
        now,
    )
    assert row is not None
    await conn.execute(
        "UPDATE credit_accounts SET tier = $2, updated_at = $3 WHERE account_id = $1",
        account_id,
        tier,
        now,
    )
    return TierChange.from_row(row)


async def tier_history(conn: Conn, account_id: str, limit: int) -> list[TierChange]:
    rows = await conn.fetch(
        f"SELECT {EVENT_COLS} FROM credit_account_events WHERE account_id = $1"
        " ORDER BY event_id DESC LIMIT $2",
        account_id,
        limit,
    )
    return [TierChange.from_row(r) for r in rows]
