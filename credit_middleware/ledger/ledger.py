"""The public ledger: validation and conversion at the door, the SQL core behind it."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from ..errors import (
    AccountNotFound,
    ConfigurationError,
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InvalidAmount,
    LedgerError,
)
from ..money import check_account_id, check_key, cost_to_micros, to_micros
from . import _audit, _ops, _pgschema, _reporting, _rollups, _search, _tiers
from ._batch import Batcher, DebitItem, Op
from ._executor import AsyncpgExecutor, Conn, Executor, Row
from ._fastrequests import refuse
from ._report_sql import ReportRows
from ._resolve import ChargeResolver
from ._search import RouteUsage, check_query
from ._sqlite import SqliteExecutor
from ._sqlite_databases import DatabasesExecutor
from ._tiers import Purchase, TierChange, change_tier, check_reason, check_tier, keyed_event
from ._tx import (
    ACCOUNT_COLS,
    ENTRY_COLS,
    GRANT_COLS,
    HOLD_COLS,
    Tag,
    dumps,
    key_conflict,
    lock,
    save,
    sweep,
)
from .contract import RequestStore
from .models import Account, Balance, Entry, Grant, Hold, Receipt, VerifyReport, dt_to_us
from .schema import VERSION_TABLE, current_version, migrate, migrations

__all__ = ["Ledger"]

T = TypeVar("T")

_SOURCES = ("trial", "purchase", "promo", "admin", "refund")
_MAX_METADATA = 8192
_TRIAL_BACKDATE_US = 60_000_000  # tolerated clock skew between app processes/hosts


def _executor_for(url: str, timeout: float, pool_size: int) -> Executor:
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        try:
            import asyncpg  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ConfigurationError(
                "PostgreSQL needs asyncpg: pip install 'credit-middleware[postgres]'"
            ) from None
        dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        where = _pgschema.place(dsn)
        return AsyncpgExecutor(
            dsn,
            timeout=timeout,
            max_size=pool_size,
            schema=where.schema,
            search_path=where.search_path,
        )
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        return SqliteExecutor(url)
    raise ConfigurationError(
        f"unsupported database URL scheme {scheme!r}: use sqlite:///path.db or postgresql://..."
    )


def _executor_for_database(database: Any) -> Executor:
    dialect = str(getattr(getattr(database, "url", None), "dialect", ""))
    if dialect == "sqlite":
        return DatabasesExecutor(database)
    raise ConfigurationError(
        f"a databases.Database of dialect {dialect!r} is not supported: pass a SQLite one, or"
        " give PostgreSQL as a URL (the ledger runs it on its own asyncpg pool)"
    )


def _metadata(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("metadata must be a mapping")
    try:
        size = len(json.dumps(dict(value), default=str))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from None
    if size > _MAX_METADATA:
        raise ValueError(f"metadata is larger than {_MAX_METADATA} bytes")
    return value


def _priority(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) > 10**6:
        raise ValueError("priority must be an int within ±1,000,000")
    return value


#: the largest row id (entry, grant, hold): the 64-bit signed columns that hold them
MAX_ROW_ID = 2**63 - 1


def _row_id(value: object, field: str) -> int:
    """A row id (entry, grant, hold): a positive int inside the 64-bit columns that hold them."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_ROW_ID:
        raise ValueError(f"{field} must be a whole number from 1 to 2**63 - 1")
    return value


def _label(value: str | None, field: str) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > 255 or "\x00" in value):
        raise ValueError(f"{field} must be a str of at most 255 characters without NUL")
    return value


