"""A LiteLLM proxy callback that bills every proxied call to a credit account.

In the proxy's ``config.yaml``::

    litellm_settings:
      callbacks: my_hooks.credits     # my_hooks.py: credits = CreditProxyHook.from_url(...)

Before the call (``async_pre_call_hook``) the caller's account is ensured (the failsafe layer)
and the worst-case cost held; a caller who can't cover it gets a 402 before any provider call.
After it, ``async_log_success_event`` captures LiteLLM's ``response_cost`` (re-priced from the
tokens when a stream reports zero) and ``async_log_failure_event`` releases the hold; a stream
that ends early is charged for what it generated (``async_post_call_streaming_iterator_hook``).
A hold the proxy never settles (a crash) is released by its timeout.
Importing this module imports LiteLLM (install ``credit-middleware[litellm]`` and the proxy).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping
from decimal import Decimal
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from ..errors import CreditError, InsufficientCredits
from ..identity import Identity
from ..ledger import Ledger
from ..policy import TrialPolicy
from ..provisioning import Provisioner
from .litellm_meter import Meter, MeteredCall
from .litellm_pricing import UnknownModelPrice
from .litellm_stream import _Tally

__all__ = ["CreditProxyHook", "end_user", "key_owner"]

log = logging.getLogger("credit_middleware.litellm")

#: Who pays for a proxied call: an identity (or account id), or None when nobody can be named.
Identify = Callable[[Any, Mapping[str, Any]], "Identity | str | None"]

_CHAT = frozenset({"completion", "acompletion", "text_completion", "atext_completion"})
_EMBED = frozenset({"embedding", "aembedding", "embeddings"})


def key_owner(user_api_key_dict: Any, data: Mapping[str, Any]) -> Identity | None:
    """The default payer: the user who owns the proxy key. The request's ``user`` field is
    chosen by the caller, so it never decides who pays unless you pass :func:`end_user`."""
    user_id = getattr(user_api_key_dict, "user_id", None)
    if not isinstance(user_id, str) or not user_id:
        return None
    email = getattr(user_api_key_dict, "user_email", None)
    return Identity(user_id, email=email if isinstance(email, str) else None, source="litellm")


def end_user(user_api_key_dict: Any, data: Mapping[str, Any]) -> Identity | None:
    """Bill the request's end user (``user`` in the body), then the key's owner: for platforms
    whose keys are their own backends, passing their users' ids."""
    who = data.get("user") or getattr(user_api_key_dict, "end_user_id", None)
    if isinstance(who, str) and who:
        return Identity(who, source="litellm")
    return key_owner(user_api_key_dict, data)


def _refuse(status: int, kind: str, message: str, **extra: Any) -> HTTPException:
    return HTTPException(
        status_code=status, detail={"error": {"message": message, "type": kind, **extra}}
    )


class CreditProxyHook(CustomLogger):
    """Ensure + hold before each proxied call, capture or release after it.

    Options as for :class:`~credit_middleware.integrations.litellm.CreditedLLM`, plus
    ``identify(user_api_key_dict, data)`` choosing the payer (default :func:`key_owner`) and
    ``balance_header`` (the remaining-credit response header).
    """

    def __init__(
        self,
        provisioner: Provisioner,
        *,
        identify: Identify = key_owner,
        price_multipliers: Mapping[str, Decimal] | None = None,
        default_max_tokens: int = 4096,
        hold_timeout: float = 600.0,
        unknown_model_price: Decimal | None = None,
        credits_per_usd: Decimal = Decimal(1),
        balance_header: str = "Credit-Balance",
    ) -> None:
        super().__init__()
        self.meter = Meter(
            provisioner,
            price_multipliers=price_multipliers,
            default_max_tokens=default_max_tokens,
            hold_timeout=hold_timeout,
            unknown_model_price=unknown_model_price,
            credits_per_usd=credits_per_usd,
        )
        self.identify = identify
        self.balance_header = balance_header
        # litellm_call_id -> (its open hold, when the ledger will have released it anyway)
        self._calls: OrderedDict[str, tuple[MeteredCall, float]] = OrderedDict()

    @classmethod
    def from_url(
        cls, database_url: str, *, policy: TrialPolicy | None = None, **options: Any
    ) -> CreditProxyHook:
        """A hook on its own ledger (run ``credit-middleware migrate`` first)."""
        return cls(Provisioner(Ledger(database_url), policy), **options)

    # ------------------------------------------------------------------ before the call

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any] | None:
        if call_type not in _CHAT and call_type not in _EMBED:
            return data  # images, audio, ...: not metered by this hook
        try:
            who = self.identify(user_api_key_dict, data)
        except CreditError as exc:
            raise _refuse(400, "invalid_account", str(exc)) from None
        if who is None:
            raise _refuse(401, "no_credit_account", "this key names no user to bill")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            return data  # the proxy itself refuses a call without a model
        meter = self.meter
        if call_type in _CHAT:
            prompt = (
                meter.prompt_tokens(model, data)
                if "messages" in data
                else meter.input_tokens(model, data.get("prompt"))
            )
            out: int | None = meter.max_tokens(data)
        else:
            prompt, out = meter.input_tokens(model, data.get("input")), 0
        request_id = data.get("litellm_call_id")
        if not isinstance(request_id, str) or not request_id:
            request_id = data["litellm_call_id"] = str(uuid.uuid4())
        pricing: dict[str, Any] = {
            k: data[k] for k in ("input_cost_per_token", "output_cost_per_token") if k in data
        }
        try:
            call = await meter.begin(
                who,
                model=model,
                prompt_tokens=prompt,
                max_tokens=out,
                request_id=request_id,
                pricing=pricing,
            )
        except InsufficientCredits as exc:
            raise _refuse(
                402,
                "insufficient_credits",
                str(exc),
                required=str(exc.required),
                available=str(exc.available),
                tier=exc.tier,
            ) from None
        except UnknownModelPrice as exc:
            raise _refuse(400, "unknown_model_price", str(exc)) from None
        self._remember(request_id, call)
        metadata = data.get("metadata")
        if isinstance(metadata, dict):
            metadata["credit_account_id"] = call.account_id
            metadata["credit_hold_id"] = call.hold_id
        return data

    # ------------------------------------------------------------------ after the call

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
        slo = kwargs.get("standard_logging_object") or {}
        usage = getattr(response_obj, "usage", None)
        prompt = int(slo.get("prompt_tokens") or getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(
            slo.get("completion_tokens") or getattr(usage, "completion_tokens", 0) or 0
        )
        cost, source = self.meter.actual_cost(
            call.model,
            call.pricing,
            kwargs.get("response_cost"),
            prompt or call.prompt_tokens,
            completion,
            call.estimate_usd,
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
        metadata = data.get("metadata")
        account = metadata.get("credit_account_id") if isinstance(metadata, dict) else None
        if not isinstance(account, str):
            return None
        try:
            balance = await self.meter.ledger.balance(account)
        except Exception:
            return None
        return {self.balance_header: str(balance.available)}

    async def drain(self) -> None:
        """Wait for settlements still running in the background."""
        await self.meter.drain()
