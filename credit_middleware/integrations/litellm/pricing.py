"""What an LLM call costs, from LiteLLM's own price map, in exact ``Decimal`` dollars.

LiteLLM prices calls in US dollars as floats. A float is read here at 15 significant digits
(the noise below that is dropped); a model LiteLLM has no price for is priced at the configured
fallback or refused with :class:`UnknownModelPrice`, never billed zero.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from decimal import Decimal
from types import ModuleType
from typing import Any

from ..._extras import optional
from ...errors import ConfigurationError, CreditError

__all__ = ["Pricer", "UnknownModelPrice", "load_litellm", "usd"]


def load_litellm() -> ModuleType:
    """Import LiteLLM on first use, with its bundled price map (no download at import)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return optional("litellm", "the LiteLLM integration needs litellm", "litellm")


class UnknownModelPrice(CreditError):
    """LiteLLM has no price for the model and no fallback price is configured: the call is
    refused before it is made, rather than billed zero."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"no price known for model {model!r}: add it to LiteLLM's price map, set the"
            " deployment's prices (input_cost_per_token/output_cost_per_token,"
            " output_cost_per_image, input_cost_per_second, ...) in its model_info or"
            " litellm_params, or configure unknown_model_price (tokens)"
        )
        self.model = model


def usd(value: object) -> Decimal:
    """LiteLLM's cost (a float, usually) as an exact ``Decimal``; refuses NaN and negatives."""
    if isinstance(value, Decimal):
        dec = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cost {value!r} is not finite")
        dec = Decimal(format(value, ".15g"))
    elif isinstance(value, int) and not isinstance(value, bool):
        dec = Decimal(value)
    else:
        raise ValueError(f"cost must be a number, not {type(value).__name__}")
    if not dec.is_finite() or dec < 0:
        raise ValueError(f"cost {dec} must be finite and not negative")
    return dec


def _positive(value: object, field: str) -> Decimal:
    try:
        dec = usd(value)
    except ValueError as exc:
        raise ConfigurationError(f"{field}: {exc}") from None
    if dec <= 0:
        raise ConfigurationError(f"{field} must be positive, got {dec}")
    return dec


class Pricer:
    """Token counts and prices for LLM calls (LiteLLM's tokenizers and price map)."""

    def __init__(
        self, *, default_max_tokens: int = 4096, unknown_model_price: Decimal | None = None
    ) -> None:
        if not isinstance(default_max_tokens, int) or not 0 < default_max_tokens <= 10**7:
            raise ConfigurationError("default_max_tokens must be an int between 1 and 10,000,000")
        self.default_max_tokens = default_max_tokens
        self.unknown_model_price = (
            None
            if unknown_model_price is None
            else _positive(unknown_model_price, "unknown_model_price")
        )
        self.litellm = load_litellm()

    def price(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        pricing: Mapping[str, Any],
        usage: Any = None,
        *,
        allow_zero: bool = False,
        fallback: bool = True,
    ) -> tuple[Decimal, str]:
        """The USD cost of so many tokens (or of a LiteLLM ``Usage``, which also prices cached
        and reasoning tokens), and where the price came from: ``litellm``, ``custom`` (per-call
        prices in the kwargs) or ``fallback`` (``unknown_model_price`` per 1,000 tokens).

        A model LiteLLM prices at zero counts as unpriced unless ``allow_zero``: inside the
        proxy the router registers every deployment in LiteLLM's price map, so a model it has
        no price for reads as free there. Prices the operator configured win, zero included.
        """
        custom = {
            k: pricing[k]
            for k in ("input_cost_per_token", "output_cost_per_token")
            if pricing.get(k) is not None
        }
        try:
            p, c = self.litellm.cost_per_token(
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                custom_llm_provider=pricing.get("custom_llm_provider"),
                custom_cost_per_token=custom or None,
                usage_object=usage,
            )
            cost = usd(p) + usd(c)
        except Exception:
            cost = None
        free = allow_zero or prompt_tokens + completion_tokens == 0
        if cost is not None and (cost > 0 or custom or free):
            return cost, "custom" if custom else "litellm"
        if self.unknown_model_price is None or not fallback:
            raise UnknownModelPrice(model)
        return self.unknown_model_price * (prompt_tokens + completion_tokens) / 1000, "fallback"

    def prompt_tokens(self, model: str, kwargs: Mapping[str, Any]) -> int:
        """Tokens of a chat call's messages (and tools), counted by LiteLLM's tokenizer."""
        messages = kwargs.get("messages") or []
        try:
            return int(
                self.litellm.token_counter(
                    model=model,
                    messages=messages,
                    tools=kwargs.get("tools"),
                    tool_choice=kwargs.get("tool_choice"),
                )
            )
        except Exception:  # an odd message shape: over-estimate from its size
            return len(json.dumps(messages, default=str)) // 2 + 1

    def input_tokens(self, model: str, data: Any) -> int:
        """Tokens of an embedding's or a text completion's input (strings or token lists)."""
        items = data if isinstance(data, list) else [data]
        total = 0
        for item in items:
            if isinstance(item, str):
                try:
                    total += int(self.litellm.token_counter(model=model, text=item))
                except Exception:
                    total += len(item) // 2 + 1
            elif isinstance(item, list):  # already tokens
                total += len(item)
        return max(total, 1)

    def max_tokens(self, kwargs: Mapping[str, Any]) -> int:
        """The call's output bound, or ``default_max_tokens``."""
        for key in ("max_completion_tokens", "max_tokens"):
            value = kwargs.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return self.default_max_tokens

    def actual_cost(
        self,
        model: str,
        pricing: Mapping[str, Any],
        reported: object,
        prompt_tokens: int,
        completion_tokens: int,
        estimate: Decimal,
    ) -> tuple[Decimal, str]:
        """The cost of a finished call: what LiteLLM reported, or, when it reported nothing or
        zero (a known failure for streams), its tokens priced here; the estimate as a last
        resort. Never zero for a priced model that produced tokens."""
        try:
            cost = usd(reported) if reported is not None else None
        except ValueError:
            cost = None
        if cost:
            return cost, "litellm"
        try:
            return self.price(model, prompt_tokens, completion_tokens, pricing)
        except Exception:
            return estimate, "estimate"
