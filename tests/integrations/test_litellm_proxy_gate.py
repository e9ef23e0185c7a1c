"""The proxy hook's gate, on SQLite and PostgreSQL: every call type is metered or refused (deny
by default), aliases are priced at the deployment the router calls, and setup faults, outages
and keys without a user get clear refusals, never a 500 and never a free call."""

from __future__ import annotations

import asyncio
import os
import uuid
from decimal import ROUND_CEILING, Decimal
from typing import Any

import pytest
from _litellm_helpers import isolate_litellm

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download

import litellm
from litellm.caching.dual_cache import DualCache
from litellm.proxy._types import UserAPIKeyAuth
from litellm.router import Router
from litellm.types.utils import CallTypes

from credit_middleware import Ledger, Provisioner, RedisLocks
from credit_middleware.integrations.litellm.calls import KINDS
from credit_middleware.integrations.litellm.proxy import CreditProxyHook, CreditRefusal

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings(
        "ignore:Item '.*' on TypedDict class '.*' is using the `ReadOnly` qualifier:UserWarning"
    ),
]

MESSAGES = [{"role": "user", "content": "Say hello to the credit ledger."}]

#: One request per metered kind, as the proxy hands it to the pre-call hook.
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "acompletion": ("gpt-4o-mini", {"messages": MESSAGES}),
    "atext_completion": ("gpt-4o-mini", {"prompt": "Hello"}),
    "aembedding": ("text-embedding-3-small", {"input": "Hello"}),
    "aresponses": ("gpt-4o-mini", {"input": "Hello", "max_output_tokens": 100}),
    "anthropic_messages": ("claude-haiku-4-5", {"messages": MESSAGES, "max_tokens": 100}),
    "image_generation": ("gpt-image-1", {"prompt": "a ledger", "n": 1}),
    "atranscription": ("whisper-1", {}),
    "aspeech": ("tts-1", {"input": "Hello there", "voice": "alloy"}),
    "rerank": ("rerank-english-v3.0", {"query": "q", "documents": ["a", "b"]}),
    "moderation": ("omni-moderation-latest", {"input": "Hello"}),
}


@pytest.fixture(autouse=True)
def _isolated_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_litellm(monkeypatch)


def key(user_id: str | None = "ann") -> UserAPIKeyAuth:
    return UserAPIKeyAuth(api_key="sk-test-key", user_id=user_id)


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "litellm_call_id": str(uuid.uuid4()), "metadata": {}, **extra}


async def pre(hook: CreditProxyHook, call_type: str, data: dict[str, Any], **kw: Any) -> Any:
    return await hook.async_pre_call_hook(
        user_api_key_dict=kw.get("auth", key()), cache=DualCache(), data=data, call_type=call_type
    )


def micros_up(usd: Decimal) -> int:
    return max(1, int((usd * 10**6).to_integral_value(ROUND_CEILING)))


def test_every_kind_in_the_table_has_a_request_here() -> None:
    assert {KINDS[c] for c in REQUESTS} == set(KINDS.values())


@pytest.mark.parametrize("call_type", sorted(REQUESTS))
async def test_a_broke_user_is_refused_on_every_metered_call_type(
    ledger: Ledger, call_type: str
) -> None:
    provisioner = Provisioner(ledger)
    await provisioner.ensure_account("ann", layer="litellm")
    await ledger.debit("ann", (await ledger.balance("ann")).available)
    hook = CreditProxyHook(provisioner, max_audio_seconds=60)
    model, extra = REQUESTS[call_type]
    with pytest.raises(CreditRefusal) as info:
        await pre(hook, call_type, body(model, **extra))
    assert info.value.status_code == 402
    assert info.value.to_dict()["code"] == "insufficient_credits"
    assert not await ledger.holds("ann")


@pytest.mark.parametrize(
    ("call_type", "expected_usd"),
    [
        # LiteLLM's price data: $0.002 a rerank query; whisper-1 $0.0001 a second (LiteLLM
        # bills one per-second price), over the 60 s this hook assumes when it has no file to
        # measure; tts-1 $0.000015 a character
        ("rerank", Decimal("0.002")),
        ("atranscription", Decimal("0.0001") * 60),
        ("aspeech", Decimal("0.000015") * len("Hello there")),
        ("moderation", Decimal(0)),  # LiteLLM prices OpenAI moderation at zero: 1 µc held
    ],
)
async def test_non_token_calls_hold_litellms_price(
    ledger: Ledger, call_type: str, expected_usd: Decimal
) -> None:
    hook = CreditProxyHook(Provisioner(ledger), max_audio_seconds=60)
    model, extra = REQUESTS[call_type]
    await pre(hook, call_type, body(model, **extra))
    [hold] = await ledger.holds("ann")
    assert hold.amount_micros == micros_up(expected_usd)


