"""What settling a bill needs, handed to it by the middleware (built once, read per request)."""

from __future__ import annotations

from collections.abc import Callable

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
        "billable",
        "hold_timeout",
        "idempotency_ttl",
        "keepalive",
        "leases",
        "ledger",
        "max_stored_body",
        "observer",
        "outcomes",
    )

    def __init__(
        self,
        *,
        ledger: Ledger,
        outcomes: Outcomes,
        keepalive: KeepAlive,
        observer: Observer,
        billable: Callable[[int], bool],
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
        #: whether an answer with this status is billed (the configuration's ``Billing``:
        #: only what was served, 2xx by default, not the app's 4xx, redirects, 5xx)
        self.billable = billable
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
