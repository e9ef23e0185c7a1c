"""What the suite relies on from the charge contract, in one place.

If the middleware renames a header or changes how a charge id is spelled, change it here. The
reconciliation needs nothing else from the responses; from the ledger it reads
``credit_entries`` (kind, amount, delta, idempotency_key, ref_entry_id, created_at in µs) and
``credit_grants`` (source ``trial``), and runs ``Ledger.verify()``.
"""

from __future__ import annotations

import re

#: Sent on every attempt of a logical call (the same value on its retries).
IDEMPOTENCY_KEY = "Idempotency-Key"
#: ``true`` on a stored response replayed for an exact retry (no new charge).
REPLAYED = "Idempotent-Replayed"
#: The charge id of a metered request (also on a 503: the id that was *not* charged); the
#: ledger entry of its debit carries it as ``idempotency_key``.
CHARGE_ID = "Credit-Charge-Id"
#: What the request cost; absent or 0 on a replay.
COST = "Credit-Cost"
#: Required on every 503: a 503 without it is an undocumented 5xx.
RETRY_AFTER = "Retry-After"

#: Entries that take money for a call; a reversal (a ``refund``) whose ``ref_entry_id`` names
#: one of them cancels it (a debit+refund pair is "not charged"). Holds and releases move no
#: balance.
CHARGE_KINDS = ("debit", "capture")
REVERSAL_KINDS = ("refund",)
TRIAL_SOURCE = "trial"

#: Statuses a client retries with the same key: 503 after ``Retry-After``, 409 (the first
#: attempt is still in flight) a little later. Everything else is a final answer.
RETRY_STATUSES = (503, 409)
#: the shape of the suite's own keys (uuid4 hex)
CLIENT_KEY = re.compile(r"[0-9a-f]{32}")
#: the shape of a charge id the middleware makes (``Credit-Charge-Id``), also found inside the
#: key of a hold the handler took for it (the example's chat route: ``litellm:<charge id>``)
CHARGE_ID_SHAPE = re.compile(r"c_[0-9a-f]{24}")


def is_replay(headers: dict[str, str]) -> bool:
    """Whether a response says it is a stored replay."""
    return headers.get(REPLAYED.lower(), "").strip().lower() == "true"


def charge_ids_in(entry_key: str | None) -> list[str]:
    """The charge ids an entry's key may contain (a hold keyed in a namespace of its own)."""
    return CHARGE_ID_SHAPE.findall(entry_key or "")


def client_keys_in(entry_key: str | None) -> list[str]:
    """The client ``Idempotency-Key`` values an entry's key may contain: the middleware derives
    the charge id of a keyed request from the key (main spells it ``idem:<key>``). The suite's
    keys are 32 hex digits, so a match cannot be another call's key."""
    return CLIENT_KEY.findall(entry_key or "")
