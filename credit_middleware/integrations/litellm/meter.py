"""Hold, then capture or release, for one LLM call: shared by the wrapper and the proxy hook.

A cost in LiteLLM's dollars is converted to credits, multiplied by the tier's markup and only
then rounded **up** to 1 µc, once, by the ledger; the unrounded figures go in metadata.

Every hold carries an idempotency key (the caller's, or a fresh one), so a hold whose outcome
is unknown (the database went away mid-write) is resolved by that key and given back; captures
and releases the ledger cannot take now wait in the :class:`~.litellm_outbox.Outbox` and land
once, later. The call itself is never failed for a settlement.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from ...errors import ConfigurationError, HoldNotActive, InsufficientCredits
from ...identity.resolvers import Identity
from ...ledger import Receipt
from ...money import check_key
from ...trials.provisioning import Provisioner
from .outbox import Outbox, is_backend_fault
from .pricing import Pricer, _positive

__all__ = ["Meter", "MeteredCall"]

log = logging.getLogger("credit_middleware.litellm")
T = TypeVar("T")
_ONE_MICRO = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class MeteredCall:
    """One LLM call between its hold and its capture or release."""

    account_id: str
    tier: str
    hold_id: int
    model: str
    request_id: str
    multiplier: Decimal
    prompt_tokens: int
    estimate_usd: Decimal
    pricing: Mapping[str, Any]
    kind: str = "chat"
    #: what a non-token estimate was computed from (image size, audio seconds, ...)
    basis: Mapping[str, Any] = field(default_factory=dict)


class Meter(Pricer):
    """Prices LLM calls and moves their money; one per wrapper or proxy hook, no globals."""

    def __init__(
        self,
        provisioner: Provisioner,
        *,
        price_multipliers: Mapping[str, Decimal] | None = None,
        default_max_tokens: int = 4096,
        hold_timeout: float = 600.0,
        unknown_model_price: Decimal | None = None,
        credits_per_usd: Decimal = Decimal(1),
    ) -> None:
        super().__init__(
            default_max_tokens=default_max_tokens, unknown_model_price=unknown_model_price
        )
        if not isinstance(hold_timeout, (int, float)) or not 0 < hold_timeout <= 7 * 86400:
            raise ConfigurationError("hold_timeout must be between 0 and 7 days (seconds)")
        self.provisioner = provisioner
        self.ledger = provisioner.ledger
        self.multipliers = {
            tier: _positive(m, f"price multiplier of tier {tier!r}")
            for tier, m in (price_multipliers or {}).items()
        }
        self.hold_timeout = float(hold_timeout)
        self.credits_per_usd = _positive(credits_per_usd, "credits_per_usd")
        self.outbox = Outbox()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: streams handed out and not yet settled (weakly: a dropped one settles in __del__)
        self.open_streams: weakref.WeakSet[Any] = weakref.WeakSet()

    def credits(self, cost_usd: Decimal, multiplier: Decimal) -> Decimal:
        return cost_usd * self.credits_per_usd * multiplier

    # ------------------------------------------------------------------ money

    async def begin(
        self,
        who: Identity | str,
        *,
        model: str,
        prompt_tokens: int,
        max_tokens: int | None,
        request_id: str,
        pricing: Mapping[str, Any],
        key: str | None = None,
        estimate: tuple[Decimal, str] | None = None,
        kind: str = "chat",
        basis: Mapping[str, Any] | None = None,
    ) -> MeteredCall:
        """Price the worst case (or take ``estimate``, USD and its source, priced by the
        caller), make sure the account exists, hold it; ``key`` makes the hold idempotent
        (without one, the hold gets a key of its own, used only to resolve a lost answer).

        Raises ``UnknownModelPrice`` or ``InsufficientCredits`` before any provider call;
        ``BackendUnavailable`` when the ledger is down (a hold it may have written anyway is
        found by its key and released once the ledger is back).
        """
        out_tokens = max_tokens if max_tokens is not None else self.default_max_tokens
        priced = estimate or self.price(model, prompt_tokens, out_tokens, pricing)
        estimate_usd, source = priced
        result = await self.provisioner.ensure_account(who, layer="litellm")
        multiplier = self.multipliers.get(result.tier, Decimal(1))
        amount = max(self.credits(estimate_usd, multiplier), _ONE_MICRO)
        meta = {
            "request_id": request_id,
            "prompt_tokens": prompt_tokens,
            "max_tokens": out_tokens,
            "estimate_usd": str(estimate_usd),
            "price_source": source,
            "kind": kind,
        }
        meta.update({k: v for k, v in (basis or {}).items() if v is not None})
        key = key or check_key(f"litellm:hold:{uuid.uuid4()}")
        try:
            receipt = await self._shielded_hold(result.account_id, amount, model, meta, key)
        except InsufficientCredits:
            self.provisioner.observer.ledger_op("hold", "insufficient")
            raise
        except Exception as exc:
            # an answer lost after the database got the hold: it may stand, so find it by
            # its key and give it back (a clean refusal, e.g. a closed ledger, wrote nothing)
            if is_backend_fault(exc) and getattr(exc, "maybe_applied", True):
                self._void_later(result.account_id, amount, model, meta, key)
            raise
        self.provisioner.observer.ledger_op("hold", "ok")
        assert receipt.hold is not None
        return MeteredCall(
            result.account_id,
            result.tier,
            receipt.hold.hold_id,
            model,
            request_id,
            multiplier,
            prompt_tokens,
            estimate_usd,
            dict(pricing),
            kind,
            dict(basis or {}),
        )

    async def _shielded_hold(
        self,
        account_id: str,
        amount: Decimal,
        model: str,
        meta: dict[str, Any],
        key: str | None = None,
    ) -> Receipt:
        task = self.spawn(self._hold(account_id, amount, model, meta, key))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # Cancelled while the hold was being written: give it back once it lands.
            task.add_done_callback(self._release_orphan)
            raise

    def _hold(
        self, account_id: str, amount: Decimal, model: str, meta: dict[str, Any], key: str | None
    ) -> Coroutine[Any, Any, Receipt]:
        return self.ledger.hold(
            account_id,
            amount,
            timeout=self.hold_timeout,
            key=key,
            round_up=True,
            layer="litellm",
            model=model[:255],
            metadata=meta,
        )

    def _release_orphan(self, task: asyncio.Task[Receipt]) -> None:
        if task.cancelled():
            return
        if task.exception() is None and task.result().hold is not None:
            hold = task.result().hold
            assert hold is not None
            self.spawn(self.release_hold(hold.hold_id, "cancelled"))

    def _void_later(
        self, account_id: str, amount: Decimal, model: str, meta: dict[str, Any], key: str
    ) -> None:
        """The hold's answer was lost: once the ledger is back, take the hold again under the
        same key (which returns the first one if it was written) and give it back."""

        async def void() -> None:
            try:
                receipt = await self._hold(account_id, amount, model, meta, key)
            except InsufficientCredits:
                return  # the first never landed, and there is nothing to hold now
            if receipt.hold is not None:
                await self._release_quietly(receipt.hold.hold_id, "refused")

        self.outbox.keep(f"void:{key}", void)

    async def charge(
        self,
        call: MeteredCall,
        cost_usd: Decimal,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        source: str,
        outcome: str = "complete",
        served: str | None = None,
    ) -> Receipt | None:
        """Capture the actual cost (times the tier's multiplier, rounded up once), entered
        under the model that ``served`` the call (a fallback, say).

        A hold that already timed out (the call outlived ``hold_timeout``) cannot be captured;
        the cost is then debited directly, up to what the balance still covers, so a slow
        call is billed rather than free. Returns None if nothing could be charged, or if the
        ledger is down: the capture is then kept and lands when it is back.
        """
        amount = self.credits(cost_usd, call.multiplier)
        meta: dict[str, Any] = {
            "request_id": call.request_id,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": str(cost_usd),
            "multiplier": str(call.multiplier),
            "price_source": source,
            "outcome": outcome,
        }
        model = served or call.model
        if served is not None and served != call.model:
            meta["held_for"] = call.model[:255]

        async def capture() -> Receipt | None:
            try:
                receipt = await self.ledger.capture(
                    call.hold_id,
                    amount,
                    round_up=True,
                    layer="litellm",
                    model=model[:255],
                    metadata=meta,
                )
            except HoldNotActive as exc:
                if exc.status != "expired":  # settled already (never twice)
                    log.warning("LLM call %s: its hold is %s", call.request_id, exc.status)
                    return None
                return await self._late_debit(call, amount, dict(meta), model)
            self.provisioner.observer.ledger_op("capture", "ok")
            return receipt

        return await self.outbox.run(f"capture:{call.hold_id}", capture)

    async def _late_debit(
        self, call: MeteredCall, amount: Decimal, meta: dict[str, Any], model: str
    ) -> Receipt | None:
        if amount <= 0:
            return None
        meta["late"] = True  # the hold timed out before the call ended
        # keyed by the hold: a retry (the outbox's, or a second settlement) debits once
        key = check_key(f"litellm:late:{call.hold_id}")
        kw: dict[str, Any] = {"key": key, "layer": "litellm", "model": model[:255]}
        try:
            receipt = await self.ledger.debit(
                call.account_id, amount, round_up=True, metadata=meta, **kw
            )
        except InsufficientCredits as exc:
            if exc.available <= 0:
                log.warning(
                    "LLM call %s outlived its hold; nothing left to charge", call.request_id
                )
                self.provisioner.observer.ledger_op("capture", "insufficient")
                return None
            meta["shortfall"] = str(amount - exc.available)
            receipt = await self.ledger.debit(call.account_id, exc.available, metadata=meta, **kw)
        self.provisioner.observer.ledger_op("debit", "ok")
        return receipt

    async def release(self, call: MeteredCall, reason: str) -> None:
        """Give the call's hold back (kept for later if the ledger is down)."""
        await self.release_hold(call.hold_id, reason)

    async def release_hold(self, hold_id: int, reason: str) -> None:
        await self.outbox.run(f"release:{hold_id}", lambda: self._release_quietly(hold_id, reason))

    async def _release_quietly(self, hold_id: int, reason: str) -> None:
        try:
            await self.ledger.release(hold_id, reason=reason)
            self.provisioner.observer.ledger_op("release", "ok")
        except HoldNotActive:
            pass  # already captured: nothing to give back

    # ------------------------------------------------------------------ tasks

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` to completion even if whoever awaits it is cancelled."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.shield(self.spawn(coro))

    async def drain(self) -> None:
        """Wait for settlements still running in the background (abandoned streams, shields),
        and retry those the ledger could not take yet (once: they stay queued if it is down)."""
        await asyncio.sleep(0)  # let settlements scheduled by dropped streams start
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.outbox.pending:
            await self.outbox.flush()
