"""What the hook prices, and from what: audio by the file's own length, images per image by
size, quality and count from LiteLLM's table or the deployment's prices, every deployment a
call may fall back to, and nothing at zero unless someone said so."""

from __future__ import annotations

import io
import os
from decimal import Decimal
from typing import Any

import pytest
from _litellm_helpers import wav

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download

import litellm
from litellm.router import Router

from credit_middleware import Ledger, Provisioner
from credit_middleware.integrations.litellm.calls import worst_case
from credit_middleware.integrations.litellm.media import audio_seconds, image_price
from credit_middleware.integrations.litellm.pricing import Pricer, UnknownModelPrice
from credit_middleware.integrations.litellm.routes import reachable, served_by

pytestmark = pytest.mark.filterwarnings(
    "ignore:Item '.*' on TypedDict class '.*' is using the `ReadOnly` qualifier:UserWarning"
)


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


def test_audio_is_measured_from_the_file() -> None:
    assert audio_seconds(("a.wav", wav(2.5)), cap=3600) == (2.5, "measured")
    upload = io.BytesIO(wav(1.0))
    upload.name = "b.wav"
    upload.seek(5)
    assert audio_seconds(upload, cap=3600) == (1.0, "measured")
    assert upload.tell() == 5  # the proxy reads the same file object after the hook


def test_audio_of_unknown_length_is_bounded_by_its_size() -> None:
    """16 kB of mp3 lasts at most 16 s at 8 kbit/s, the lowest mp3 rate; never beyond the cap."""
    assert audio_seconds(("talk.mp3", b"\xff\xfb" + b"\0" * 15998), cap=3600) == (16.0, "bound")
    assert audio_seconds(("talk.mp3", b"\0" * 10**6), cap=60) == (60.0, "bound")
    assert audio_seconds(None, cap=600) == (600.0, "assumed")


def test_transcription_holds_the_seconds_it_will_be_billed(pricer: Pricer) -> None:
    w = worst_case(
        pricer,
        "transcription",
        "whisper-1",
        {"file": ("a.wav", wav(2.0))},
        {},
        max_audio_seconds=3600,
    )
    assert w.usd == Decimal("0.0002")  # $0.0001 a second, as LiteLLM bills whisper-1
    assert w.basis["audio_seconds"] == 2.0


def test_images_are_priced_per_image_by_size_and_quality(pricer: Pricer) -> None:
    table = litellm.model_cost
    low = Decimal(repr(table["low/1024-x-1024/gpt-image-1"]["input_cost_per_image"]))
    price = image_price(pricer, "gpt-image-1", {}, size="1024x1024", quality="low", n=3)
    assert price == 3 * low
    dearest = Decimal(repr(table["high/1024-x-1024/gpt-image-1"]["input_cost_per_image"]))
    assert image_price(pricer, "gpt-image-1", {}, size="1024x1024", quality=None, n=1) == dearest


def test_an_image_model_nothing_prices_is_refused_unless_configured(pricer: Pricer) -> None:
    """LiteLLM 1.108's table has no openai/dall-e-3: no price, not a free image."""
    data = {"prompt": "a ledger", "n": 2, "size": "1024x1024"}
    with pytest.raises(UnknownModelPrice):
        worst_case(pricer, "image", "openai/dall-e-3", data, {}, max_audio_seconds=60)
    priced = worst_case(
        pricer,
        "image",
        "openai/dall-e-3",
        data,
        {"output_cost_per_image": 0.04},
        max_audio_seconds=60,
    )
    assert priced.usd == Decimal("0.08")


def test_a_zero_price_is_no_price_unless_the_operator_set_it(pricer: Pricer) -> None:
    """Inside the proxy LiteLLM lists every deployment in its price map, priced or not, so a
    model it reads as free is refused; prices in the deployment's config win, zero included."""
    litellm.register_model({"my-private-model": {"litellm_provider": "openai", "mode": "chat"}})
    try:
        with pytest.raises(UnknownModelPrice):
            pricer.price("openai/my-private-model", 10, 10, {})
        with pytest.raises(UnknownModelPrice):
            pricer.price("ollama/llama3", 10, 10, {})  # LiteLLM: $0 (self-hosted)
        free = {"input_cost_per_token": 0, "output_cost_per_token": 0}
        assert pricer.price("ollama/llama3", 10, 10, free) == (Decimal(0), "custom")
    finally:
        litellm.model_cost.pop("my-private-model", None)
    moderation = worst_case(
        pricer, "moderation", "omni-moderation-latest", {"input": "hi"}, {}, max_audio_seconds=1
    )
    assert moderation.usd == 0  # OpenAI's moderation is free, and LiteLLM says so


