"""The proxy hook's after-the-call half, and what a finished proxied call costs.

LiteLLM reports the cost of every call it prices in the success event's ``response_cost``
(for the deployment that served it, custom prices included). When it reports nothing or zero,
a token-priced call is re-priced from its token counts, and any other call (an image, audio)
is charged its hold's estimate: a call that cost something is never billed zero.
:class:`ProxySettlement` captures, releases, and charges streams that end early.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping
from decimal import Decimal
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from .litellm_calls import TOKEN_KINDS
from .litellm_meter import Meter, MeteredCall
from .litellm_pricing import usd
from .litellm_stream import _Tally

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


def capture_cost(
    meter: Meter,
    call: MeteredCall,
    kwargs: Mapping[str, Any],
    response: Any,
    *,
    token_priced: bool,
) -> tuple[Decimal, str, int, int]:
    """``(cost in USD, where it came from, prompt tokens, completion tokens)`` of a call."""
    slo = kwargs.get("standard_logging_object") or {}
    prompt = int(slo.get("prompt_tokens") or 0) or _usage(response, "prompt_tokens", "input_tokens")
    completion = int(slo.get("completion_tokens") or 0) or _usage(
        response, "completion_tokens", "output_tokens"
    )
    reported = kwargs.get("response_cost")
    if token_priced:
        cost, source = meter.actual_cost(
            call.model,
            call.pricing,
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
    if call.estimate_usd > 0:
        log.warning("LiteLLM reported no cost for %s: charging its estimate", call.request_id)
    return call.estimate_usd, "estimate", prompt, completion


class ProxySettlement(CustomLogger):
    """The after-the-call half of the proxy hook: capture a call's hold on LiteLLM's success
    event, release it on failure, charge a stream that ended early. Holds are found by the
    call's ``litellm_call_id``; the subclass opens them (``_remember``) and sets ``meter``
    and ``balance_header``."""

    meter: Meter
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

    def _remember(self, request_id: str, call: MeteredCall) -> None:
        now = time.monotonic()
        while self._calls:  # forget holds never settled here: their timeout released them
            oldest = next(iter(self._calls.values()))
            if oldest[1] > now:
                break
            self._calls.popitem(last=False)
        self._calls[request_id] = (call, now + self.meter.hold_timeout)

    def _pop(self, kwargs: Mapping[str, Any]) -> MeteredCall | None:
        call_id = kwargs.get("litellm_call_id")
        found = self._calls.pop(call_id, None) if isinstance(call_id, str) else None
        return found[0] if found is not None else None

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        call = self._pop(kwargs)
        if call is None:
            return
        cost, source, prompt, completion = capture_cost(
            self.meter, call, kwargs, response_obj, token_priced=call.kind in TOKEN_KINDS
        )
        try:
            await self.meter.shielded(
                self.meter.charge(
                    call, cost, prompt_tokens=prompt, completion_tokens=completion, source=source
                )
            )
        except Exception:
            log.exception("capturing proxied call %s failed", call.request_id)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await self._release(self._pop(kwargs), "provider_error")

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        # The request failed in the proxy (a later hook refused it, a router error, ...).
        await self._release(self._pop(request_data), "proxy_error")

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
        charge what was generated, since no success event will say so."""
        call_id = request_data.get("litellm_call_id")
        found = self._calls.get(call_id) if isinstance(call_id, str) else None
        if found is None:
            async for item in response:
                yield item
            return
        tally = _Tally(self.meter, found[0])
        finished = False
        try:
            async for item in response:
                tally.chunks.append(item)
                yield item
            finished = True  # the success event captures LiteLLM's own cost
        finally:
            if not finished and self._pop(request_data) is not None:
                await tally.settle("client_closed")

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