class Ledger(RequestStore, ChargeResolver):
    """Accounts, grants, holds and an append-only audit trail, with exact µc money.

    ``Ledger("sqlite:///credits.db")`` is the embedded default; ``Ledger("postgresql://...")``
    serves many processes and hosts. Connections open lazily on first use.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        database: Any = None,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = 5.0,
        pool_size: int = 10,
        fast_path: bool = True,
        group_commit: bool = True,
    ) -> None:
        if executor is None:
            if database is not None:
                executor = _executor_for_database(database)
            else:
                executor = _executor_for(url or "sqlite:///./credits.db", timeout, pool_size)
        self._x = executor
        self._clock = clock
        self._fast_path = fast_path
        # PostgreSQL: concurrent debits of this process share a transaction (group commit)
        self._batcher = Batcher(
            executor,
            max_batch=64 if group_commit else 1,
            max_inflight=2 if group_commit else pool_size,
        )
        self.url = url

    @property
    def dialect(self) -> str:
        return self._x.dialect

    def now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    async def __aenter__(self) -> Ledger:
        self._x.reopen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections, after the operation in progress. Until ``reopen()``, later
        operations raise ``BackendUnavailable`` rather than silently opening connections that
        nothing would close (a stray task outliving its app, say)."""
        await self._batcher.aclose()
        await self._x.close()

    def reopen(self) -> None:
        """Make a closed ledger usable again (an app whose lifespan runs twice, as in tests);
        connections open lazily on the next operation."""
        self._x.reopen()

    async def migrate(self) -> list[int]:
        """Create or upgrade the schema; safe when several processes start at once."""
        return await migrate(self._x, self.now_us())

    async def schema_version(self) -> int:
        return await current_version(self._x)

    # ------------------------------------------------------------------ writes

    async def open_account(
        self,
        account_id: str,
        *,
        tier: str = "default",
        cohort: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Account, bool]:
        """Create the account if missing. Returns (account, created)."""
        account_id = check_account_id(account_id)
        _label(tier, "tier")
        _label(cohort, "cohort")
        now, meta = self.now_us(), _metadata(metadata)
        row, created = await self._run(
            lambda conn: _ops.open_account(conn, now, account_id, tier, cohort, meta)
        )
        return Account.from_row(row), created

    async def grant(
        self,
        account_id: str,
        amount: Decimal | int | str,
        *,
        source: str = "purchase",
        key: str | None = None,
        priority: int = 0,
        effective_at: datetime | None = None,
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
        layer: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Receipt:
        """Add credits. With ``key``, a repeated call returns the first grant and adds nothing."""
        account_id = check_account_id(account_id)
        micros = to_micros(amount)
        if source not in _SOURCES:
            raise ValueError(f"source must be one of {_SOURCES}, not {source!r}")
        _priority(priority)
        now = self.now_us()
        ends = self._expiry(now, expires_at, expires_in)
        starts = dt_to_us(effective_at) if effective_at is not None else now
        if ends is not None and ends <= starts:
            raise ValueError("a grant must expire after it becomes effective")
        key = check_key(key) if key is not None else f"{source}:{uuid.uuid4().hex}"
        spec = _ops.GrantSpec(micros, source, key, priority, starts, ends)
        tag = Tag(spec.key, _label(layer, "layer"), None, None, _metadata(metadata))
        out = await self._run(lambda conn: _ops.grant(conn, now, account_id, spec, tag))
        return self._receipt(out)

    async def debit(
        self,
        account_id: str,
        amount: Decimal | int | str,
        *,
        key: str | None = None,
        round_up: bool = False,
        layer: str | None = None,
        route: str | None = None,
        model: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Receipt:
        """Spend credits atomically, or raise ``InsufficientCredits`` and move nothing.

        ``round_up=True`` accepts a price finer than 1 µc and rounds it up (never to zero);
        the unrounded figure is kept in the entry's metadata.
        """
        account_id = check_account_id(account_id)
        micros, meta = self._charge(amount, round_up, metadata)
        tag = self._tag(key, layer, route, model, meta)
        now = self.now_us()
        if self._fast_path and self._x.dialect == "postgresql":
            fast = await self._fast_debit(account_id, micros, now, tag)
            if fast is not None:
                return fast
        out = await self._run(lambda conn: _ops.debit(conn, now, account_id, micros, tag))
        return self._receipt(out)

    async def _fast_debit(self, account_id: str, micros: int, now: int, tag: Tag) -> Receipt | None:
        """One round trip to ``credit_debit()``; None when the generic path must run."""
        item = DebitItem(
            account_id, micros, now, tag.key, tag.layer, tag.route, tag.model, dumps(tag.metadata)
        )
        row = await self._batcher.run(item)
        status = row["o_status"]
        if status == "slow":
            return None
        if status != "ok":
            self._fast_refusal(account_id, status, row, tag, "debit", micros)
        entry = Entry.from_row(json.loads(row["o_entry"]))
        available = int(row["o_available"])
        return Receipt(entry=entry, replayed=status == "replayed", available_micros=available)

    async def hold(
        self,
        account_id: str,
        amount: Decimal | int | str,
        *,
        timeout: timedelta | float = 300.0,
        key: str | None = None,
        round_up: bool = False,
        layer: str | None = None,
        route: str | None = None,
        model: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Receipt:
        """Reserve credits until captured, released, or ``timeout`` passes (then released)."""
        account_id = check_account_id(account_id)
        micros, meta = self._charge(amount, round_up, metadata)
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if not isinstance(seconds, (int, float)) or not 0 < seconds <= 7 * 86400:
            raise ValueError("hold timeout must be between 0 and 7 days")
        now = self.now_us()
        tag = self._tag(key, layer, route, model, meta)
        expires = now + int(seconds * 1e6)
        if self._fast_path and self._x.dialect == "postgresql":
            fast = await self._fast_hold(account_id, micros, now, expires, tag)
            if fast is not None:
                return fast
        out = await self._run(lambda conn: _ops.hold(conn, now, account_id, micros, expires, tag))
        return self._receipt(out)

    async def _fast_hold(
        self, account_id: str, micros: int, now: int, expires: int, tag: Tag
    ) -> Receipt | None:
        """One round trip to ``credit_begin()``; None when the generic path must run. Not
        batched: a hold is an LLM call's, long and rare next to debits, and often made from a
        worker's own event loop, which a batch's kept connection cannot follow."""
        op = Op("begin", account_id, None, None, tag.key, "hold", micros, now, expires,
                None, None, tag.layer, tag.route, tag.model, dumps(tag.metadata))  # fmt: skip
        sql, args = op.call()
        async with self._guarded_read() as conn:
            row = await conn.fetchrow(sql, *args)
        assert row is not None
        status = row["o_status"]
        if status == "slow":
            return None
        available = int(row["o_available"])
        if status != "ok":
            self._fast_refusal(account_id, status, row, tag, "hold", micros)
        entry = Entry.from_row(json.loads(row["o_entry"]))
        hold = Hold.from_row(json.loads(row["o_hold"]))
        return Receipt(entry, status == "replayed", available, hold=hold)

    def _fast_refusal(
        self, account_id: str, status: str, row: Any, tag: Tag, kind: str, micros: int
    ) -> None:
        """Raise what the generic path raises for a server-side refusal or a mismatched replay
        (returns for a replay that matches)."""
        refuse(account_id, tag.key, status, row, micros)
        if status == "replayed":
            assert tag.key is not None
            refusal = key_conflict(account_id, tag.key, json.loads(row["o_entry"]), kind, micros)
            if refusal is not None:
                raise refusal
            return
        raise LedgerError(f"unexpected answer {status!r} from the ledger")

    async def capture(
        self,
        hold_id: int,
        amount: Decimal | int | str,
        *,
        round_up: bool = False,
        layer: str | None = None,
        route: str | None = None,
        model: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        late: bool = False,
    ) -> Receipt:
        """Charge the actual amount of a hold (up to what the hold and balance cover).

        A hold that timed out raises ``HoldNotActive``; with ``late=True`` it is billed
        instead, as a ``debit`` of at most the hold's amount (a call that outlived its hold is
        not free), marked ``late`` in its metadata.
        """
        micros, meta = self._charge(amount, round_up, metadata, allow_zero=True)
        tag = self._tag(None, layer, route, model, meta)
        hold_id = self._hold_id(hold_id)
        now = self.now_us()
        if self._fast_path and self._x.dialect == "postgresql":
            fast = await self._fast_capture(hold_id, micros, now, tag, late)
            if fast is not None:
                return fast
        out = await self._run(lambda conn: _ops.capture(conn, now, hold_id, micros, tag, late=late))
        return self._receipt(out)

    async def extend_hold(self, hold_id: int, *, timeout: timedelta | float = 300.0) -> Hold:
        """Keep an active hold reserved ``timeout`` more from now (a long call, a stream, still
        running); raises ``HoldNotActive`` once it was captured, released or swept away."""
        hold_id = self._hold_id(hold_id)
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if not isinstance(seconds, (int, float)) or not 0 < seconds <= 7 * 86400:
            raise ValueError("hold timeout must be between 0 and 7 days")
        now = self.now_us()
        until = now + int(seconds * 1e6)
        row = await self._run(lambda conn: _ops.extend_hold(conn, now, hold_id, until))
        return Hold.from_row(row)

    async def _fast_capture(
        self, hold_id: int, micros: int, now: int, tag: Tag, late: bool = False
    ) -> Receipt | None:
        """One round trip to ``credit_finish()`` (``credit_capture()`` inside); None when the
        generic path must run (a sweep due, a late capture, the replay of one). Not batched:
        a batch orders its operations by account, and a capture knows only its hold."""
        op = Op("finish", "", None, None, None, None, micros, now, hold_id, None, None,
                tag.layer, tag.route, tag.model, dumps(tag.metadata))  # fmt: skip
        sql, args = op.call()
        async with self._guarded_read() as conn:
            row = await conn.fetchrow(sql, *args)
        assert row is not None
        status = row["o_status"]
        if status == "slow":
            return None
        if status == "hold_not_found":
            raise HoldNotFound(hold_id)
        if status == "not_active":
            if late and row["o_entry"] == "expired":
                return None
            raise HoldNotActive(hold_id, row["o_entry"])
        raw = json.loads(row["o_entry"] or "null")
        if not raw or raw.get("entry_id") is None:  # the replay of a late capture
            return None
        entry = Entry.from_row(raw)
        if status == "replayed":
            requested = int(entry.metadata.get("requested_micros") or entry.amount_micros)
            if requested != micros:
                raise HoldNotActive(hold_id, "captured")
        hold = Hold.from_row(json.loads(row["o_hold"]))
        return Receipt(entry, status == "replayed", int(row["o_available"]), hold=hold)

    async def release(self, hold_id: int, *, reason: str | None = None) -> Receipt:
        """Give a hold's credits back; releasing twice returns the first release."""
        tag = Tag(metadata={"reason": _label(reason, "reason") or "released"})
        now, hid = self.now_us(), self._hold_id(hold_id)
        out = await self._run(lambda conn: _ops.release(conn, now, hid, tag))
        return self._receipt(out)

    async def refund(
        self,
        account_id: str,
        amount: Decimal | int | str,
        *,
        entry_id: int | None = None,
        key: str | None = None,
        expires_at: datetime | None = None,
        layer: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Receipt:
        """Return credits as a ``refund`` grant; against ``entry_id``, at most what it took."""
        account_id = check_account_id(account_id)
        micros = to_micros(amount)
        if entry_id is not None:
            _row_id(entry_id, "entry_id")
        tag = self._tag(key, layer, None, None, _metadata(metadata))
        ends = dt_to_us(expires_at) if expires_at is not None else None
        now = self.now_us()
        out = await self._run(
            lambda conn: _ops.refund(conn, now, account_id, micros, entry_id, ends, tag)
        )
        return self._receipt(out)

    async def adjust(
        self,
        account_id: str,
        amount: Decimal | int | str,
        *,
        key: str,
        reason: str,
        layer: str | None = "admin",
    ) -> Receipt:
        """An operator's correction, positive (an ``admin`` grant) or negative (a charge)."""
        account_id = check_account_id(account_id)
        if isinstance(amount, str):
            amount = amount.strip()
        negative = str(amount).startswith("-")
        micros = to_micros(str(amount)[1:] if negative else amount)
        if not reason or not isinstance(reason, str):
            raise ValueError("an adjustment needs a reason")
        meta = {"reason": reason[:500]}
        tag = self._tag(check_key(key), layer, None, None, meta)
        now = self.now_us()
        spec = _ops.GrantSpec(micros, "admin", key, 0, now, None)

        async def adjust(conn: Conn) -> _ops.Outcome:
            if negative:
                return await _ops.debit(conn, now, account_id, micros, tag, kind="adjust")
            return await _ops.grant(conn, now, account_id, spec, tag, kind="adjust")

        return self._receipt(await self._run(adjust))

    async def set_tier(
        self,
        account_id: str,
        tier: str,
        *,
        key: str | None = None,
        reason: str | None = None,
        layer: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TierChange:
        """Change the account's tier, audited (old, new, who, why, when) in one transaction.

        With ``key``, a repeated call returns the first change and writes nothing (even if the
        tier has changed since). Running middleware instances pick the new tier up within their
        tier cache's lifetime (``middleware.TIER_TTL``, 60 s).
        """
        account_id = check_account_id(account_id)
        tier = check_tier(tier)
        reason = check_reason(reason)
        key = check_key(key) if key is not None else f"tier:{uuid.uuid4().hex}"
        layer = _label(layer, "layer")
        meta = _metadata(metadata)
        now = self.now_us()
        return await self._run(
            lambda conn: change_tier(
                conn, now, account_id, tier, key, layer=layer, reason=reason, metadata=meta
            )
        )

    async def purchase(
        self,
        account_id: str,
        amount: Decimal | int | str,
        *,
        key: str,
        tier: str | None = None,
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
        priority: int = 0,
        reason: str | None = None,
        layer: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Purchase:
        """Grant purchased credits and (with ``tier``) upgrade the tier, in one transaction.

        ``key`` (a payment or order id) is required: the same key again returns the first
        purchase and moves nothing; the key reused for another amount or tier is an
        :class:`IdempotencyConflict`. Both halves happen, or neither does.
        """
        account_id = check_account_id(account_id)
        micros = to_micros(amount)
        if tier is not None:
            tier = check_tier(tier)
        reason = check_reason(reason)
        if not isinstance(key, str):
            raise ValueError("a purchase needs key=<payment or order id>")
        key = check_key(key)
        _priority(priority)
        now = self.now_us()
        ends = self._expiry(now, expires_at, expires_in)
        if ends is not None and ends <= now:
            raise ValueError("a purchase must expire in the future")
        meta = _metadata(metadata)
        grant_meta = {**(meta or {}), **({"tier": tier} if tier else {})}
        grant_meta |= {"reason": reason} if reason else {}
        spec = _ops.GrantSpec(micros, "purchase", key, priority, now, ends)
        tag = Tag(key, _label(layer, "layer"), None, None, grant_meta or None)

        async def purchase(conn: Conn) -> Purchase:
            out = await _ops.grant(conn, now, account_id, spec, tag)
            receipt = self._receipt(out)
            change = None
            if tier is not None:
                change = await change_tier(
                    conn,
                    now,
                    account_id,
                    tier,
                    key,
                    layer=tag.layer,
                    reason=reason,
                    metadata=meta,
                    entry_id=receipt.entry.entry_id,
                )
                if change.replayed != receipt.replayed:  # the key named a plain grant before
                    raise IdempotencyConflict(account_id, key, "already used for a grant")
            elif receipt.replayed and await keyed_event(conn, account_id, key) is not None:
                raise IdempotencyConflict(account_id, key, "already used with a tier change")
            return Purchase(receipt, change)

        return await self._run(purchase)

    async def provision(
        self,
        account_id: str,
        *,
        tier: str,
        trial_amount: Decimal | int | str | None,
        trial_expires_at: datetime | None = None,
        priority: int = 0,
        cohort: str | None = None,
        layer: str | None = None,
        account_metadata: Mapping[str, Any] | None = None,
        grant_metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Account, bool, Receipt | None]:
        """Open the account and give it its one trial grant, in one transaction.

        Idempotent: the trial grant's key is fixed (``trial``) and the database allows one
        trial grant per account, so any number of concurrent calls grant once.
        Returns (account, created, receipt of the trial grant if this call made it).
        """
        account_id = check_account_id(account_id)
        _label(tier, "tier")
        _label(cohort, "cohort")
        micros = to_micros(trial_amount) if trial_amount is not None else None
        _priority(priority)
        now = self.now_us()
        ends = dt_to_us(trial_expires_at) if trial_expires_at is not None else None
        tag = Tag("trial", _label(layer, "layer"), None, None, _metadata(grant_metadata))
        # Effective a little before now: a concurrent debit whose clock reading (or host
        # clock) is slightly behind ours must not see a not-yet-effective trial and answer
        # 402 to a brand-new user.
        starts = now - _TRIAL_BACKDATE_US
        if self._fast_path and self._x.dialect == "postgresql":
            fast = await self._fast_provision(
                account_id,
                tier,
                cohort,
                _metadata(account_metadata),
                now,
                micros,
                priority,
                starts,
                ends,
                tag,
            )
            if fast is not None:
                return fast
        meta = _metadata(account_metadata)

        async def provision(conn: Conn) -> tuple[Row, bool, _ops.Outcome | None]:
            _, created = await _ops.open_account(conn, now, account_id, tier, cohort, meta)
            granted = None
            if micros is not None:
                # as credit_provision(): a trial grant, or any grant keyed "trial", means done
                has_trial = await conn.fetchval(
                    "SELECT COUNT(*) FROM credit_grants WHERE account_id = $1"
                    " AND (source = 'trial' OR idempotency_key = 'trial')",
                    account_id,
                )
                if not has_trial:
                    spec = _ops.GrantSpec(micros, "trial", "trial", priority, starts, ends)
                    granted = await _ops.grant(conn, now, account_id, spec, tag)
            final = await conn.fetchrow(
                f"SELECT {ACCOUNT_COLS} FROM credit_accounts WHERE account_id = $1", account_id
            )
            assert final is not None
            return final, created, granted

        final, created, granted = await self._run(provision)
        receipt = self._receipt(granted) if granted is not None else None
        return Account.from_row(final), created, receipt

    async def _fast_provision(
        self,
        account_id: str,
        tier: str,
        cohort: str | None,
        account_metadata: Mapping[str, Any] | None,
        now: int,
        micros: int | None,
        priority: int,
        starts: int,
        ends: int | None,
        tag: Tag,
    ) -> tuple[Account, bool, Receipt | None] | None:
        """One round trip to ``credit_provision()`` (PostgreSQL); None when the generic path
        must decide (a sweep is due, the key ``trial`` is taken, or the balance cap is near)."""
        async with self._guarded_read() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM credit_provision($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                account_id,
                tier,
                cohort,
                dumps(account_metadata),
                now,
                micros,
                priority,
                starts,
                ends,
                tag.layer,
                dumps(tag.metadata),
            )
        assert row is not None
        if row["o_status"] == "slow":
            return None
        account = Account.from_row(json.loads(row["o_account"]))
        receipt = None
        if row["o_status"] == "granted":
            receipt = Receipt(
                entry=Entry.from_row(json.loads(row["o_entry"])),
                replayed=False,
                available_micros=int(row["o_available"]),
                grant=Grant.from_row(json.loads(row["o_grant"])),
            )
        return account, bool(row["o_created"]), receipt

    def _guarded_read(self) -> _guarded:
        return _guarded(self._x, write=False)

    async def sweep(self, account_id: str | None = None) -> int:
        """Expire grants and release timed-out holds now (normally done lazily); returns the
        number of accounts swept."""
        now = self.now_us()
        if account_id is not None:
            ids = [check_account_id(account_id)]
        else:
            rows = await self._run(
                lambda conn: conn.fetch(
                    "SELECT account_id FROM credit_accounts WHERE sweep_at <= $1", now
                ),
                write=False,
            )
            ids = [r["account_id"] for r in rows]
        for aid in ids:
            await self._run(_sweeper(aid, now))
        return len(ids)

    # ------------------------------------------------------------------ reads

    async def get_account(self, account_id: str) -> Account | None:
        account_id = check_account_id(account_id)
        row = await self._run(
            lambda conn: conn.fetchrow(
                f"SELECT {ACCOUNT_COLS} FROM credit_accounts WHERE account_id = $1", account_id
            ),
            write=False,
        )
        return None if row is None else Account.from_row(row)

    async def balance(self, account_id: str) -> Balance:
        """What the account can spend now (expired grants and timed-out holds excluded)."""
        account_id = check_account_id(account_id)
        now = self.now_us()

        async def read(conn: Conn) -> tuple[Row, list[Row], Any]:
            acct = await conn.fetchrow(
                "SELECT tier FROM credit_accounts WHERE account_id = $1", account_id
            )
            if acct is None:
                raise AccountNotFound(account_id)
            grants = await conn.fetch(
                f"SELECT {GRANT_COLS} FROM credit_grants WHERE account_id = $1 AND remaining > 0"
                " ORDER BY priority, expires_at NULLS LAST, created_at, grant_id",
                account_id,
            )
            held = await conn.fetchval(
                "SELECT COALESCE(SUM(amount), 0) FROM credit_holds"
                " WHERE account_id = $1 AND status = 'active' AND expires_at > $2",
                account_id,
                now,
            )
            return acct, grants, held

        acct, grants, held = await self._run(read, write=False)
        spendable = sum(  # on the stored integers: the same boundaries as the debit's
            int(g["remaining"])
            for g in grants
            if int(g["effective_at"]) <= now
            and (g["expires_at"] is None or int(g["expires_at"]) > now)
        )
        live = tuple(Grant.from_row(g) for g in grants)
        return Balance(account_id, acct["tier"], spendable, int(held), live)

    async def history(
        self, account_id: str, *, limit: int = 50, before: int | None = None
    ) -> list[Entry]:
        """Entries newest first; page with ``before`` = the last entry_id of the previous page."""
        account_id = check_account_id(account_id)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        cursor = _row_id(before, "before") if before is not None else 2**62
        rows = await self._run(
            lambda conn: conn.fetch(
                f"SELECT {ENTRY_COLS} FROM credit_entries WHERE account_id = $1 AND entry_id < $2"
                " ORDER BY entry_id DESC LIMIT $3",
                account_id,
                cursor,
                limit,
            ),
            write=False,
        )
        return [Entry.from_row(r) for r in rows]

    async def holds(self, account_id: str, *, active_only: bool = True) -> list[Hold]:
        account_id = check_account_id(account_id)
        where = " AND status = 'active'" if active_only else ""
        rows = await self._run(
            lambda conn: conn.fetch(
                f"SELECT {HOLD_COLS} FROM credit_holds WHERE account_id = $1{where}"
                " ORDER BY hold_id",
                account_id,
            ),
            write=False,
        )
        return [Hold.from_row(r) for r in rows]

    async def verify(
        self,
        *,
        incremental: bool = False,
        resume: bool = False,
        checkpoint: bool = False,
        progress: Callable[[_audit.VerifyProgress], None] | None = None,
        budget: int = _audit.BUDGET,
    ) -> VerifyReport:
        """Check the four invariants, account by account in slices of about ``budget``
        entries (no statement near a timeout, whatever the ledger's size); lists every
        discrepancy (up to 1,000). ``checkpoint`` records progress and, when clean, the point
        ``incremental`` starts from (the accounts with an entry since); ``resume`` continues
        an interrupted checkpointed run. ``progress`` is called after every slice."""
        audit = _audit.Audit(
            self._x,
            self.now_us,
            budget=budget,
            progress=progress,
            checkpoint=checkpoint or incremental or resume,
        )
        if incremental:
            return await audit.incremental()
        return await audit.full(resume=resume)

    async def tier_history(self, account_id: str, *, limit: int = 50) -> list[TierChange]:
        """The account's tier changes, newest first (empty if it never changed)."""
        account_id = check_account_id(account_id)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        return await self._run(
            lambda conn: _tiers.tier_history(conn, account_id, limit), write=False
        )

    async def search_accounts(self, query: str = "", *, limit: int = 50) -> list[Account]:
        """Accounts whose id starts with ``query``, or with that e-mail (``a@b.c``) or e-mail
        domain (``@b.c``) in their metadata; newest first. For operators, not the hot path."""
        query = check_query(query)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        return await self._run(
            lambda conn: _search.search_accounts(conn, query, limit), write=False
        )

    async def usage_by_route(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        account_id: str | None = None,
    ) -> list[RouteUsage]:
        """Calls billed and credits charged/refunded per route, for entries written in
        [since, until); largest net first. Whole UTC days (or no bounds) are read from the
        rollups, brought up to date first: O(days x routes), one account's O(its days x
        routes); a period that splits a day reads its entries."""
        lo = dt_to_us(since) if since is not None else -_reporting.OPEN
        hi = dt_to_us(until) if until is not None else _reporting.OPEN
        if lo >= hi:
            raise ValueError("since must be before until")
        aid = check_account_id(account_id) if account_id is not None else None
        rows = await _reporting.route_usage(self._x, self.now_us(), lo, hi, aid)
        return _search.by_net(rows)

    async def refresh_rollups(self) -> int:
        """Roll up every entry committed so far into the report's rollups (normally done by
        the app's maintenance job and before each report); returns how many entries it added.
        Exact: it moves only to a fence, below which no entry can still appear."""
        return await _rollups.refresh(self._x, self.now_us())

    async def report_rows(
        self, lo: int, hi: int, top: int, *, source: _reporting.Source = "auto"
    ) -> ReportRows:
        """The usage report's figures for [lo, hi) (µs): from the rollups for whole UTC days,
        else (or with ``source="entries"``) counted from the entries. See ``report``."""
        return await _reporting.report_rows(self._x, self.now_us(), lo, hi, top, source)

    async def pending_migrations(self) -> list[int]:
        """The schema versions this library has that the database lacks (all of them when the
        database holds no ledger yet)."""

        async def applied(conn: Conn) -> set[int]:
            try:
                rows = await conn.fetch(f"SELECT version FROM {VERSION_TABLE}")
            except Exception:  # no version table: an empty (or foreign) database
                return set()
            return {int(r["version"]) for r in rows}

        have = await self._run(applied, write=False)
        return [v for v, _, _ in migrations(self._x.dialect) if v not in have]

    # ------------------------------------------------------------------ helpers

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, write: bool = True) -> T:
        """Run one whole operation (``fn(conn)``) through the executor, the way every
        operation goes: one transaction, one hop to the SQLite thread, batched with its
        neighbours into one commit, never left half done by a cancelled caller. ``fn`` may
        await only ``conn``. Constraint violations surface as ``LedgerError``::

            out = await self._run(lambda conn: _ops.debit(conn, now, account_id, micros, tag))
        """
        try:
            return await self._x.run(fn, write=write)
        except _integrity_errors() as err:
            raise LedgerError(f"refused by a ledger constraint: {err}") from err

    def _tx(self) -> _guarded:
        """The older way, a block of statements (one hop each on SQLite): prefer ``_run``."""
        return _guarded(self._x)

    @staticmethod
    def _expiry(now: int, expires_at: datetime | None, expires_in: timedelta | None) -> int | None:
        if expires_at is not None and expires_in is not None:
            raise ValueError("give expires_at or expires_in, not both")
        if expires_in is not None:
            if expires_in <= timedelta(0):
                raise ValueError("expires_in must be positive")
            return now + int(expires_in.total_seconds() * 1_000_000)
        return dt_to_us(expires_at) if expires_at is not None else None

    @staticmethod
    def _charge(
        amount: object, round_up: bool, metadata: Mapping[str, Any] | None, allow_zero: bool = False
    ) -> tuple[int, Mapping[str, Any] | None]:
        meta = _metadata(metadata)
        if not round_up:
            return to_micros(amount, allow_zero=allow_zero), meta
        micros, unrounded = cost_to_micros(amount)
        if micros == 0 and not allow_zero:
            raise InvalidAmount("amount must be positive")
        if Decimal(micros).scaleb(-6) != unrounded:
            meta = {**(meta or {}), "unrounded": str(unrounded)}
        return micros, meta

    @staticmethod
    def _tag(
        key: str | None,
        layer: str | None,
        route: str | None,
        model: str | None,
        metadata: Mapping[str, Any] | None,
    ) -> Tag:
        return Tag(
            check_key(key) if key is not None else None,
            _label(layer, "layer"),
            _label(route, "route"),
            _label(model, "model"),
            metadata,
        )

    @staticmethod
    def _hold_id(hold_id: object) -> int:
        return _row_id(hold_id, "hold_id")

    @staticmethod
    def _receipt(out: _ops.Outcome) -> Receipt:
        return Receipt(
            entry=Entry.from_row(out.entry),
            replayed=out.replayed,
            available_micros=out.available,
            grant=Grant.from_row(out.grant) if out.grant is not None else None,
            hold=Hold.from_row(out.hold) if out.hold is not None else None,
        )


def _sweeper(account_id: str, now: int) -> Callable[[Conn], Awaitable[None]]:
    async def sweep_one(conn: Conn) -> None:
        ctx = await lock(conn, account_id, now)
        await sweep(ctx)
        await save(ctx)

    return sweep_one


_SQLITE_INTEGRITY: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)


def _integrity_errors() -> tuple[type[BaseException], ...]:
    """The drivers' constraint violations. asyncpg's only once something imported it (a
    PostgreSQL ledger did): ``import credit_middleware`` never loads an optional driver."""
    asyncpg = sys.modules.get("asyncpg")
    error = getattr(asyncpg, "IntegrityConstraintViolationError", None)
    return _SQLITE_INTEGRITY if error is None else (sqlite3.IntegrityError, error)


class _guarded:
    """A write transaction whose constraint violations surface as ``LedgerError``."""

    def __init__(self, executor: Executor, *, write: bool = True) -> None:
        self._cm = executor.transaction() if write else executor.read()

    async def __aenter__(self) -> Conn:
        return await self._cm.__aenter__()

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> None:
        try:
            await self._cm.__aexit__(et, exc, tb)
        except _integrity_errors() as err:
            raise LedgerError(f"refused by a ledger constraint: {err}") from err
        if isinstance(exc, _integrity_errors()):
            raise LedgerError(f"refused by a ledger constraint: {exc}") from exc