async def test_an_image_holds_its_most_expensive_output(ledger: Ledger) -> None:
    """No size or quality named: held at LiteLLM's dearest gpt-image-1 image (high quality,
    1536x1024), per image."""
    hook = CreditProxyHook(Provisioner(ledger))
    data = body("gpt-image-1", prompt="a ledger", n=2)
    await pre(hook, "image_generation", data)
    [hold] = await ledger.holds("ann")
    info = litellm.get_model_info("gpt-image-1")
    per_image = Decimal(
        repr(litellm.model_cost["high/1536-x-1024/gpt-image-1"]["input_cost_per_image"])
    )
    prompt = litellm.token_counter(model="gpt-image-1", text="a ledger")
    prompt_usd = Decimal(repr(info["input_cost_per_token"])) * prompt
    assert hold.amount_micros == micros_up(2 * per_image + prompt_usd)


@pytest.mark.parametrize("call_type", ["afile_list", "acreate_batch", "_arealtime", "anext_api"])
async def test_call_types_it_cannot_bill_are_refused(ledger: Ledger, call_type: str) -> None:
    hook = CreditProxyHook(Provisioner(ledger))
    with pytest.raises(CreditRefusal) as info:
        await pre(hook, call_type, body("gpt-4o-mini"))
    assert info.value.status_code == 400
    assert info.value.to_dict()["code"] == "call_type_not_billable"
    assert await ledger.get_account("ann") is None


async def test_operators_can_serve_call_types_free(ledger: Ledger) -> None:
    hook = CreditProxyHook(
        Provisioner(ledger), free_call_types={"file_list"}, unknown_call_types="free"
    )
    data = body("gpt-4o-mini")
    assert await pre(hook, "afile_list", dict(data)) == data  # the async twin of file_list
    assert await pre(hook, "a_call_type_from_the_future", dict(data)) == data
    with pytest.raises(CreditRefusal):  # known to LiteLLM and not billable: still refused
        await pre(hook, "acreate_batch", dict(data))
    assert await ledger.get_account("ann") is None


