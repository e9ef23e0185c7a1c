"""The answers of ``credit_begin()`` and ``credit_finish()`` (``_pgrequests``), read back as
what the generic path returns or raises: the same results, the same errors in the same words.
``None`` means ``slow``: the generic path must decide."""

from __future__ import annotations

import json
from typing import Any, Literal

from ..errors import (
    AccountNotFound,
    ChargeVoided,
    HoldNotActive,
    HoldNotFound,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InsufficientCredits,
    LedgerError,
)
from ..money import from_micros
from ._executor import Row
from ._requests import IN_FLIGHT, MISMATCH, stored
from .models import Entry, Hold, Receipt

__all__ = ["SLOW", "Slow", "begun", "finished", "refuse"]


class Slow:
    """``credit_finish()`` said ``slow``: the generic path must run."""


SLOW = Slow()


def _receipt(row: Row, replayed: bool) -> Receipt:
    hold = None if row["o_hold"] is None else Hold.from_row(json.loads(row["o_hold"]))
    entry = Entry.from_row(json.loads(row["o_entry"]))
    return Receipt(entry, replayed, int(row["o_available"]), hold=hold)


def refuse(account_id: str, key: str | None, status: str, row: Row, micros: int | None) -> None:
    """Raise what the generic path raises for a charge the server refused (``not_found``,
    ``voided``: ``key``, the charge id, was fenced; ``insufficient``); return otherwise."""
    if status == "not_found":
        raise AccountNotFound(account_id)
    if status == "voided":
        assert key is not None
        raise ChargeVoided(account_id, key)
    if status == "insufficient":
        assert micros is not None
        raise InsufficientCredits(
            account_id,
            required=from_micros(micros),
            available=from_micros(max(0, int(row["o_available"]))),
            tier=row["o_tier"],
        )


def begun(
    row: Row, account_id: str, key: str, owner: str, micros: int | None
) -> tuple[Literal["new", "resumed", "replay"], Receipt | None, Any, str | None] | None:
    """(state, receipt, stored response, charge key) of a ``credit_begin()`` for a request
    key, None for ``slow``; raises its refusals."""
    status = row["o_status"]
    if status == "slow":
        return None
    refuse(account_id, owner, status, row, micros)
    if status == "mismatch":
        raise IdempotencyMismatch(account_id, key, MISMATCH)
    if status == "inflight":
        raise IdempotencyInFlight(account_id, key, IN_FLIGHT)
    if status == "replay":
        response = stored(
            {
                "status": row["o_code"],
                "headers": row["o_headers"],
                "body": row["o_body"],
                "body_size": row["o_size"],
            }
        )
        return "replay", None, response, row["o_charge"]
    state: Literal["new", "resumed"] = "new" if status in ("new", "ok") else "resumed"
    if row["o_entry"] is None:  # a claim without a charge
        return state, None, None, row["o_charge"]
    # ``standing``: resumed, served under the charge a crashed attempt left (found, not made)
    return state, _receipt(row, status == "standing"), None, row["o_charge"]


def finished(row: Row, hold_id: int | None) -> Receipt | Slow | None:
    """The receipt of a ``credit_finish()`` (None when it moved no money), ``SLOW``; raises
    its refusals."""
    status = row["o_status"]
    if status == "slow":
        return SLOW
    if status == "not_owned" or (hold_id is None and status == "ok"):
        return None
    assert hold_id is not None
    if status == "hold_not_found":
        raise HoldNotFound(hold_id)
    if status == "not_active":
        raise HoldNotActive(hold_id, row["o_entry"])
    if status not in ("ok", "replayed"):
        raise LedgerError(f"unexpected answer {status!r} from the ledger")
    return _receipt(row, status == "replayed")
