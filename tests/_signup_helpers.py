"""Helpers shared by the signup, webhook and abuse tests."""

from __future__ import annotations

from credit_middleware import Ledger
from credit_middleware.events import Observer


class Recorder(Observer):
    """An observer that remembers what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.degradations: list[tuple[str, bool]] = []

    def provisioned(self, layer: str, outcome: str) -> None:
        self.events.append((layer, outcome))

    def degraded(self, backend: str, degraded: bool) -> None:
        self.degradations.append((backend, degraded))

    def count(self, layer: str, outcome: str) -> int:
        return self.events.count((layer, outcome))


async def trial_grants(ledger: Ledger, account_id: str) -> int:
    """How many trial grant entries the account has (the invariant says: at most one)."""
    entries = await ledger.history(account_id, limit=1000)
    return sum(1 for e in entries if e.kind == "grant" and e.key == "trial")
