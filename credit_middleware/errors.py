"""One error tree, rooted at :class:`CreditError`, each error carrying what a caller needs."""

from __future__ import annotations

from decimal import Decimal

__all__ = [
    "AccountNotFound",
    "BackendUnavailable",
    "ChargeVoided",
    "ConfigurationError",
    "CreditError",
    "HoldNotActive",
    "HoldNotFound",
    "IdempotencyConflict",
    "IdempotencyInFlight",
    "IdempotencyMismatch",
    "InsufficientCredits",
    "InvalidAccountId",
    "InvalidAmount",
    "LedgerError",
    "RateLimited",
]


class CreditError(Exception):
    """Base of every error this library raises on purpose."""


class ConfigurationError(CreditError):
    """The library was configured in a way that cannot work; the message says what to change."""


class InvalidAmount(CreditError, ValueError):
    """An amount that is not a finite, positive, exactly representable number of credits."""


class InvalidAccountId(CreditError, ValueError):
    """An account id that is empty, too long, or holds control characters."""


class LedgerError(CreditError):
    """A ledger operation was refused; nothing was written."""


class AccountNotFound(LedgerError, LookupError):
    """The account does not exist (yet): provisioning has not reached this user."""

    def __init__(self, account_id: str) -> None:
        super().__init__(f"no credit account {account_id!r}")
        self.account_id = account_id


class InsufficientCredits(LedgerError):
    """The available balance cannot cover the amount; no money moved."""

    def __init__(
        self,
        account_id: str,
        *,
        required: Decimal,
        available: Decimal,
        tier: str | None = None,
        reason: str | None = None,
    ) -> None:
        msg = f"account {account_id!r} needs {required} credits, {available} available"
        if reason:
            msg += f" ({reason})"
        super().__init__(msg)
        self.account_id = account_id
        self.required = required
        self.available = available
        self.tier = tier
        self.reason = reason


class IdempotencyConflict(LedgerError):
    """An idempotency key was reused for a different operation or amount."""

    def __init__(self, account_id: str, key: str, detail: str) -> None:
        super().__init__(f"idempotency key {key!r} on account {account_id!r}: {detail}")
        self.account_id = account_id
        self.key = key


class IdempotencyMismatch(IdempotencyConflict):
    """An ``Idempotency-Key`` was reused for a different request (another fingerprint)."""


class IdempotencyInFlight(IdempotencyConflict):
    """The first request with this ``Idempotency-Key`` is still being served."""


class ChargeVoided(LedgerError):
    """The charge id was voided (its caller answered "nothing charged"): it can never apply."""

    def __init__(self, account_id: str, key: str) -> None:
        super().__init__(f"charge {key!r} on account {account_id!r} was voided")
        self.account_id = account_id
        self.key = key


class HoldNotFound(LedgerError, LookupError):
    """No hold with that id exists for the account."""

    def __init__(self, hold_id: int) -> None:
        super().__init__(f"no hold {hold_id}")
        self.hold_id = hold_id


class HoldNotActive(LedgerError):
    """The hold was already captured, released or expired."""

    def __init__(self, hold_id: int, status: str) -> None:
        super().__init__(f"hold {hold_id} is {status}")
        self.hold_id = hold_id
        self.status = status


class RateLimited(CreditError):
    """A rate limit was hit; ``retry_after`` is in whole seconds."""

    def __init__(self, limit: str, retry_after: int) -> None:
        super().__init__(f"rate limit {limit} exceeded, retry after {retry_after}s")
        self.limit = limit
        self.retry_after = retry_after


class BackendUnavailable(CreditError):
    """A database or Redis call failed or timed out; the operation may be retried."""

    def __init__(self, backend: str, detail: str, *, maybe_applied: bool = False) -> None:
        super().__init__(f"{backend} unavailable: {detail}")
        self.backend = backend
        self.detail = detail
        #: True when the failure came after the operation reached the database (a lost
        #: connection, a timeout mid-statement): it may have committed, so its outcome is
        #: unknown until resolved by its key.
        self.maybe_applied = maybe_applied
