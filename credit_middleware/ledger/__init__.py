"""The credit ledger: exact micro-credit money, grants, holds and an append-only audit trail."""

from __future__ import annotations

from ._pgschema import DEFAULT_SCHEMA, postgres_schema
from ._search import RouteUsage
from ._tiers import Purchase, TierChange
from .contract import ChargeSpec, RequestStart, StoredResponse
from .ledger import Ledger
from .models import Account, Balance, Discrepancy, Entry, Grant, Hold, Receipt, VerifyReport

__all__ = [
    "DEFAULT_SCHEMA",
    "Account",
    "Balance",
    "ChargeSpec",
    "Discrepancy",
    "Entry",
    "Grant",
    "Hold",
    "Ledger",
    "Purchase",
    "Receipt",
    "RequestStart",
    "RouteUsage",
    "StoredResponse",
    "TierChange",
    "VerifyReport",
    "postgres_schema",
]
