"""The LiteLLM proxy hook, driven the way the proxy drives it: ``async_pre_call_hook`` with the
proxy's ``UserAPIKeyAuth`` and request dict, then a real (mocked) LiteLLM call that has the
hook as a callback, so the success/failure events arrive with LiteLLM's own argument shapes."""

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
from litellm.exceptions import InternalServerError
from litellm.proxy._types import UserAPIKeyAuth

from credit_middleware import Ledger, Provisioner, TrialPolicy
from credit_middleware.integrations.litellm.proxy import CreditProxyHook, CreditRefusal, end_user

pytestmark = [
    pytest.mark.anyio,
    # pydantic, building LiteLLM's response types on first use, warns about their ReadOnly items
    pytest.mark.filterwarnings(
        "ignore:Item '.*' on TypedDict class '.*' is using the `ReadOnly` qualifier:UserWarning"
    ),
]

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello to the credit ledger."}]
TEXT = "Hello, ledger! Every token here is paid for."
_FORWARDED = ("model", "messages", "input", "litellm_call_id", "metadata", "stream", "user")


@pytest.fixture(autouse=True)
def _isolated_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_litellm(monkeypatch)


@pytest.fixture
def hook(ledger: Ledger) -> CreditProxyHook:
    return CreditProxyHook(Provisioner(ledger))


def key(user_id: str | None = "ann") -> UserAPIKeyAuth:
    return UserAPIKeyAuth(api_key="sk-test-key", user_id=user_id, user_email="ann@example.com")


def request(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "litellm_call_id": str(uuid.uuid4()),
        "metadata": {},
    }
    data.update(extra)
    return data


async def proxied(
    hook: CreditProxyHook, data: dict[str, Any], auth: UserAPIKeyAuth | None = None, **call: Any
) -> Any:
    """What the proxy does with one request: pre-call hook, then the call with callbacks, and
    the failure hook when the request fails."""
    out = await hook.async_pre_call_hook(
        user_api_key_dict=auth or key(), cache=DualCache(), data=data, call_type="acompletion"
    )
    assert out is not None
    kwargs = {k: out[k] for k in _FORWARDED if k in out}
    try:
        return await litellm.acompletion(**kwargs, **call, callbacks=[hook])
    except Exception as exc:
        await hook.async_post_call_failure_hook(data, exc, auth or key())
        raise


