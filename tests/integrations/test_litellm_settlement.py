"""Settlements that survive the ledger, on SQLite and PostgreSQL: a capture or release the
ledger cannot take now (its connections closed, as in an outage) is kept and lands exactly once
when it is back; a stream whose settlement fails still ends cleanly for its reader; a hold whose
answer was lost (the database got it, the caller never heard) is found by its key and given
back; a call id already in flight is refused instead of sharing a hold."""

from __future__ import annotations

import os
import uuid
from decimal import Decimal
from typing import Any

import pytest
from _litellm_helpers import isolate_litellm

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download

from litellm.caching.dual_cache import DualCache
from litellm.proxy._types import UserAPIKeyAuth

from credit_middleware import BackendUnavailable, Ledger, Provisioner
from credit_middleware.integrations.litellm import CreditedLLM
from credit_middleware.integrations.litellm.proxy import CreditProxyHook, CreditRefusal

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings(
        "ignore:Item '.*' on TypedDict class '.*' is using the `ReadOnly` qualifier:UserWarning"
    ),
]

MESSAGES = [{"role": "user", "content": "Say hello to the credit ledger."}]
TEXT = "Hello, ledger! Every token here is paid for."


@pytest.fixture(autouse=True)
def _isolated_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_litellm(monkeypatch)


def key(user_id: str = "ann") -> UserAPIKeyAuth:
    return UserAPIKeyAuth(api_key="sk-test-key", user_id=user_id)


def body(**extra: Any) -> dict[str, Any]:
    data = {"model": "gpt-4o-mini", "messages": MESSAGES, "litellm_call_id": str(uuid.uuid4())}
    return {**data, "metadata": {}, **extra}


async def held(hook: CreditProxyHook, data: dict[str, Any]) -> None:
    await hook.async_pre_call_hook(
        user_api_key_dict=key(), cache=DualCache(), data=data, call_type="acompletion"
    )


def kinds(entries: list[Any]) -> list[str]:
    return sorted(e.kind for e in entries)


async def test_a_capture_the_ledger_cannot_take_lands_once_when_it_is_back(
    ledger: Ledger,
) -> None:
    hook = CreditProxyHook(Provisioner(ledger))
    data = body()
    await held(hook, data)
    await ledger.close()  # the ledger goes away between the call and its capture
    success = {"litellm_call_id": data["litellm_call_id"], "response_cost": 0.0000135}
    await hook.async_log_success_event(success, None, None, None)  # does not raise
    assert hook.meter.outbox.pending == [f"capture:{data['metadata']['credit_hold_id']}"]
    assert await hook.meter.outbox.flush() == 0  # still down: kept
    ledger.reopen()
    assert await hook.meter.outbox.flush() == 1
    assert await hook.meter.outbox.flush() == 0  # landed once; nothing left to retry
    [capture] = [e for e in await ledger.history("ann") if e.kind == "capture"]
    assert capture.amount_micros == 14
    assert not await ledger.holds("ann")
    assert kinds(await ledger.history("ann")) == ["capture", "grant", "hold"]


async def test_a_failed_calls_hold_is_released_when_the_ledger_is_back(ledger: Ledger) -> None:
    hook = CreditProxyHook(Provisioner(ledger))
    data = body()
    await held(hook, data)
    await ledger.close()
    await hook.async_post_call_failure_hook(data, RuntimeError("provider down"), key())
    ledger.reopen()
    await hook.drain()  # retries what is kept
    assert not await ledger.holds("ann")
    assert (await ledger.balance("ann")).available_micros == 5_000_000
    assert hook.meter.outbox.pending == []


async def test_a_deployment_failing_is_not_the_call_failing(ledger: Ledger) -> None:
    """The router may fall back after a deployment's failure event: the hold stays for the
    deployment that answers, and is captured once by its success event."""
    hook = CreditProxyHook(Provisioner(ledger))
    data = body()
    await held(hook, data)
    failure = {"litellm_call_id": data["litellm_call_id"], "model": "gpt-4o-mini"}
    await hook.async_log_failure_event(failure, None, None, None)
    assert len(await ledger.holds("ann")) == 1
    success = {"litellm_call_id": data["litellm_call_id"], "response_cost": 0.000225}
    await hook.async_log_success_event(success, None, None, None)
    [capture] = [e for e in await ledger.history("ann") if e.kind == "capture"]
    assert capture.amount_micros == 225
    assert not [e for e in await ledger.history("ann") if e.kind == "release"]


