"""LiteLLM calls paid from credit accounts: the failsafe provisioning layer.

``CreditedLLM(provisioner).acompletion(user, model=..., messages=...)`` makes sure the user has
an account (``ensure_account(layer="litellm")``), holds the worst-case cost of the call (prompt
tokens plus ``max_tokens`` at LiteLLM's own prices) and refuses with ``InsufficientCredits``
before any provider call when the balance can't cover it; after the call it captures the actual
cost, or releases the hold on error, timeout or cancellation. Streams are passed through chunk
by chunk (:class:`CreditedStream`) and billed for what they produced, however they end: read
to the end, closed early, dropped (settled when collected) or still open at ``aclose()``.
A capture or release the ledger cannot take (it is down) is kept and lands once it is back:
the call is never failed, nor a stream broken, for its settlement.
``completion()``/``embedding()`` are the synchronous twins (see ``litellm_sync``).

LiteLLM is an optional extra and is imported only when a ``CreditedLLM`` is built.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ...identity.resolvers import Identity
from ...ledger import Receipt
from ...money import check_key, cost_to_micros, from_micros
from ...trials.provisioning import Provisioner
from .meter import Meter, MeteredCall
from .pricing import UnknownModelPrice
from .stream import CreditedStream
from .sync import Portal, SyncCreditedStream

__all__ = ["CreditedLLM", "CreditedStream", "SyncCreditedStream", "UnknownModelPrice"]

log = logging.getLogger("credit_middleware.litellm")

#: Keyword arguments of a LiteLLM call that change its price.
_PRICING_KEYS = ("input_cost_per_token", "output_cost_per_token", "custom_llm_provider")


class CreditedLLM:
    """LiteLLM's ``acompletion``/``aembedding``, metered against an account's credits.

    ``price_multipliers`` maps a tier to a markup on LiteLLM's cost (``{"pro": Decimal("1.5")}``);
    ``credits_per_usd`` converts LiteLLM's dollars to credits (1 by default).
    ``default_max_tokens`` bounds the hold when a call gives no ``max_tokens``; ``hold_timeout``
    (seconds) is how long a crashed caller's hold lives before its credits come back.
    ``unknown_model_price`` (dollars, like LiteLLM's prices, per 1,000 tokens, prompt and
    completion alike) prices models LiteLLM doesn't know;
    without it such calls are refused with :class:`UnknownModelPrice`, never billed zero.
    """

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
        self.meter = Meter(
            provisioner,
            price_multipliers=price_multipliers,
            default_max_tokens=default_max_tokens,
            hold_timeout=hold_timeout,
            unknown_model_price=unknown_model_price,
            credits_per_usd=credits_per_usd,
        )
        self._lm = self.meter.litellm
        self._portal = Portal()

    # ------------------------------------------------------------------ public

    def estimate(self, *, tier: str | None = None, **kwargs: Any) -> Decimal:
        """The hold a completion call with these arguments would take, in credits."""
        model = _model(kwargs)
        cost, _ = self.meter.price(
            model,
            self.meter.prompt_tokens(model, kwargs),
            self.meter.max_tokens(kwargs),
            _pricing(kwargs),
        )
        multiplier = self.meter.multipliers.get(tier or "", Decimal(1))
        micros, _ = cost_to_micros(self.meter.credits(cost, multiplier))
        return from_micros(max(micros, 1))

    async def acompletion(
        self, who: Identity | str, *, key: str | None = None, **kwargs: Any
    ) -> Any:
        """``litellm.acompletion(**kwargs)`` paid by ``who``.

        Returns LiteLLM's response, with the capture's :class:`Receipt` in
        ``response._hidden_params["credit_receipt"]``; or, with ``stream=True``, a
        :class:`CreditedStream`. Raises ``InsufficientCredits`` / ``UnknownModelPrice`` before
        any provider call, and LiteLLM's own errors (after releasing the hold). ``key`` (the
        request's charge id, say) makes the hold idempotent: a retry with the same key holds
        nothing more.
        """
        model = _model(kwargs)
        kwargs["litellm_call_id"] = request_id = _request_id(kwargs)
        stream = bool(kwargs.get("stream"))
        if stream and "stream_options" not in kwargs and self._reports_stream_usage(kwargs):
            kwargs["stream_options"] = {"include_usage": True}
        call = await self.meter.begin(
            who,
            model=model,
            prompt_tokens=self.meter.prompt_tokens(model, kwargs),
            max_tokens=self.meter.max_tokens(kwargs),
            request_id=request_id,
            pricing=_pricing(kwargs),
            key=_hold_key(key),
        )
        response = await self._call(call, self._lm.acompletion, kwargs)
        if stream:
            return CreditedStream(self.meter, call, response)
        return await self._settle(call, response)

    async def aembedding(
        self, who: Identity | str, *, key: str | None = None, **kwargs: Any
    ) -> Any:
        """``litellm.aembedding(**kwargs)`` paid by ``who``: the input tokens are held, then
        the actual cost captured (receipt in ``response._hidden_params["credit_receipt"]``);
        ``key`` as for :meth:`acompletion`."""
        model = _model(kwargs)
        kwargs["litellm_call_id"] = request_id = _request_id(kwargs)
        call = await self.meter.begin(
            who,
            model=model,
            prompt_tokens=self.meter.input_tokens(model, kwargs.get("input")),
            max_tokens=0,
            request_id=request_id,
            pricing=_pricing(kwargs),
            key=_hold_key(key),
        )
        response = await self._call(call, self._lm.aembedding, kwargs)
        return await self._settle(call, response)

    def completion(self, who: Identity | str, **kwargs: Any) -> Any:
        """:meth:`acompletion` for synchronous code (a :class:`SyncCreditedStream` with
        ``stream=True``), run on this wrapper's own event loop; refused inside a running loop.
        """
        result = self._portal.run(self.acompletion(who, **kwargs))
        if isinstance(result, CreditedStream):
            return SyncCreditedStream(self._portal, result)
        return result

    def embedding(self, who: Identity | str, **kwargs: Any) -> Any:
        """:meth:`aembedding` for synchronous code (see :meth:`completion`)."""
        return self._portal.run(self.aembedding(who, **kwargs))

    def close(self) -> None:
        """End the synchronous API: settle what is open, close the ledger's connections made
        on its loop (the ledger stays usable: it reconnects on next use) and stop the loop."""
        if self._portal.started:
            self._portal.run(self._shutdown(close_ledger=True))
            self._portal.stop()

    async def drain(self) -> None:
        """Wait for settlements still running in the background (e.g. abandoned streams)."""
        await self.meter.drain()

    async def aclose(self) -> None:
        """At shutdown: settle every stream still open (with a warning: it should have been
        closed), then wait for the settlements; call it from the app's lifespan."""
        await self._shutdown(close_ledger=False)

    async def _shutdown(self, *, close_ledger: bool) -> None:
        loop = asyncio.get_running_loop()
        for stream in list(self.meter.open_streams):
            if stream.settled or stream._loop is not loop:
                continue
            log.warning(
                "LLM stream %s still open at shutdown: charging what it generated",
                stream.request_id,
            )
            await stream.aclose(outcome="abandoned")
        await self.meter.drain()
        await self.meter.outbox.close()
        if close_ledger:
            await self.meter.ledger.close()
            self.meter.ledger.reopen()

    # ------------------------------------------------------------------ internals

    async def _call(self, call: MeteredCall, fn: Any, kwargs: dict[str, Any]) -> Any:
        try:
            return await fn(**kwargs)
        except BaseException as exc:
            reason = "provider_error" if isinstance(exc, Exception) else "cancelled"
            await self.meter.shielded(self.meter.release(call, reason))
            raise

    async def _settle(self, call: MeteredCall, response: Any) -> Any:
        receipt = await self.meter.shielded(self._capture(call, response))
        hidden = getattr(response, "_hidden_params", None)
        if isinstance(hidden, dict):
            hidden["credit_receipt"] = receipt
        return response

    async def _capture(self, call: MeteredCall, response: Any) -> Receipt | None:
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        hidden = getattr(response, "_hidden_params", None) or {}
        reported = hidden.get("response_cost")
        if reported is None:
            try:
                reported = self._lm.completion_cost(completion_response=response)
            except Exception:
                reported = None
        cost, source = self.meter.actual_cost(
            call.model,
            call.pricing,
            reported,
            prompt or call.prompt_tokens,
            completion,
            call.estimate_usd,
        )
        if source == "estimate":
            log.warning("no price for call %s: charging its estimate", call.request_id)
        return await self.meter.charge(
            call, cost, prompt_tokens=prompt, completion_tokens=completion, source=source
        )

    def _reports_stream_usage(self, kwargs: Mapping[str, Any]) -> bool:
        try:
            params = self._lm.get_supported_openai_params(
                model=kwargs["model"], custom_llm_provider=kwargs.get("custom_llm_provider")
            )
        except Exception:
            return False
        return bool(params) and "stream_options" in params


def _model(kwargs: Mapping[str, Any]) -> str:
    model = kwargs.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("a LiteLLM call needs model=<name>")
    return model


def _pricing(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in _PRICING_KEYS if kwargs.get(k) is not None}


def _hold_key(key: str | None) -> str | None:
    """The hold's idempotency key, in a namespace of its own (``litellm:<key>``)."""
    return None if key is None else check_key(f"litellm:{key}")


def _request_id(kwargs: Mapping[str, Any]) -> str:
    given = kwargs.get("litellm_call_id")
    if isinstance(given, str) and 0 < len(given) <= 200 and given.isprintable():
        return given
    return str(uuid.uuid4())