async def settled(ledger: Ledger, account: str, kind: str) -> Any:
    """LiteLLM runs success/failure callbacks in the background: wait for the entry."""
    for _ in range(500):
        found = [e for e in await ledger.history(account) if e.kind == kind]
        if found:
            return found[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {kind} entry for {account}")


def micros_up(cost: float) -> int:
    return int((Decimal(repr(cost)) * 10**6).to_integral_value(ROUND_CEILING))


async def test_success_captures_the_response_cost(hook: CreditProxyHook, ledger: Ledger) -> None:
    data = request()
    response = await proxied(hook, data, mock_response=TEXT)
    assert data["metadata"]["credit_account_id"] == "ann"
    capture = await settled(ledger, "ann", "capture")
    assert capture.amount_micros == micros_up(response._hidden_params["response_cost"]) > 0
    assert capture.hold_id == data["metadata"]["credit_hold_id"]
    assert capture.metadata["request_id"] == data["litellm_call_id"]
    assert not await ledger.holds("ann")
    headers = await hook.async_post_call_response_headers_hook(
        data=data, user_api_key_dict=key(), response=response
    )
    balance = await ledger.balance("ann")
    assert headers == {"Credit-Balance": str(balance.available)}


async def test_streamed_call_is_charged(hook: CreditProxyHook, ledger: Ledger) -> None:
    stream = await proxied(hook, request(stream=True), mock_response=TEXT)
    async for _ in stream:
        pass
    capture = await settled(ledger, "ann", "capture")
    assert capture.amount_micros > 0 and capture.metadata["completion_tokens"] > 0
    assert not await ledger.holds("ann")


async def test_a_client_leaving_mid_stream_is_charged_for_what_it_got(
    hook: CreditProxyHook, ledger: Ledger
) -> None:
    data = request(stream=True)
    await hook.async_pre_call_hook(
        user_api_key_dict=key(), cache=DualCache(), data=data, call_type="acompletion"
    )
    upstream = await litellm.acompletion(
        model=MODEL, messages=MESSAGES, mock_response=TEXT, stream=True
    )
    relayed = hook.async_post_call_streaming_iterator_hook(
        user_api_key_dict=key(), response=upstream, request_data=data
    )
    got = [await relayed.__anext__(), await relayed.__anext__()]
    await relayed.aclose()  # the proxy closes the generator when the client disconnects
    capture = await settled(ledger, "ann", "capture")
    text = "".join(c.choices[0].delta.content or "" for c in got)
    completion = litellm.token_counter(model=MODEL, text=text, count_response_tokens=True)
    prompt = litellm.token_counter(model=MODEL, messages=MESSAGES)
    p, c = litellm.cost_per_token(model=MODEL, prompt_tokens=prompt, completion_tokens=completion)
    assert capture.amount_micros == micros_up(p + c) > 0
    assert capture.metadata["outcome"] == "client_closed"
    assert not await ledger.holds("ann")
    # a late success event for the same call moves no more money
    kwargs = {"litellm_call_id": data["litellm_call_id"], "response_cost": 1.0}
    await hook.async_log_success_event(kwargs, None, None, None)
    assert len([e for e in await ledger.history("ann") if e.kind == "capture"]) == 1


async def test_a_finished_relayed_stream_is_left_to_the_success_event(
    hook: CreditProxyHook, ledger: Ledger
) -> None:
    data = request(stream=True)
    await hook.async_pre_call_hook(
        user_api_key_dict=key(), cache=DualCache(), data=data, call_type="acompletion"
    )
    upstream = await litellm.acompletion(
        model=MODEL, messages=MESSAGES, mock_response=TEXT, stream=True
    )
    relayed = hook.async_post_call_streaming_iterator_hook(
        user_api_key_dict=key(), response=upstream, request_data=data
    )
    assert len([c async for c in relayed]) > 2
    assert len(await ledger.holds("ann")) == 1  # not settled yet: LiteLLM's cost is coming
    kwargs = {"litellm_call_id": data["litellm_call_id"], "response_cost": 0.0000135}
    await hook.async_log_success_event(kwargs, None, None, None)
    capture = await settled(ledger, "ann", "capture")
    assert capture.amount_micros == 14


async def test_a_stream_reported_at_zero_cost_is_repriced(
    hook: CreditProxyHook, ledger: Ledger
) -> None:
    """LiteLLM's proxy has logged streams at $0 with real token counts: never bill zero."""
    data = request()
    await hook.async_pre_call_hook(
        user_api_key_dict=key(), cache=DualCache(), data=data, call_type="acompletion"
    )
    kwargs = {
        "litellm_call_id": data["litellm_call_id"],
        "response_cost": 0.0,
        "standard_logging_object": {"prompt_tokens": 10, "completion_tokens": 20},
    }
    await hook.async_log_success_event(kwargs, None, None, None)
    capture = await settled(ledger, "ann", "capture")
    p, c = litellm.cost_per_token(model=MODEL, prompt_tokens=10, completion_tokens=20)
    assert capture.amount_micros == micros_up(p + c) == 14


async def test_provider_failure_releases_the_hold(hook: CreditProxyHook, ledger: Ledger) -> None:
    with pytest.raises(InternalServerError):
        await proxied(hook, request(), mock_response=Exception("provider down"))
    await settled(ledger, "ann", "release")
    assert not await ledger.holds("ann")
    assert (await ledger.balance("ann")).available_micros == 5_000_000


async def test_proxy_side_failure_releases_the_hold(hook: CreditProxyHook, ledger: Ledger) -> None:
    data = request()
    await hook.async_pre_call_hook(
        user_api_key_dict=key(), cache=DualCache(), data=data, call_type="acompletion"
    )
    assert len(await ledger.holds("ann")) == 1
    await hook.async_post_call_failure_hook(data, RuntimeError("router"), key())
    assert not await ledger.holds("ann")


async def test_insufficient_credits_answer_402_before_the_call(ledger: Ledger) -> None:
    hook = CreditProxyHook(Provisioner(ledger, TrialPolicy(amount=Decimal("0.0001"))))
    with pytest.raises(CreditRefusal) as info:
        await proxied(hook, request(), mock_response=TEXT)
    assert info.value.status_code == 402
    body = info.value.to_dict()  # what the proxy sends as {"error": body}
    assert body["type"] == body["code"] == "insufficient_credits"
    assert body["available"] == "0.0001"
    assert "not enough credits" in body["message"]
    assert not await ledger.holds("ann")


async def test_a_key_without_a_user_is_refused(hook: CreditProxyHook, ledger: Ledger) -> None:
    with pytest.raises(CreditRefusal) as info:
        await proxied(hook, request(user="someone-else"), auth=key(None), mock_response=TEXT)
    assert info.value.status_code == 401
    assert await ledger.get_account("someone-else") is None


async def test_end_users_can_be_billed_when_chosen(ledger: Ledger) -> None:
    hook = CreditProxyHook(Provisioner(ledger), identify=end_user)
    await proxied(hook, request(user="end-user-7"), mock_response=TEXT)
    capture = await settled(ledger, "end-user-7", "capture")
    assert capture.amount_micros > 0
    [grant] = [e for e in await ledger.history("end-user-7") if e.kind == "grant"]
    assert grant.layer == "litellm"  # the failsafe layer provisioned it
    assert await ledger.get_account("ann") is None


async def test_a_stream_that_is_not_a_stream_passes_through(
    hook: CreditProxyHook, ledger: Ledger
) -> None:
    """LiteLLM's mocked Responses API answers whole even when asked to stream: the iterator
    hook hands it on as it came (the proxy then answers as it would without the hook), rather
    than failing on it."""
    data = request(stream=True)
    await hook.async_pre_call_hook(
        user_api_key_dict=key(), cache=DualCache(), data=data, call_type="aresponses"
    )
    whole = object()
    relayed = hook.async_post_call_streaming_iterator_hook(
        user_api_key_dict=key(), response=whole, request_data=data
    )
    assert [item async for item in relayed] == [whole]
    assert len(await ledger.holds("ann")) == 1  # settled by the success or failure event
    await hook.async_post_call_failure_hook(data, RuntimeError("done"), key())
    assert not await ledger.holds("ann")