async def test_a_call_id_already_in_flight_is_refused(ledger: Ledger) -> None:
    """``x-litellm-call-id`` is the client's to choose: a second call under the id of one in
    flight would take over its hold and be served free."""
    hook = CreditProxyHook(Provisioner(ledger))
    data = body()
    await held(hook, data)
    with pytest.raises(CreditRefusal) as info:
        await held(hook, body(litellm_call_id=data["litellm_call_id"]))
    assert info.value.status_code == 409
    assert info.value.to_dict()["code"] == "call_id_in_use"
    assert len(await ledger.holds("ann")) == 1
    await hook.async_post_call_failure_hook(data, RuntimeError("done"), key())


async def test_a_stream_ends_cleanly_when_its_capture_must_wait(ledger: Ledger) -> None:
    llm = CreditedLLM(Provisioner(ledger))
    stream = await llm.acompletion(
        "ann", model="gpt-4o-mini", messages=MESSAGES, stream=True, mock_response=TEXT
    )
    chunks = [await stream.__anext__()]
    await ledger.close()  # down before the last chunk, when the stream settles
    chunks += [c async for c in stream]  # no exception: the reader gets every chunk
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert stream.receipt is None  # not billed yet ...
    ledger.reopen()
    await llm.drain()  # ... and billed once the ledger is back
    [capture] = [e for e in await ledger.history("ann") if e.kind == "capture"]
    assert capture.amount_micros > 0 and capture.metadata["completion_tokens"] > 0
    assert not await ledger.holds("ann")
    await llm.aclose()


async def test_a_refusal_by_a_closed_ledger_writes_nothing_later(ledger: Ledger) -> None:
    hook = CreditProxyHook(Provisioner(ledger))
    await Provisioner(ledger).ensure_account("ann", layer="litellm")
    await ledger.close()
    with pytest.raises(CreditRefusal) as info:
        await held(hook, body())
    assert info.value.status_code == 503
    ledger.reopen()
    await hook.drain()
    assert kinds(await ledger.history("ann")) == ["grant"]


@pytest.mark.postgres
async def test_a_hold_whose_answer_was_lost_is_given_back(pg_url: str) -> None:
    """The account is locked by another transaction, so the hold waits in the database past
    the ledger's timeout: the caller hears nothing (503) though the hold may still be written.
    Once the lock is gone, the hold is found by its key and released: nothing stays held."""
    import asyncpg

    async with Ledger(pg_url, timeout=0.5) as ledger:
        await ledger.migrate()
        hook = CreditProxyHook(Provisioner(ledger))
        await Provisioner(ledger).ensure_account("ann", layer="litellm")
        blocker = await asyncpg.connect(pg_url.split("?")[0], server_settings=_search_path(pg_url))
        try:
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute(
                "SELECT 1 FROM credit_accounts WHERE account_id = 'ann' FOR UPDATE"
            )
            with pytest.raises(CreditRefusal) as info:
                await held(hook, body())
            assert info.value.status_code == 503
            await lock.rollback()
        finally:
            await blocker.close()
        for _ in range(50):  # the ledger is back: the kept void lands (bounded retries)
            if not hook.meter.outbox.pending:
                break
            await hook.meter.outbox.flush()
        assert hook.meter.outbox.pending == []
        assert not await ledger.holds("ann")
        assert (await ledger.balance("ann")).available == Decimal(5)
        assert (await ledger.verify()).ok


def _search_path(url: str) -> dict[str, str]:
    query = url.partition("?")[2]
    return dict(part.split("=", 1) for part in query.split("&") if part)


async def test_backend_unavailable_is_what_a_closed_ledger_raises(ledger: Ledger) -> None:
    """The outage these tests stage is the one the library sees in production."""
    await ledger.close()
    with pytest.raises(BackendUnavailable):
        await ledger.balance("ann")
    ledger.reopen()
