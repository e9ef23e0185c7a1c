"""What a finished proxied call costs: LiteLLM's own ``response_cost``, re-priced when missing.

LiteLLM reports the cost of every call it prices in the success event's ``response_cost``
(for the deployment that served it, custom prices included). When it reports nothing or zero,
a token-priced call is re-priced from its token counts, and any other call (an image, audio)
is charged its hold's estimate: a call that cost something is never billed zero.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .litellm_meter import Meter, MeteredCall
from .litellm_pricing import usd

__all__ = ["capture_cost"]

log = logging.getLogger("credit_middleware.litellm")


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
