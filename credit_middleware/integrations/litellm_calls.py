"""Which LiteLLM call types are metered, and the worst-case price of one call of each.

Deny by default: a call type is either *metered* here (a hold priced from LiteLLM's own price
data, then a capture of LiteLLM's reported cost), listed *free* by the operator, or refused.
A call type LiteLLM adds tomorrow is refused until it is listed here or configured free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from .litellm_pricing import Pricer, UnknownModelPrice, usd

__all__ = ["KINDS", "Kind", "Worst", "kind_of", "worst_case"]

Kind = Literal[
    "chat",
    "text",
    "embedding",
    "responses",
    "messages",
    "image",
    "transcription",
    "speech",
    "rerank",
    "moderation",
]

#: LiteLLM call types (as the SDK and the proxy name them) that are metered, by kind.
KINDS: Mapping[str, Kind] = {
    **dict.fromkeys(("completion", "acompletion"), "chat"),
    **dict.fromkeys(("text_completion", "atext_completion"), "text"),
    **dict.fromkeys(("embedding", "aembedding", "embeddings", "aembeddings"), "embedding"),
    **dict.fromkeys(("responses", "aresponses"), "responses"),
    **dict.fromkeys(("anthropic_messages", "aanthropic_messages"), "messages"),
    **dict.fromkeys(
        ("image_generation", "aimage_generation", "image_edit", "aimage_edit"), "image"
    ),
    **dict.fromkeys(("transcription", "atranscription"), "transcription"),
    **dict.fromkeys(("speech", "aspeech"), "speech"),
    **dict.fromkeys(("rerank", "arerank"), "rerank"),
    **dict.fromkeys(("moderation", "amoderation"), "moderation"),
}

#: Kinds whose price is per token: a finished call is re-priced from its tokens when LiteLLM
#: reports no cost. The others (images, audio, rerank) fall back to their hold's estimate.
TOKEN_KINDS: frozenset[Kind] = frozenset(
    {"chat", "text", "embedding", "responses", "messages", "moderation"}
)

# The largest image LiteLLM prices and the most output tokens one image can take
# (gpt-image-1, high quality, 1536x1024): the worst case of an image whose size is not given.
_MAX_PIXELS = 1792 * 1024
_MAX_IMAGE_TOKENS = 6240
_UNIT_PRICES = (
    "input_cost_per_second",
    "output_cost_per_second",
    "input_cost_per_character",
    "output_cost_per_image",
    "input_cost_per_pixel",
    "output_cost_per_image_token",
    "input_cost_per_query",
)


def kind_of(call_type: str) -> Kind | None:
    """The metered kind of a LiteLLM call type, or None if this library cannot price it."""
    return KINDS.get(call_type)


@dataclass(frozen=True, slots=True)
class Worst:
    """The worst case of one call: its USD price, where the price came from, and the token
    counts it assumed (kept in the hold's metadata and used to re-price the capture)."""

    usd: Decimal
    source: str
    prompt_tokens: int
    max_tokens: int


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str) if value is not None else ""


def _unit_prices(pricer: Pricer, model: str, pricing: Mapping[str, Any]) -> dict[str, Decimal]:
    """LiteLLM's non-token prices of ``model`` (per second, image, query, ...), overridden by
    the deployment's own; an empty dict when LiteLLM does not know the model."""
    try:
        info: dict[str, Any] = dict(
            pricer.litellm.get_model_info(
                model=model, custom_llm_provider=pricing.get("custom_llm_provider")
            )
        )
    except Exception:
        info = {}
    info.update({k: v for k, v in pricing.items() if v is not None})
    out: dict[str, Decimal] = {}
    for key in _UNIT_PRICES:
        try:
            out[key] = usd(info[key])
        except (KeyError, ValueError):
            continue
    return out


