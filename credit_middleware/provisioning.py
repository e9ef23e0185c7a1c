"""The one idempotent operation every layer calls: make sure a user has an account.

Signup (eager), the middleware (lazy, first request), the LiteLLM integration (failsafe) and
the IdP webhook all call :meth:`Provisioner.ensure_account`. Exactly one trial grant per
account is guaranteed by the database (a fixed grant key and a unique index), whatever the
number of layers, processes or concurrent requests; the lock only spares the database the herd.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Literal

from .events import NULL_OBSERVER, Observer
from .identity import Identity
from .ledger import Ledger
from .locks import LocalLocks, ProvisionLocks
from .policy import TrialPolicy

__all__ = ["Layer", "ProvisionResult", "Provisioner"]

log = logging.getLogger("credit_middleware.provisioning")

Layer = Literal["signup", "request", "litellm", "webhook", "admin", "cli"]
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
        self._known: OrderedDict[str, str] = OrderedDict()
        self._known_max = known_cache_size
        self.observer = observer or NULL_OBSERVER

    def _remember(self, account_id: str, tier: str) -> None:
        self._known[account_id] = tier
        self._known.move_to_end(account_id)
        while len(self._known) > self._known_max:
            self._known.popitem(last=False)

    def forget(self, account_id: str) -> None:
        self._known.pop(account_id, None)

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
        tier = self._known.get(aid)
        if tier is not None:
            return ProvisionResult(aid, layer, False, False, tier, Decimal(0))
        try:
            account = None if missing else await self.ledger.get_account(aid)
        except Exception:
            self.observer.provisioned(layer, "failed")
            raise
        if account is None:
            try:
                async with self.locks.acquire(aid):
                    result = await self._provision(ident, layer)
            except Exception:
                self.observer.provisioned(layer, "failed")
                raise
            outcome = "existing"
            if result.created:
                outcome = "created" if result.granted else "denied"
            self.observer.provisioned(layer, outcome)
            return result
        self._remember(aid, account.tier)
        return ProvisionResult(aid, layer, False, False, account.tier, Decimal(0), account.cohort)

    async def _provision(self, ident: Identity, layer: str) -> ProvisionResult:
        aid = ident.account_id
        account = await self.ledger.get_account(aid)  # another holder of the lock may have won
        if account is not None:
            self._remember(aid, account.tier)
            return ProvisionResult(
                aid, layer, False, False, account.tier, Decimal(0), account.cohort
            )
        decision = await self.policy.decide(ident)
        now = datetime.fromtimestamp(self.ledger.now_us() / 1_000_000, tz=timezone.utc)
        expires = now + decision.valid_for if decision.valid_for is not None else None
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
        self._remember(aid, account.tier)
        granted = receipt is not None and not receipt.replayed
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
            account.metadata.get("trial_denied") if isinstance(account.metadata, dict) else None,
        )
