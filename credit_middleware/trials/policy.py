"""Which trial a new account gets: tier, amount, validity, eligibility and cohort."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from ..errors import ConfigurationError
from ..identity.resolvers import Identity
from ..money import to_micros

__all__ = ["TrialDecision", "TrialPolicy"]

#: An extra eligibility check: returns a refusal reason, or None to allow.
EligibilityCheck = Callable[[Identity], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class TrialDecision:
    """What a new account gets. ``amount`` is None when it is not eligible (see ``reason``)."""

    tier: str
    amount: Decimal | None
    valid_for: timedelta | None
    priority: int
    cohort: str | None = None
    reason: str | None = None

    @property
    def eligible(self) -> bool:
        return self.amount is not None


@dataclass(frozen=True)
class TrialPolicy:
    """The trial every new user gets, exactly once: by default tier ``trial``, 5.0 credits
    (about 5,000 calls at 0.001), valid 30 days.

    ``cohorts`` maps a cohort name to its trial amount; each account lands in one cohort by a
    stable hash of its id, so the same user always gets the same cohort. ``checks`` are extra
    async eligibility checks (the per-IP trial cap is one); an ineligible identity still gets an
    account (0 credits, reason recorded), so it sees a clear 402 rather than a 404.
    """

    tier: str = "trial"
    amount: Decimal = Decimal("5.0")
    valid_for: timedelta | None = timedelta(days=30)
    priority: int = 0
    require_verified_email: bool = False
    cohorts: Mapping[str, Decimal] | None = None
    checks: tuple[EligibilityCheck, ...] = field(default=())

    def __post_init__(self) -> None:
        try:
            to_micros(self.amount, field="trial amount")
            for name, amount in (self.cohorts or {}).items():
                to_micros(amount, field=f"cohort {name!r} amount")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if self.valid_for is not None and self.valid_for <= timedelta(0):
            raise ConfigurationError("valid_for must be positive (or None for no expiry)")
        if self.cohorts is not None and not self.cohorts:
            raise ConfigurationError("cohorts must name at least one cohort (or be None)")

    def cohort_of(self, account_id: str) -> str | None:
        """A stable cohort for the account: the same id always lands in the same cohort."""
        if not self.cohorts:
            return None
        names = sorted(self.cohorts)
        digest = hashlib.sha256(account_id.encode("utf-8")).digest()
        return names[int.from_bytes(digest[:8], "big") % len(names)]

    def reconsiders(self, reason: str | None, identity: Identity) -> bool:
        """Whether an account whose trial was denied for ``reason`` is decided again for this
        identity: a user refused for an unverified e-mail gets the trial once a credential
        says the e-mail is verified. Other refusals (an IP cap, a custom check) stand."""
        return reason == "email_not_verified" and identity.email_verified is True

    async def decide(self, identity: Identity) -> TrialDecision:
        cohort = self.cohort_of(identity.account_id)
        amount = self.cohorts[cohort] if self.cohorts and cohort else self.amount
        reason: str | None = None
        if self.require_verified_email and identity.email_verified is not True:
            reason = "email_not_verified"
        else:
            for check in self.checks:
                reason = await check(identity)
                if reason:
                    break
        return TrialDecision(
            tier=self.tier,
            amount=None if reason else amount,
            valid_for=self.valid_for,
            priority=self.priority,
            cohort=cohort,
            reason=reason,
        )