def _pixels(size: Any) -> int:
    if isinstance(size, str) and "x" in size:
        w, _, h = size.partition("x")
        if w.isdigit() and h.isdigit() and 0 < int(w) * int(h) <= 10**8:
            return int(w) * int(h)
    return _MAX_PIXELS


def _count(value: Any, low: int = 1, high: int = 128) -> int:
    return value if isinstance(value, int) and low <= value <= high else low


def _tokens(pricer: Pricer, kind: Kind, model: str, data: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt tokens, output bound) of a token-priced request."""
    if kind == "chat" or (kind == "messages" and "system" not in data):
        return pricer.prompt_tokens(model, data), pricer.max_tokens(data)
    if kind == "messages":
        system = pricer.input_tokens(model, _text(data.get("system")))
        return pricer.prompt_tokens(model, data) + system, pricer.max_tokens(data)
    if kind == "text":
        return pricer.input_tokens(model, data.get("prompt")), pricer.max_tokens(data)
    if kind == "responses":
        given = data.get("input")
        text = given if isinstance(given, (str, list)) and not _nested(given) else _text(given)
        prompt = pricer.input_tokens(model, text)
        if data.get("instructions"):
            prompt += pricer.input_tokens(model, _text(data.get("instructions")))
        out = data.get("max_output_tokens")
        bound = out if isinstance(out, int) and out > 0 else pricer.default_max_tokens
        return prompt, bound
    if kind == "rerank":
        docs = data.get("documents")
        texts = [_text(data.get("query"))] + [_text(d) for d in docs or [] if d is not None]
        return pricer.input_tokens(model, texts), 0
    return pricer.input_tokens(model, data.get("input")), 0  # embedding, moderation


def _nested(value: list[Any] | str) -> bool:
    return isinstance(value, list) and any(not isinstance(v, (str, list)) for v in value)


def worst_case(
    pricer: Pricer,
    kind: Kind,
    model: str,
    data: Mapping[str, Any],
    pricing: Mapping[str, Any],
    *,
    max_audio_seconds: int,
) -> Worst:
    """The most one call of ``kind`` with this request body can cost, from LiteLLM's prices.

    Raises :class:`UnknownModelPrice` when LiteLLM has no price at all for the model (and no
    fallback is configured); a model LiteLLM prices at zero (moderation) costs zero here, and
    its hold is the ledger's minimum of 1 µc.
    """
    if kind == "image":
        prompt, out = pricer.input_tokens(model, _text(data.get("prompt"))), 0
    elif kind == "transcription":
        prompt, out = 0, pricer.max_tokens(data)
    elif kind == "speech":  # text in, audio tokens out (gpt-4o-mini-tts prices both)
        prompt, out = pricer.input_tokens(model, _text(data.get("input"))), pricer.max_tokens(data)
    else:
        prompt, out = _tokens(pricer, kind, model, data)
    if kind in TOKEN_KINDS:
        cost, source = pricer.price(model, prompt, out, pricing)
        return Worst(cost, source, prompt, out)
    units = _unit_prices(pricer, model, pricing)
    try:
        cost, source = pricer.price(model, prompt, out, pricing)
    except UnknownModelPrice:
        if not units:
            raise
        cost, source = Decimal(0), "litellm"
    zero = Decimal(0)
    if kind == "image":
        n = _count(data.get("n"))
        per_image = max(
            units.get("output_cost_per_image", zero),
            units.get("input_cost_per_pixel", zero) * _pixels(data.get("size")),
            units.get("output_cost_per_image_token", zero) * _MAX_IMAGE_TOKENS,
        )
        cost += per_image * n
    elif kind in ("transcription", "speech"):
        per_second = units.get("input_cost_per_second", zero) + units.get(
            "output_cost_per_second", zero
        )
        cost += per_second * max_audio_seconds
        cost += units.get("input_cost_per_character", zero) * len(_text(data.get("input")))
    elif kind == "rerank":
        cost += units.get("input_cost_per_query", zero)
    return Worst(cost, source, prompt, out)
