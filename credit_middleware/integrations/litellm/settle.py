"""The proxy hook's after-the-call half, and what a finished proxied call costs.

LiteLLM reports the cost of every call it prices in the success event's ``response_cost``, for
the deployment that answered (a fallback's, after the primary failed; custom prices included),
and that is what is captured, under that deployment's name. When it reports nothing or zero,
the call is priced here from the deployment that answered: tokens for token-priced calls, the
images returned at the size and quality asked for, the audio's measured length; its hold's
estimate only as the last resort. A call that cost something is never billed zero.

A deployment failing is not the call failing: the router may retry it or fall back to another
group, whose success event then captures the same hold. The hold is released when the proxy
says the request failed (``async_post_call_failure_hook``, which every metered route calls).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping
from decimal import Decimal
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from .calls import TOKEN_KINDS, per_second, unit_prices
from .media import image_price
from .meter import Meter, MeteredCall
from .pricing import usd
from .routes import Deployment, proxy_router, served_by
from .stream import _Tally

__all__ = ["ProxySettlement", "capture_cost"]

log = logging.getLogger("credit_middleware.litellm")

#: Hooks LiteLLM's proxy looks up in a callback's own class only.
_PROXY_HOOKS = (
    "async_pre_call_hook",
    "async_post_call_response_headers_hook",
    "async_post_call_streaming_iterator_hook",
    "async_post_call_failure_hook",
    "async_log_success_event",
    "async_log_failure_event",
    "log_pre_api_call",
)


def _usage(response: Any, *names: str) -> int:
    usage = getattr(response, "usage", None)
    if usage is None and isinstance(response, Mapping):
        usage = response.get("usage")
    for name in names:
        value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _images(response: Any) -> int:
    data = getattr(response, "data", None)
    if data is None and isinstance(response, Mapping):
        data = response.get("data")
    return len(data) if isinstance(data, list) else 0


def _media_cost(meter: Meter, call: MeteredCall, served: Deployment, response: Any) -> Decimal:
    """A non-token call priced here: the images it returned, or its audio's length."""
    basis = call.basis
    if call.kind == "image":
        n = _images(response) or int(basis.get("n") or 1)
        price = image_price(
            meter,
            served.model,
            served.pricing,
            size=basis.get("size"),
            quality=basis.get("quality"),
            n=n,
        )
        return price if price is not None else Decimal(0)
    seconds = basis.get("audio_seconds")
    if call.kind == "transcription" and isinstance(seconds, (int, float)) and seconds > 0:
        per = per_second(unit_prices(meter, served.model, served.pricing))
        return per * Decimal(repr(float(seconds)))
    return Decimal(0)


def capture_cost(
    meter: Meter,
    call: MeteredCall,
    kwargs: Mapping[str, Any],
    response: Any,
    served: Deployment | None = None,
) -> tuple[Decimal, str, int, int]:
    """``(cost in USD, where it came from, prompt tokens, completion tokens)`` of a call
    answered by ``served`` (the deployment priced at the hold when None)."""
    served = served or Deployment(call.model, dict(call.pricing), call.model)
    slo = kwargs.get("standard_logging_object") or {}
    prompt = int(slo.get("prompt_tokens") or 0) or _usage(response, "prompt_tokens", "input_tokens")
    completion = int(slo.get("completion_tokens") or 0) or _usage(
        response, "completion_tokens", "output_tokens"
    )
    reported = kwargs.get("response_cost")
    if call.kind in TOKEN_KINDS:
        cost, source = meter.actual_cost(
            served.model,
            served.pricing,
            reported,
            prompt or call.prompt_tokens,
            completion,
            call.estimate_usd,
        )
        return cost, source, prompt, completion
    try:
        exact = usd(reported) if reported is not None else None
    except ValueError:
        exact = None
    if exact:
        return exact, "litellm", prompt, completion
    priced = _media_cost(meter, call, served, response)
    if priced > 0:
        return priced, "priced", prompt, completion
    if call.estimate_usd > 0:
        log.warning("LiteLLM reported no cost for %s: charging its estimate", call.request_id)
    return call.estimate_usd, "estimate", prompt, completion


