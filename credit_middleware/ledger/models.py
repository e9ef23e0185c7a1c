"""What the ledger returns: frozen records with µc integers and ``Decimal`` views of them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

from ..money import from_micros

__all__ = [
    "Account",
    "Balance",
    "Discrepancy",
    "Entry",
    "EntryKind",
    "Grant",
    "GrantSource",
    "Hold",
    "Receipt",
    "VerifyReport",
]

EntryKind = Literal["grant", "debit", "hold", "capture", "release", "expire", "refund", "adjust"]
GrantSource = Literal["trial", "purchase", "promo", "admin", "refund"]
HoldStatus = Literal["active", "captured", "released", "expired"]


def us_to_dt(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1_000_000, tz=timezone.utc)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def dt_to_us(value: datetime) -> int:
    """Exact µs since the epoch (integer arithmetic, no float rounding)."""
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware (use timezone.utc)")
    return (value - _EPOCH) // timedelta(microseconds=1)


def _meta(raw: Any) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return raw
    loaded = json.loads(raw) if raw else {}
    return loaded if isinstance(loaded, dict) else {}


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    tier: str
    status: str
    balance_micros: int
    held_micros: int
    cohort: str | None
    metadata: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def balance(self) -> Decimal:
        return from_micros(self.balance_micros)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Account:
        return cls(
            account_id=row["account_id"],
            tier=row["tier"],
            status=row["status"],
            balance_micros=int(row["balance"]),
            held_micros=int(row["held"]),
            cohort=row["cohort"],
            metadata=_meta(row["metadata"]),
            created_at=us_to_dt(row["created_at"]),  # type: ignore[arg-type]
            updated_at=us_to_dt(row["updated_at"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class Grant:
    grant_id: int
    account_id: str
    source: str
    amount_micros: int
    remaining_micros: int
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    key: str
    layer: str | None
    metadata: Mapping[str, Any]
    created_at: datetime

    @property
    def amount(self) -> Decimal:
        return from_micros(self.amount_micros)

    @property
    def remaining(self) -> Decimal:
        return from_micros(self.remaining_micros)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Grant:
        return cls(
            grant_id=int(row["grant_id"]),
            account_id=row["account_id"],
            source=row["source"],
            amount_micros=int(row["amount"]),
            remaining_micros=int(row["remaining"]),
            priority=int(row["priority"]),
            effective_at=us_to_dt(row["effective_at"]),  # type: ignore[arg-type]
            expires_at=us_to_dt(row["expires_at"]),
            key=row["idempotency_key"],
            layer=row["layer"],
            metadata=_meta(row["metadata"]),
            created_at=us_to_dt(row["created_at"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: int
    account_id: str
    amount_micros: int
    status: str
    expires_at: datetime
    key: str | None
    created_at: datetime
    closed_at: datetime | None

    @property
    def amount(self) -> Decimal:
        return from_micros(self.amount_micros)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Hold:
        return cls(
            hold_id=int(row["hold_id"]),
            account_id=row["account_id"],
            amount_micros=int(row["amount"]),
            status=row["status"],
            expires_at=us_to_dt(row["expires_at"]),  # type: ignore[arg-type]
            key=row["idempotency_key"],
            created_at=us_to_dt(row["created_at"]),  # type: ignore[arg-type]
            closed_at=us_to_dt(row["closed_at"]),
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """One append-only ledger line. ``delta`` is the effect on the balance, signed."""

    entry_id: int
    account_id: str
    kind: str
    amount_micros: int
    delta_micros: int
    held_delta_micros: int
    balance_after_micros: int
    held_after_micros: int
    grant_id: int | None
    hold_id: int | None
    ref_entry_id: int | None
    key: str | None
    layer: str | None
    route: str | None
    model: str | None
    metadata: Mapping[str, Any]
    created_at: datetime

    @property
    def amount(self) -> Decimal:
        return from_micros(self.amount_micros)

    @property
    def balance_after(self) -> Decimal:
        return from_micros(self.balance_after_micros)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Entry:
        def opt(name: str) -> int | None:
            return None if row[name] is None else int(row[name])

        return cls(
            entry_id=int(row["entry_id"]),
            account_id=row["account_id"],
            kind=row["kind"],
            amount_micros=int(row["amount"]),
            delta_micros=int(row["delta"]),
            held_delta_micros=int(row["held_delta"]),
            balance_after_micros=int(row["balance_after"]),
            held_after_micros=int(row["held_after"]),
            grant_id=opt("grant_id"),
            hold_id=opt("hold_id"),
            ref_entry_id=opt("ref_entry_id"),
            key=row["idempotency_key"],
            layer=row["layer"],
            route=row["route"],
            model=row["model"],
            metadata=_meta(row["metadata"]),
            created_at=us_to_dt(row["created_at"]),  # type: ignore[arg-type]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "account_id": self.account_id,
            "kind": self.kind,
            "amount": str(self.amount),
            "delta": str(from_micros(self.delta_micros)),
            "balance_after": str(self.balance_after),
            "held_after": str(from_micros(self.held_after_micros)),
            "grant_id": self.grant_id,
            "hold_id": self.hold_id,
            "ref_entry_id": self.ref_entry_id,
            "idempotency_key": self.key,
            "layer": self.layer,
            "route": self.route,
            "model": self.model,
            "metadata": dict(self.metadata),
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Balance:
    """An account's money now: ``spendable`` (unexpired, effective), ``held``, ``available``."""

    account_id: str
    tier: str
    spendable_micros: int
    held_micros: int
    grants: tuple[Grant, ...] = ()

    @property
    def available_micros(self) -> int:
        return self.spendable_micros - self.held_micros

    @property
    def spendable(self) -> Decimal:
        return from_micros(self.spendable_micros)

    @property
    def held(self) -> Decimal:
        return from_micros(self.held_micros)

    @property
    def available(self) -> Decimal:
        return from_micros(self.available_micros)


@dataclass(frozen=True, slots=True)
class Receipt:
    """The outcome of a money-moving operation. ``replayed`` is true for a repeated key."""

    entry: Entry
    replayed: bool
    available_micros: int
    grant: Grant | None = None
    hold: Hold | None = None

    @property
    def available(self) -> Decimal:
        return from_micros(self.available_micros)


@dataclass(frozen=True, slots=True)
class Discrepancy:
    invariant: int
    account_id: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    accounts: int
    entries: int
    discrepancies: tuple[Discrepancy, ...] = field(default=())
    #: ``full`` (every account), ``resumed`` (an interrupted run finished: the figures count
    #: the whole run) or ``incremental`` (the accounts changed since the last clean run)
    scope: str = "full"

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "accounts": self.accounts,
            "entries": self.entries,
            "discrepancies": [
                {"invariant": d.invariant, "account_id": d.account_id, "detail": d.detail}
                for d in self.discrepancies
            ],
            **({} if self.scope == "full" else {"scope": self.scope}),
        }
