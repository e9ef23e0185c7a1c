"""What settling a bill needs, handed to it by the middleware (built once, read per request)."""

from __future__ import annotations

from collections.abc import Collection

from ..events import Observer
from ..ledger import Ledger
from .keepalive import KeepAlive
from .outcomes import Outcomes

__all__ = ["Settlement"]


class Settlement:
    """The ledger and its helpers, and the options that decide what a served request owes and
    how its response is kept: a bill reads these, never the middleware that admitted it."""

    __slots__ = (
        "balance_name",
        "billable_statuses",
        "hold_timeout",
        "idempotency_ttl",
        "keepalive",
        "leases",
        "ledger",
        "max_stored_body",
        "observer",
        "outcomes",
        "refund_on_error",
    )

    def __init__(
        self,
        *,
        ledger: Ledger,
        outcomes: Outcomes,
        keepalive: KeepAlive,
        observer: Observer,
        billable_statuses: Collection[int],
        refund_on_error: bool,
        hold_timeout: float,
        idempotency_ttl: float,
        leases: tuple[float, float],
        max_stored_body: int,
        balance_header: str,
    ) -> None:
        self.ledger = ledger
        self.outcomes = outcomes
        self.keepalive = keepalive
        self.observer = observer
        self.billable_statuses = billable_statuses
        self.refund_on_error = refund_on_error
        self.hold_timeout = hold_timeout
        self.idempotency_ttl = idempotency_ttl
        #: how long an attempt may go unrenewed before a retry with its key may take over its
        #: charge: (a fixed-price call, quick: a worker that died with it frees its key soon;
        #: a held or handler-billed one, an LLM call, may run as long as its hold); renewed
        #: while the attempt runs (:mod:`.keepalive`)
        self.leases = leases
        self.max_stored_body = max_stored_body
        #: the balance header's name as it goes on the wire
        self.balance_name = balance_header.lower().encode("latin-1")

    def billable(self, status: int) -> bool:
        """Only what was served is billed: the billable statuses (2xx by default), and a 5xx
        unless refunds on errors are on."""
        if status in self.billable_statuses:
            return True
        return status >= 500 and not self.refund_on_error