class ProxySettlement(CustomLogger):
    """The after-the-call half of the proxy hook: capture a call's hold on LiteLLM's success
    event (at the cost of the deployment that answered), release it when the request failed,
    charge a stream that ended early. Holds are found by the call's ``litellm_call_id``; the
    subclass opens them (``_remember``) and sets ``meter``, ``router`` and
    ``balance_header``."""

    meter: Meter
    router: Any
    balance_header: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The proxy decides which hooks a callback has from its own class's __dict__, not
        # its bases': an inherited hook is silently skipped (a subclass of the hook would
        # serve calls unbilled). So every subclass gets them in its own __dict__.
        super().__init_subclass__(**kwargs)
        for name in _PROXY_HOOKS:
            if name not in cls.__dict__ and hasattr(cls, name):
                setattr(cls, name, getattr(cls, name))

    def __init__(self) -> None:
        super().__init__()
        # litellm_call_id -> (its open hold, when the ledger will have released it anyway)
        self._calls: OrderedDict[str, tuple[MeteredCall, float]] = OrderedDict()

    def _open(self, call_id: object) -> bool:
        """Whether a call with this id holds credits now (its id is the client's to choose:
        a second one in flight must not take the first one's hold)."""
        self._forget_expired()
        return isinstance(call_id, str) and call_id in self._calls

    def _forget_expired(self) -> None:
        now = time.monotonic()
        while self._calls:  # holds never settled here: their timeout released them
            oldest = next(iter(self._calls.values()))
            if oldest[1] > now:
                break
            self._calls.popitem(last=False)

    def _remember(self, request_id: str, call: MeteredCall) -> None:
        self._forget_expired()
        self._calls[request_id] = (call, time.monotonic() + self.meter.hold_timeout)

    def _pop(self, kwargs: Mapping[str, Any]) -> MeteredCall | None:
        call_id = kwargs.get("litellm_call_id")
        found = self._calls.pop(call_id, None) if isinstance(call_id, str) else None
        return found[0] if found is not None else None

    def _router(self) -> Any:
        return self.router or proxy_router()

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        call = self._pop(kwargs)
        if call is None:
            return
        try:
            served = served_by(self._router(), kwargs)
            cost, source, prompt, completion = capture_cost(
                self.meter, call, kwargs, response_obj, served
            )
            await self.meter.shielded(
                self.meter.charge(
                    call,
                    cost,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    source=source,
                    served=served.model if served is not None else None,
                )
            )
        except Exception:
            log.exception("capturing proxied call %s failed", call.request_id)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """One deployment failed: the router may still retry or fall back, and the call that
        answers then captures this hold. It is released when the request fails as a whole."""
        call_id = kwargs.get("litellm_call_id")
        if isinstance(call_id, str) and call_id in self._calls:
            log.info("proxied call %s: a deployment failed (%s)", call_id, kwargs.get("model"))

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        # The request failed: every deployment and fallback, a later hook, the router, ...
        await self._release(self._pop(request_data), "failed")

    async def _release(self, call: MeteredCall | None, reason: str) -> None:
        if call is None:
            return
        try:
            await self.meter.shielded(self.meter.release(call, reason))
        except Exception:
            log.exception("releasing the hold of proxied call %s failed", call.request_id)

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        """Pass a stream through; if it ends early (the client left, the provider broke off),
        charge what was generated, since no success event will say so. The settlement never
        breaks the stream: one the ledger cannot take now is kept for later."""
        call_id = request_data.get("litellm_call_id")
        found = self._calls.get(call_id) if isinstance(call_id, str) else None
        if not hasattr(response, "__aiter__"):
            yield response  # not a stream after all (a mocked Responses API answers whole)
            return
        if found is None:
            async for item in response:
                yield item
            return
        tally = _Tally(self.meter, found[0], served=self._served_stream(response))
        finished = False
        try:
            async for item in response:
                tally.chunks.append(item)
                yield item
            finished = True  # the success event captures LiteLLM's own cost
        finally:
            if not finished and self._pop(request_data) is not None:
                await tally.settle("client_closed")

    def _served_stream(self, response: Any) -> Deployment | None:
        hidden = getattr(response, "_hidden_params", None)
        model_id = hidden.get("model_id") if isinstance(hidden, Mapping) else None
        if not isinstance(model_id, str):
            return None
        return served_by(self._router(), {"litellm_params": {"model_info": {"id": model_id}}})

    async def async_post_call_response_headers_hook(
        self,
        data: dict[str, Any],
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        """The account's available credits (after this call's hold, before its capture)."""
        account = None
        for field in ("metadata", "litellm_metadata"):
            metadata = data.get(field)
            if isinstance(metadata, dict) and isinstance(metadata.get("credit_account_id"), str):
                account = metadata["credit_account_id"]
        if account is None:
            return None
        try:
            balance = await self.meter.ledger.balance(account)
        except Exception:  # a header is not worth failing the answer for
            log.warning("no balance header for %s", account, exc_info=True)
            return None
        return {self.balance_header: str(balance.available)}
