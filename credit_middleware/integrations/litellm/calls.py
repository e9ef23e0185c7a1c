"""Which LiteLLM call types are metered, and the worst-case price of one call of each.

Deny by default: a call type is either *metered* here (a hold priced from LiteLLM's own price
data, then a capture of LiteLLM's reported cost), listed *free* by the operator, or refused.
A call type LiteLLM adds tomorrow is refused until it is listed here or configured free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from .media import IMAGE_SIZES, audio_seconds, image_price, speech_seconds
from .pricing import Pricer, UnknownModelPrice, usd

__all__ = ["KINDS", "Kind", "Worst", "kind_of", "per_second", "unit_prices", "worst_case"]

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

# The most output tokens one image can take (gpt-image-1, high quality, 1536x1024): the worst
# case of a model priced per image token that LiteLLM's per-image table does not list.
_MAX_IMAGE_TOKENS = 6240
_UNIT_PRICES = (
    "input_cost_per_second",
    "output_cost_per_second",
    "cost_per_second",
    "input_cost_per_character",
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
    #: what a non-token price was computed from (image size and quality, audio seconds): the
    #: capture prices the call the same way when LiteLLM reports no cost
    basis: Mapping[str, Any] = field(default_factory=dict)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str) if value is not None else ""


def unit_prices(pricer: Pricer, model: str, pricing: Mapping[str, Any]) -> dict[str, Decimal]:
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


def _sizes(data: Mapping[str, Any]) -> tuple[Any, ...]:
    size = data.get("size")
    return (size,) if isinstance(size, str) and size not in ("", "auto") else IMAGE_SIZES


def worst_case(
    pricer: Pricer,
    kind: Kind,
    model: str,
    data: Mapping[str, Any],
    pricing: Mapping[str, Any],
    *,
    max_audio_seconds: int,
) -> Worst:
    """The most one call of ``kind`` with this request body can cost, from LiteLLM's prices
    (the deployment's own first).

    Raises :class:`UnknownModelPrice` when nothing prices the call: no price, or a price of
    zero (LiteLLM lists every proxied deployment, priced or not), unless the operator set
    one. Moderation is the exception: LiteLLM prices OpenAI's at zero (it is free), held at
    the ledger's minimum of 1 µc.
    """
    if kind in TOKEN_KINDS:
        prompt, out = _tokens(pricer, kind, model, data)
        zero_ok = kind == "moderation" and _mode(pricer, model, pricing) == "moderation"
        cost, source = pricer.price(model, prompt, out, pricing, allow_zero=zero_ok)
        return Worst(cost, source, prompt, out)
    units = unit_prices(pricer, model, pricing)
    zero = Decimal(0)
    basis: dict[str, Any] = {}
    if kind == "image":
        prompt, out = pricer.input_tokens(model, _text(data.get("prompt"))), 0
        n = _count(data.get("n"))
        q = data.get("quality")
        found = [image_price(pricer, model, pricing, size=s, quality=q, n=n) for s in _sizes(data)]
        prices = [p for p in found if p is not None]
        # LiteLLM's table by size and quality; a model priced only per image token, at the
        # most tokens an image takes
        per_token = units.get("output_cost_per_image_token", zero) * _MAX_IMAGE_TOKENS * n
        media = max(prices) if prices else per_token
        basis = {"size": data.get("size"), "quality": data.get("quality"), "n": n}
    elif kind == "transcription":
        prompt, out = 0, pricer.max_tokens(data)
        seconds, how = audio_seconds(data.get("file"), cap=max_audio_seconds)
        media = per_second(units) * Decimal(repr(seconds))
        basis = {"audio_seconds": seconds, "audio_length": how}
    elif kind == "speech":  # text in, audio out: per character, per second or per token
        text = _text(data.get("input"))
        prompt, out = pricer.input_tokens(model, text), pricer.max_tokens(data)
        seconds = speech_seconds(text, cap=max_audio_seconds)
        media = per_second(units) * Decimal(seconds)
        media += units.get("input_cost_per_character", zero) * len(text)
    else:  # rerank
        prompt, out = _tokens(pricer, kind, model, data)
        media = units.get("input_cost_per_query", zero)
    try:  # the token part (gpt-image-1's prompt, gpt-4o-transcribe's text, ...)
        cost, source = pricer.price(model, prompt, out, pricing, fallback=media <= 0)
    except UnknownModelPrice:
        cost, source = zero, "custom" if _configured(pricing) else "litellm"
    if media <= 0 and (kind == "image" or cost <= 0):
        raise UnknownModelPrice(model)  # an image with no image price is not a free image
    return Worst(cost + media, source, prompt, out, basis)


def per_second(units: Mapping[str, Decimal]) -> Decimal:
    """The price of one second of audio: LiteLLM bills one of its per-second prices."""
    keys = ("cost_per_second", "input_cost_per_second", "output_cost_per_second")
    return max((units[k] for k in keys if k in units), default=Decimal(0))


def _configured(pricing: Mapping[str, Any]) -> bool:
    return any(k != "custom_llm_provider" for k in pricing)


def _mode(pricer: Pricer, model: str, pricing: Mapping[str, Any]) -> str | None:
    try:
        info = pricer.litellm.get_model_info(
            model=model, custom_llm_provider=pricing.get("custom_llm_provider")
        )
    except Exception:
        return None
    mode = info.get("mode") if isinstance(info, Mapping) else None
    return mode if isinstance(mode, str) else None