async def test_an_alias_is_priced_at_its_deployment(ledger: Ledger) -> None:
    router = Router(
        model_list=[
            {
                "model_name": "my-assistant",
                "litellm_params": {
                    "model": "openai/gpt-4o-mini",
                    "api_key": "sk-not-used",
                    "input_cost_per_token": 0.000002,
                    "output_cost_per_token": 0.000008,
                    "mock_response": "Hello from the alias, billed at its own price.",
                },
            }
        ]
    )
    hook = CreditProxyHook(Provisioner(ledger), router=router)
    data = body("my-assistant", messages=MESSAGES, max_tokens=50)
    await pre(hook, "acompletion", data)
    [hold] = await ledger.holds("ann")
    prompt = litellm.token_counter(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert hold.amount_micros == micros_up(Decimal("0.000002") * prompt + Decimal("0.000008") * 50)
    litellm.callbacks = [hook]
    call: dict[str, Any] = {"messages": MESSAGES, "litellm_call_id": data["litellm_call_id"]}
    response: Any = await router.acompletion(model="my-assistant", max_tokens=50, **call)
    await hook.drain()
    for _ in range(500):
        captures = [e for e in await ledger.history("ann") if e.kind == "capture"]
        if captures:
            break
        await asyncio.sleep(0.02)
    [capture] = captures
    usage = response.usage
    expected = Decimal("0.000002") * usage.prompt_tokens + Decimal("0.000008") * (
        usage.completion_tokens
    )
    assert capture.amount_micros == micros_up(expected)
    custom = {"input_cost_per_token": 0.000002, "output_cost_per_token": 0.000008}
    cost = litellm.completion_cost(completion_response=response, custom_cost_per_token=custom)
    assert capture.amount_micros == micros_up(Decimal(repr(cost))) == 180


async def test_master_key_traffic_is_refused_or_billed_to_the_configured_account(
    ledger: Ledger,
) -> None:
    admin = key("default_user_id")  # what LiteLLM puts on master-key calls
    data = body("gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(CreditRefusal) as info:
        await pre(CreditProxyHook(Provisioner(ledger)), "acompletion", dict(data), auth=admin)
    assert info.value.status_code == 401
    assert await ledger.get_account("default_user_id") is None
    hook = CreditProxyHook(Provisioner(ledger), unowned_account="platform")
    await pre(hook, "acompletion", dict(data), auth=admin)
    assert len(await ledger.holds("platform")) == 1
    await hook.async_post_call_failure_hook(data, RuntimeError("done"), admin)
    assert await ledger.get_account("default_user_id") is None


async def test_an_unmigrated_ledger_is_a_503_or_is_migrated(ledger_url: str) -> None:
    async with Ledger(ledger_url) as bare:
        hook = CreditProxyHook(Provisioner(bare))
        data = body("gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(CreditRefusal) as info:
            await pre(hook, "acompletion", dict(data))
        assert info.value.status_code == 503
        assert info.value.headers["Retry-After"] == "5"
        assert "credit-middleware migrate" in info.value.message
        hook = CreditProxyHook(Provisioner(bare), auto_migrate=True)
        await pre(hook, "acompletion", dict(data))
        assert len(await bare.holds("ann")) == 1
        await hook.async_post_call_failure_hook(data, RuntimeError("done"), key())
        assert (await bare.verify()).ok


async def test_a_database_down_is_a_503_with_retry_after() -> None:
    async with Ledger("postgresql://postgres@127.0.0.1:9/nowhere", timeout=1.0) as down:
        hook = CreditProxyHook(Provisioner(down), retry_after=7)
        with pytest.raises(CreditRefusal) as info:
            await pre(hook, "acompletion", body("gpt-4o-mini", messages=MESSAGES))
    assert info.value.status_code == 503
    assert info.value.headers["Retry-After"] == "7"
    assert info.value.to_dict()["code"] == "credits_unavailable"


@pytest.mark.redis
async def test_from_url_builds_redis_locks(ledger_url: str, redis_client: Any) -> None:
    hook = CreditProxyHook.from_url(
        ledger_url,
        redis_url="redis://127.0.0.1:6379/0",
        key_prefix=redis_client.test_prefix,
        auto_migrate=True,
    )
    assert isinstance(hook.meter.provisioner.locks, RedisLocks)
    data = body("gpt-4o-mini", messages=MESSAGES)
    await pre(hook, "acompletion", data)
    await hook.async_post_call_failure_hook(data, RuntimeError("done"), key())
    ledger = hook.meter.ledger
    assert not await ledger.holds("ann")
    assert (await ledger.verify()).ok
    await hook.aclose()


async def test_outside_the_proxy_it_warns_instead_of_billing_nothing(ledger: Ledger) -> None:
    hook = CreditProxyHook(Provisioner(ledger))
    with pytest.warns(RuntimeWarning, match="NOT billed"):
        await litellm.acompletion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="hi", callbacks=[hook]
        )
    assert await ledger.get_account("ann") is None


async def test_call_types_given_as_litellms_enum_are_gated_the_same(ledger: Ledger) -> None:
    hook = CreditProxyHook(Provisioner(ledger))
    await pre(hook, CallTypes.aresponses, body("gpt-4o-mini", input="Hello"))
    [hold] = [e for e in await ledger.history("ann") if e.kind == "hold"]
    assert hold.metadata["kind"] == "responses"
    with pytest.raises(CreditRefusal):
        await pre(hook, CallTypes.acreate_batch, body("gpt-4o-mini"))


def test_a_subclass_keeps_every_hook_where_the_proxy_looks() -> None:
    """LiteLLM's proxy looks hooks up in the callback's own class ``__dict__``: an inherited
    pre-call hook would be skipped, and calls served unbilled."""

    class Mine(CreditProxyHook):
        pass

    for hook in ("async_pre_call_hook", "async_post_call_streaming_iterator_hook"):
        assert hook in CreditProxyHook.__dict__ and hook in Mine.__dict__
    assert "async_post_call_response_headers_hook" in Mine.__dict__
