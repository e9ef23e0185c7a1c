"""The one idempotent operation every layer calls: make sure a user has an account.

Signup (eager), the middleware (lazy, first request), the LiteLLM integration (failsafe) and
the IdP webhook all call :meth:`Provisioner.ensure_account`. Exactly one trial grant per
account is guaranteed by the database (a fixed grant key and a unique index), whatever the
number of layers, processes or concurrent requests; the lock only spares the database the herd.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Literal

from ..events import NULL_OBSERVER, Observer
from ..identity.resolvers import Identity
from ..ledger import Ledger
from ..ledger.models import Account
from .locks import LocalLocks, ProvisionLocks
from .policy import TrialDecision, TrialPolicy

__all__ = ["Layer", "ProvisionResult", "Provisioner"]

log = logging.getLogger("credit_middleware.provisioning")

Layer = Literal["signup", "request", "litellm", "webhook", "admin", "cli"]
LATE_GRANT_WINDOW = 60.0
#: how long this process trusts what it knows of an account (its tier, a denied trial)
KNOWN_TTL = 60.0
LAYERS: tuple[str, ...] = ("signup", "request", "litellm", "webhook", "admin", "cli")


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    """``created``: this call opened the account; ``granted``: it gave the trial grant."""

    account_id: str
    layer: str
    created: bool
    granted: bool
    tier: str
    amount: Decimal
    cohort: str | None = None
    reason: str | None = None


class Provisioner:
    """Ensures accounts exist, with one trial grant each, ever."""

    def __init__(
        self,
        ledger: Ledger,
        policy: TrialPolicy | None = None,
        *,
        locks: ProvisionLocks | None = None,
        known_cache_size: int = 10_000,
        observer: Observer | None = None,
    ) -> None:
        self.ledger = ledger
        self.policy = policy or TrialPolicy()
        self.locks: ProvisionLocks = locks or LocalLocks()
        # account -> (tier, why its trial was denied or None): what this process knows settled
        # (kept for KNOWN_TTL seconds: an account's tier can change, by a purchase say)
        self._known: OrderedDict[str, tuple[str, str | None, float]] = OrderedDict()
        self._known_max = known_cache_size
        # account -> monotonic time of a late grant made here: concurrent requests that were
        # refused a moment before it landed try their charge once more
        self._late: OrderedDict[str, float] = OrderedDict()
        self.observer = observer or NULL_OBSERVER

    def _remember(self, account_id: str, tier: str, denied: str | None = None) -> None:
        self._known[account_id] = (tier, denied, time.monotonic() + KNOWN_TTL)
        self._known.move_to_end(account_id)
        while len(self._known) > self._known_max:
            self._known.popitem(last=False)

    def granted_late(self, account_id: str, within: float = LATE_GRANT_WINDOW) -> bool:
        """Whether this process granted the account's trial late in the last ``within`` s."""
        at = self._late.get(account_id)
        return at is not None and time.monotonic() - at < within

    def _settled(self, account_id: str) -> tuple[str, str | None, float] | None:
        known = self._known.get(account_id)
        if known is not None and known[2] <= time.monotonic():
            del self._known[account_id]
            return None
        return known

    def forget(self, account_id: str) -> None:
        self._known.pop(account_id, None)

    def may_reconsider(self, identity: Identity | str) -> bool:
        """Whether ``ensure_account`` could still give this identity a trial its account was
        denied (e.g. its e-mail is verified now), without I/O: False for an identity the
        policy would not reconsider, or one whose account this process knows is settled."""
        ident = Identity.of(identity)
        known = self._settled(ident.account_id)
        if known is not None:
            return self.policy.reconsiders(known[1], ident)
        # unknown here: worth one read if any earlier refusal could be cured by this identity
        return self.policy.reconsiders("email_not_verified", ident)

    async def ensure_account(
        self, identity: Identity | str, *, layer: Layer, missing: bool = False
    ) -> ProvisionResult:
        """Open the account and give its trial grant if it has none; otherwise do nothing.

        Safe to call any number of times, from any layer, process or host, concurrently.
        ``missing=True`` says the caller just saw the account absent (a debit answered
        ``AccountNotFound``), which spares one lookup; it is a hint, never trusted for money.
        """
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, not {layer!r}")
        ident = Identity.of(identity)
        aid = ident.account_id
        known = self._settled(aid)
        if known is not None and not self.policy.reconsiders(known[1], ident):
            return ProvisionResult(aid, layer, False, False, known[0], Decimal(0), reason=known[1])
        try:
            account = None if missing else await self.ledger.get_account(aid)
        except Exception:
            self.observer.provisioned(layer, "failed")
            raise
        if account is None:
            return await self._locked(self._provision, ident, layer)
        denied = _denied(account)
        if self.policy.reconsiders(denied, ident):
            return await self._locked(self._reconsider, ident, layer)
        self._remember(aid, account.tier, denied)
        return ProvisionResult(
            aid, layer, False, False, account.tier, Decimal(0), account.cohort, denied
        )

    async def _locked(
        self,
        step: Callable[[Identity, str], Awaitable[ProvisionResult]],
        ident: Identity,
        layer: str,
    ) -> ProvisionResult:
        """Run a provisioning step under the account's lock and report its outcome."""
        try:
            async with self.locks.acquire(ident.account_id):
                result = await step(ident, layer)
        except Exception:
            self.observer.provisioned(layer, "failed")
            raise
        if result.created:
            outcome = "created" if result.granted else "denied"
        else:
            outcome = "late_grant" if result.granted else "existing"
        self.observer.provisioned(layer, outcome)
        return result

    async def _provision(self, ident: Identity, layer: str) -> ProvisionResult:
        aid = ident.account_id
        account = await self.ledger.get_account(aid)  # another holder of the lock may have won
        if account is not None:
            denied = _denied(account)
            if self.policy.reconsiders(denied, ident):
                return await self._reconsider(ident, layer)
            self._remember(aid, account.tier, denied)
            return ProvisionResult(
                aid, layer, False, False, account.tier, Decimal(0), account.cohort, denied
            )
        decision = await self.policy.decide(ident)
        expires = self._expiry(decision)
        meta: dict[str, object] = {"provisioned_by": layer}
        if decision.reason:
            meta["trial_denied"] = decision.reason
        if ident.email:
            meta["email_domain"] = ident.email.rsplit("@", 1)[-1][:255]
        account, created, receipt = await self.ledger.provision(
            aid,
            tier=decision.tier,
            trial_amount=decision.amount,
            trial_expires_at=expires,
            priority=decision.priority,
            cohort=decision.cohort,
            layer=layer,
            account_metadata=meta,
            grant_metadata={"cohort": decision.cohort} if decision.cohort else None,
        )
        granted = receipt is not None and not receipt.replayed
        self._remember(aid, account.tier, None if granted else _denied(account))
        if created:
            log.info(
                "provisioned account via %s (granted=%s, reason=%s)",
                layer,
                granted,
                decision.reason,
            )
            log.debug("provisioned account %r via %s", aid, layer)
        return ProvisionResult(
            aid,
            layer,
            created,
            granted,
            account.tier,
            decision.amount if granted and decision.amount is not None else Decimal(0),
            account.cohort,
            _denied(account),
        )

    async def _reconsider(self, ident: Identity, layer: str) -> ProvisionResult:
        """Decide again for an existing account whose trial was denied, under the lock.

        The trial's fixed key and the one-trial-per-account index still make this grant at
        most once, however many layers and processes reconsider at the same moment. The
        account keeps its ``trial_denied`` record (the ledger is an audit trail); the grant
        notes the refusal it replaced.
        """
        aid = ident.account_id
        account = await self.ledger.get_account(aid)
        if account is None:  # accounts are never deleted; be safe anyway
            return await self._provision(ident, layer)
        before = _denied(account)
        decision = await self.policy.decide(ident)
        if not decision.eligible:
            self._remember(aid, account.tier, decision.reason)
            return ProvisionResult(
                aid, layer, False, False, account.tier, Decimal(0), account.cohort, decision.reason
            )
        grant_meta: dict[str, object] = {"reconsidered": str(before)}
        if decision.cohort:
            grant_meta["cohort"] = decision.cohort
        _, _, receipt = await self.ledger.provision(
            aid,
            tier=account.tier,
            trial_amount=decision.amount,
            trial_expires_at=self._expiry(decision),
            priority=decision.priority,
            cohort=account.cohort,
            layer=layer,
            grant_metadata=grant_meta,
        )
        granted = receipt is not None and not receipt.replayed
        self._remember(aid, account.tier, None)
        if granted:
            self._late[aid] = time.monotonic()
            self._late.move_to_end(aid)
            while len(self._late) > self._known_max:
                self._late.popitem(last=False)
            log.info("trial granted late via %s (was denied: %s)", layer, before)
            log.debug("trial granted late to account %r via %s", aid, layer)
        amount = decision.amount if granted and decision.amount is not None else Decimal(0)
        return ProvisionResult(aid, layer, False, granted, account.tier, amount, account.cohort)

    def _expiry(self, decision: TrialDecision) -> datetime | None:
        if decision.valid_for is None:
            return None
        now = datetime.fromtimestamp(self.ledger.now_us() / 1_000_000, tz=timezone.utc)
        return now + decision.valid_for


def _denied(account: Account) -> str | None:
    """Why the account's trial was denied when it was opened, if it was."""
    reason = account.metadata.get("trial_denied") if isinstance(account.metadata, dict) else None
    return reason if isinstance(reason, str) else None
