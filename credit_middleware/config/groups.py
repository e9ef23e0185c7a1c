"""The option groups of :class:`~credit_middleware.Credits`: the settings few deployments
change, each group a frozen object with its defaults that checks itself when it is built.

::

    Credits(
        meter="/v1/*",
        faults=Faults(on_ledger_error="allow"),
        billing=Billing(hold_timeout=600),
        idempotency=Idempotency(ttl=3600),
    )

A value that cannot work raises :class:`ConfigurationError` saying what to change, the
moment the group is built (before any ``Credits`` exists).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, get_args

from ..errors import ConfigurationError
from ..limits.ratelimit import Strategy

__all__ = [
    "DEFAULT_LIMITS",
    "Billing",
    "Faults",
    "Headers",
    "Idempotency",
    "Lifecycle",
    "Limits",
    "positive",
]

#: The limits of a tier ``tiers`` does not name (and of the trial tier by default).
DEFAULT_LIMITS = "60/minute;1000/day"
#: The longest a hold may last (the ledger's bound).
MAX_HOLD = 7 * 86400.0


def positive(name: str, value: object, unit: str = "seconds") -> float:
    """``value`` as a float, or a :class:`ConfigurationError` naming ``name``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a positive number of {unit}, not {value!r}")
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive ({unit}), not {value!r}")
    return float(value)


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigurationError(f"{name} must be one of {list(allowed)}, not {value!r}")


def _set(group: object, name: str, value: object) -> None:
    object.__setattr__(group, name, value)  # a frozen group normalises itself once, when built


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate limits beyond the per-tier ones (``Credits(tiers=...)``): ``default`` applies to a
    tier ``tiers`` does not name (None: no limit for it); ``strategy`` is how a window counts
    (``moving-window``, ``sliding-window-counter`` or ``fixed-window``)."""

    default: str | None = DEFAULT_LIMITS
    strategy: Strategy = "moving-window"

    def __post_init__(self) -> None:
        _one_of("strategy", self.strategy, get_args(Strategy))
        if self.default is not None and not isinstance(self.default, str):
            raise ConfigurationError(f"default limits are text ('60/minute'), not {self.default!r}")


@dataclass(frozen=True, slots=True)
class Faults:
    """What a backend fault does. The database down: answer 503 with ``Retry-After``
    (``on_ledger_error="refuse"``) or serve unbilled (``"allow"``). Redis down: count per
    process (``on_redis_error="local"``) or answer 503 (``"refuse"``)."""

    on_ledger_error: Literal["refuse", "allow"] = "refuse"
    on_redis_error: Literal["local", "refuse"] = "local"

    def __post_init__(self) -> None:
        _one_of("on_ledger_error", self.on_ledger_error, ("refuse", "allow"))
        _one_of("on_redis_error", self.on_redis_error, ("local", "refuse"))


@dataclass(frozen=True, slots=True)
class Billing:
    """Which of the app's answers are billed and how long a hold lasts. ``statuses``: the
    billed HTTP statuses (2xx by default; anything else is refunded or released, the app's
    5xx included: add ``range(500, 600)`` to bill those). ``hold_timeout``: seconds a held
    (or handler-billed) call's credits stay reserved before they come back by themselves."""

    statuses: Collection[int] = range(200, 300)
    hold_timeout: float = 300.0

    def __post_init__(self) -> None:
        statuses = frozenset(self.statuses)
        valid = all(isinstance(s, int) and not isinstance(s, bool) for s in statuses)
        if not statuses or not valid or not all(100 <= s <= 599 for s in statuses):
            raise ConfigurationError("billing statuses must be HTTP statuses (100-599)")
        _set(self, "statuses", statuses)
        _set(self, "hold_timeout", positive("hold_timeout", self.hold_timeout))
        if self.hold_timeout > MAX_HOLD:
            raise ConfigurationError("hold_timeout must be at most 7 days (seconds)")

    def billable(self, status: int) -> bool:
        """Whether an answer with this status is billed."""
        return status in self.statuses


@dataclass(frozen=True, slots=True)
class Idempotency:
    """``Idempotency-Key`` requests. ``ttl``: seconds a key's answer is kept for replays (at
    least the lease). ``lease``: seconds an attempt may go without renewing its key (it renews
    it while it runs) before a retry may take its charge over; None: 30 s for a fixed-price
    call, ``Billing.hold_timeout`` for a held or handler-billed one. ``max_stored_body``: the
    largest answer kept for replays (bytes); ``max_request_body``: the largest keyed request
    (bytes; 413 beyond)."""

    ttl: float = 86400.0
    lease: float | None = None
    max_stored_body: int = 1 << 20
    max_request_body: int = 10 << 20

    def __post_init__(self) -> None:
        _set(self, "ttl", positive("idempotency ttl", self.ttl))
        if self.lease is not None:
            _set(self, "lease", positive("idempotency lease", self.lease))
        for name in ("max_stored_body", "max_request_body"):
            _set(self, name, int(positive(name, getattr(self, name), "bytes")))


@dataclass(frozen=True, slots=True)
class Headers:
    """Response headers. ``balance``: the header that carries the remaining credits;
    ``legacy_rate_limit``: also send the older ``X-RateLimit-Limit`` / ``-Remaining`` /
    ``-Reset`` headers for the closest limit."""

    balance: str = "Credit-Balance"
    legacy_rate_limit: bool = False

    def __post_init__(self) -> None:
        try:
            usable = bool(self.balance) and self.balance.isascii() and self.balance.isprintable()
        except AttributeError:
            usable = False
        if not usable or any(c in self.balance for c in " :\t"):
            raise ConfigurationError(f"balance must be an HTTP header name, not {self.balance!r}")


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """What the lifespan does. ``auto_migrate``: migrate the schema at startup and on first use
    (False when you run ``credit-middleware migrate`` yourself: an unmigrated ledger then
    answers 503). ``maintenance_interval``: seconds between rounds of upkeep (forget expired
    idempotency records, roll up the report's figures); None when cron runs
    ``credit-middleware purge`` instead."""

    auto_migrate: bool = True
    maintenance_interval: float | None = 300.0

    def __post_init__(self) -> None:
        if self.maintenance_interval is not None:
            interval = positive("maintenance_interval", self.maintenance_interval)
            _set(self, "maintenance_interval", interval)