def _router(**settings: Any) -> Router:
    def deployment(name: str, model: str) -> dict[str, Any]:
        return {"model_name": name, "litellm_params": {"model": model, "api_key": "sk-x"}}

    return Router(
        model_list=[
            deployment("cheap", "openai/gpt-4o-mini"),
            deployment("cheap", "openai/gpt-4.1-mini"),
            deployment("pricey", "openai/gpt-4o"),
            deployment("dearest", "openai/gpt-4.1"),
            deployment("long", "openai/gpt-4.1-nano"),
        ],
        **settings,
    )


def test_every_fallback_is_a_deployment_the_call_may_reach() -> None:
    router = _router(
        fallbacks=[{"cheap": ["pricey"]}, {"pricey": ["dearest"]}],
        context_window_fallbacks=[{"cheap": ["long"]}],
    )
    models = {d.model for d in reachable(router, "cheap", {})}
    assert models == {
        "openai/gpt-4o-mini",
        "openai/gpt-4.1-mini",
        "openai/gpt-4o",
        "openai/gpt-4.1",  # a fallback's fallback
        "openai/gpt-4.1-nano",
    }
    assert {d.model for d in reachable(router, "cheap", {"disable_fallbacks": True})} == {
        "openai/gpt-4o-mini",
        "openai/gpt-4.1-mini",
    }
    client_side = reachable(router, "pricey", {"fallbacks": ["long"]})
    assert {d.group for d in client_side} == {"pricey", "dearest", "long"}
    generic = _router(fallbacks=[{"*": ["dearest"]}])
    assert "openai/gpt-4.1" in {d.model for d in reachable(generic, "long", {})}


def test_the_deployment_that_answered_is_found_by_its_model_id() -> None:
    router = _router()
    registry = getattr(router, "registry", None)  # LiteLLM >= 1.110 deprecates get_model_list
    group = registry().deployments("pricey") if registry else router.get_model_list("pricey")
    [pricey] = group or []
    served = served_by(
        router, {"standard_logging_object": {"model_id": pricey["model_info"]["id"]}}
    )
    assert served is not None and (served.model, served.group) == ("openai/gpt-4o", "pricey")
    assert served_by(router, {}) is None


@pytest.mark.anyio
async def test_the_hold_covers_the_dearest_fallback(ledger: Ledger) -> None:
    from litellm.caching.dual_cache import DualCache
    from litellm.proxy._types import UserAPIKeyAuth

    from credit_middleware.integrations.litellm.proxy import CreditProxyHook

    router = _router(fallbacks=[{"cheap": ["pricey"]}])
    hook = CreditProxyHook(Provisioner(ledger), router=router)
    messages = [{"role": "user", "content": "hi"}]
    data: dict[str, Any] = {"model": "cheap", "messages": messages, "max_tokens": 100}
    data.update(litellm_call_id="c-1", metadata={})
    await hook.async_pre_call_hook(
        user_api_key_dict=UserAPIKeyAuth(api_key="k", user_id="ann"),
        cache=DualCache(),
        data=data,
        call_type="acompletion",
    )
    [hold] = await ledger.holds("ann")
    prompt = litellm.token_counter(model="openai/gpt-4o", messages=messages)
    p, c = litellm.cost_per_token(
        model="openai/gpt-4o", prompt_tokens=prompt, completion_tokens=100
    )
    assert hold.amount_micros == int(
        ((Decimal(repr(p)) + Decimal(repr(c))) * 10**6).to_integral_value(rounding="ROUND_CEILING")
    )
    await hook.async_post_call_failure_hook(data, RuntimeError("done"), None)
