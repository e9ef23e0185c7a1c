"""``CreditedLLM`` over its whole life, on SQLite and PostgreSQL: synchronous calls, several
event loops, streams abandoned in every way (dropped, caught in a cycle, open at shutdown),
idempotent holds. Real ``litellm`` with ``mock_response``; the ledger verified clean."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download

import litellm

from credit_middleware import ConfigurationError, Ledger, Provisioner
from credit_middleware.integrations.litellm import CreditedLLM, SyncCreditedStream

pytestmark = pytest.mark.filterwarnings(
    "ignore:Item '.*' on TypedDict class '.*' is using the `ReadOnly` qualifier:UserWarning"
)
#: LiteLLM keeps one logging worker task per process, on the loop of its first call; when that
#: loop has closed, its coroutine is discarded with this warning (LiteLLM's, harmless: it starts
#: a new worker on the next loop).
_LITELLM_WORKER = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <coroutine object LoggingWorker._worker_loop"
    ":pytest.PytestUnraisableExceptionWarning"
)

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello to the credit ledger."}]
TEXT = "Hello, ledger! Every token here is paid for, and then some more tokens."


@pytest.fixture(autouse=True)
def _quiet_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)


async def entries(ledger: Ledger, account: str, kind: str) -> list[Any]:
    return [e for e in await ledger.history(account, limit=1000) if e.kind == kind]


@_LITELLM_WORKER
def test_sync_calls_are_billed_on_their_own_loop(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    asyncio.run(ledger.migrate())
    llm = CreditedLLM(Provisioner(ledger))
    try:
        response = llm.completion("sync-user", model=MODEL, messages=MESSAGES, mock_response=TEXT)
        assert response._hidden_params["credit_receipt"].entry.kind == "capture"
        emb = llm.embedding(
            "sync-user", model="text-embedding-3-small", input="Hello", mock_response=[0.1]
        )
        assert emb._hidden_params["credit_receipt"].entry.amount_micros > 0
        stream = llm.completion(
            "sync-user", model=MODEL, messages=MESSAGES, mock_response=TEXT, stream=True
        )
        assert isinstance(stream, SyncCreditedStream)
        with stream:
            next(stream)
            next(stream)  # and stop early: closing charges the two chunks
        assert stream.settled and stream.receipt is not None
        assert stream.receipt.entry.metadata["outcome"] == "client_closed"
        threads = [
            threading.Thread(
                target=llm.completion,
                args=("sync-user",),
                kwargs={"model": MODEL, "messages": MESSAGES, "mock_response": TEXT},
            )
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        llm.close()

    async def check() -> None:
        assert len(await entries(ledger, "sync-user", "capture")) == 7
        assert not await ledger.holds("sync-user")
        assert (await ledger.verify()).ok
        await ledger.close()

    asyncio.run(check())  # the ledger is usable again, on yet another loop
    gc.collect()  # LiteLLM's worker of the closed loops goes now, under this test's filter


@_LITELLM_WORKER
def test_a_ledger_serves_one_asyncio_run_after_another(ledger_url: str) -> None:
    """A script calling ``asyncio.run()`` twice: the old code failed the second time on
    PostgreSQL (its pool was bound to the first, closed, loop)."""
    ledger = Ledger(ledger_url)
    asyncio.run(ledger.migrate())
    llm = CreditedLLM(Provisioner(ledger))
    for _ in range(3):
        asyncio.run(llm.acompletion("runs", model=MODEL, messages=MESSAGES, mock_response=TEXT))

    async def check() -> None:
        assert len(await entries(ledger, "runs", "capture")) == 3
        assert (await ledger.verify()).ok
        await ledger.close()

    asyncio.run(check())
    gc.collect()


@pytest.mark.anyio
async def test_sync_calls_inside_a_running_loop_are_refused(ledger: Ledger) -> None:
    llm = CreditedLLM(Provisioner(ledger))
    with pytest.raises(ConfigurationError, match="acompletion"):
        llm.completion("ann", model=MODEL, messages=MESSAGES, mock_response=TEXT)
    assert await ledger.get_account("ann") is None


def test_a_postgresql_ledger_used_from_two_running_loops_is_a_clear_error(pg_url: str) -> None:
    ledger = Ledger(pg_url)
    started, stop = threading.Event(), threading.Event()
    loop = asyncio.new_event_loop()

    async def hold_the_loop() -> None:
        await ledger.migrate()
        started.set()
        await asyncio.to_thread(stop.wait)  # the loop keeps running meanwhile
        await ledger.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(hold_the_loop(),))
    thread.start()
    try:
        assert started.wait(30)
        with pytest.raises(ConfigurationError, match="another running event loop"):
            asyncio.run(ledger.schema_version())
    finally:
        stop.set()
        thread.join()
        loop.close()


@pytest.mark.anyio
async def test_a_stream_caught_in_a_cycle_is_settled_when_collected(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    llm = CreditedLLM(Provisioner(ledger))
    stream: Any = await llm.acompletion(
        "cyclic", model=MODEL, messages=MESSAGES, mock_response=TEXT, stream=True
    )
    async for _ in stream:
        break  # the loop is left, aclose() never called
    stream.me = stream  # a reference cycle: only the garbage collector frees it
    del stream
    with caplog.at_level(logging.WARNING, logger="credit_middleware.litellm"):
        gc.collect()
        await llm.drain()
    [capture] = await entries(ledger, "cyclic", "capture")
    assert capture.amount_micros > 0 and capture.metadata["outcome"] == "abandoned"
    assert "dropped without aclose()" in caplog.text
    assert not await ledger.holds("cyclic")


@pytest.mark.anyio
async def test_streams_still_open_at_shutdown_are_settled_with_a_warning(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    llm = CreditedLLM(Provisioner(ledger))
    kept = [
        await llm.acompletion(
            "shutdown", model=MODEL, messages=MESSAGES, mock_response=TEXT, stream=True
        )
        for _ in range(2)
    ]
    await kept[0].__anext__()  # one read a chunk, the other nothing
    with caplog.at_level(logging.WARNING, logger="credit_middleware.litellm"):
        await llm.aclose()
    assert caplog.text.count("still open at shutdown") == 2
    [capture] = await entries(ledger, "shutdown", "capture")
    assert capture.metadata["outcome"] == "abandoned" and capture.amount_micros > 0
    assert len(await entries(ledger, "shutdown", "release")) == 1  # nothing generated
    assert not await ledger.holds("shutdown")
    assert all(s.settled for s in kept)


@pytest.mark.anyio
async def test_a_hold_key_makes_a_retried_call_hold_once(ledger: Ledger) -> None:
    llm = CreditedLLM(Provisioner(ledger))
    stream: Any = await llm.acompletion(
        "keyed", key="charge-1", model=MODEL, messages=MESSAGES, mock_response=TEXT, stream=True
    )
    [hold] = await entries(ledger, "keyed", "hold")
    assert hold.key == "litellm:charge-1"
    await stream.aclose()
    assert not await ledger.holds("keyed")
