"""The LiteLLM wrapper against the real ``litellm`` package, offline (``mock_response``), on
SQLite and PostgreSQL. The ``ledger`` fixture verifies the ledger's invariants after each test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from decimal import ROUND_CEILING, Decimal
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download

import litellm
from litellm.exceptions import APIConnectionError, InternalServerError

from credit_middleware import InsufficientCredits, Ledger, Provisioner, TrialPolicy
from credit_middleware.integrations.litellm import (
    CreditedLLM,
    CreditedStream,
    UnknownModelPrice,
)

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


def micros_up(cost: Any, multiplier: Decimal = Decimal(1)) -> int:
    """LiteLLM's float cost, times a multiplier, rounded up to 1 µc once."""
    exact = cost if isinstance(cost, Decimal) else Decimal(repr(cost))
    return int((exact * multiplier * 10**6).to_integral_value(ROUND_CEILING))


@pytest.fixture(autouse=True)
def _quiet_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)


@pytest.fixture
def provisioner(ledger: Ledger) -> Provisioner:
    return Provisioner(ledger)


@pytest.fixture
def llm(provisioner: Provisioner) -> CreditedLLM:
    return CreditedLLM(provisioner)


@pytest.fixture
def provider_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records every call that reaches LiteLLM (the real one still answers)."""
    calls: list[dict[str, Any]] = []
    real = litellm.acompletion

    async def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return await real(**kwargs)

    monkeypatch.setattr(litellm, "acompletion", spy)
    return calls


async def captures(ledger: Ledger, account: str) -> list[Any]:
    return [e for e in await ledger.history(account, limit=1000) if e.kind == "capture"]


async def no_active_holds(ledger: Ledger, account: str) -> bool:
    return not await ledger.holds(account)


# ---------------------------------------------------------------- non-streamed calls


async def test_capture_equals_litellms_own_cost(llm: CreditedLLM, ledger: Ledger) -> None:
    response = await llm.acompletion("alice", model=MODEL, messages=MESSAGES, mock_response=TEXT)
    assert response.usage.prompt_tokens == 10 and response.usage.completion_tokens == 20
    expected = micros_up(litellm.completion_cost(completion_response=response))
    assert expected > 0
    [capture] = await captures(ledger, "alice")
    assert capture.amount_micros == expected
    assert capture.model == MODEL and capture.layer == "litellm"
    meta = capture.metadata
    assert meta["request_id"] == response._hidden_params["litellm_call_id"]
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (10, 20)
    assert Decimal(meta["cost_usd"]) == Decimal(repr(response._hidden_params["response_cost"]))
    receipt = response._hidden_params["credit_receipt"]
    assert receipt.entry.entry_id == capture.entry_id
    balance = await ledger.balance("alice")
    assert balance.available_micros == 5_000_000 - expected
    assert await no_active_holds(ledger, "alice")


@pytest.mark.parametrize("multiplier", [Decimal("1.5"), Decimal("1.1")])
async def test_tier_multiplier_rounds_once_after_multiplying(
    provisioner: Provisioner, ledger: Ledger, multiplier: Decimal
) -> None:
    llm = CreditedLLM(provisioner, price_multipliers={"trial": multiplier})
    response = await llm.acompletion("bob", model=MODEL, messages=MESSAGES, mock_response=TEXT)
    cost = litellm.completion_cost(completion_response=response)
    [capture] = await captures(ledger, "bob")
    assert capture.amount_micros == micros_up(cost, multiplier)
    if multiplier == Decimal("1.1"):  # 13.5 µc x 1.1 = 14.85 -> 15, not ceil(13.5) x 1.1 -> 16
        assert capture.amount_micros == 15
    assert capture.metadata["multiplier"] == str(multiplier)


async def test_provider_error_releases_the_hold(llm: CreditedLLM, ledger: Ledger) -> None:
    with pytest.raises(InternalServerError):
        await llm.acompletion(
            "carol", model=MODEL, messages=MESSAGES, mock_response=Exception("provider down")
        )
    kinds = [e.kind for e in await ledger.history("carol")]
    assert kinds[:2] == ["release", "hold"]
    assert (await ledger.balance("carol")).available_micros == 5_000_000
    assert await no_active_holds(ledger, "carol")


async def test_refused_before_any_provider_call_when_credits_are_short(
    ledger: Ledger, provider_calls: list[dict[str, Any]]
) -> None:
    llm = CreditedLLM(Provisioner(ledger, TrialPolicy(amount=Decimal("0.0001"))))
    with pytest.raises(InsufficientCredits) as info:
        await llm.acompletion("dave", model=MODEL, messages=MESSAGES, mock_response=TEXT)
    assert info.value.available == Decimal("0.0001")
    assert info.value.required == llm.estimate(model=MODEL, messages=MESSAGES)
    assert provider_calls == []
    assert await ledger.get_account("dave") is not None  # the failsafe layer provisioned it


async def test_unknown_model_is_refused_not_billed_zero(
    llm: CreditedLLM, ledger: Ledger, provider_calls: list[dict[str, Any]]
) -> None:
    with pytest.raises(UnknownModelPrice) as info:
        await llm.acompletion(
            "erin", model="openai/acme-unpriced", messages=MESSAGES, mock_response=TEXT
        )
    assert info.value.model == "openai/acme-unpriced"
    assert provider_calls == []


async def test_unknown_model_uses_the_configured_fallback_price(
    provisioner: Provisioner, ledger: Ledger
) -> None:
    llm = CreditedLLM(provisioner, unknown_model_price=Decimal("0.002"))  # per 1k tokens
    await llm.acompletion(
        "frank", model="openai/acme-unpriced", messages=MESSAGES, mock_response=TEXT
    )
    [capture] = await captures(ledger, "frank")
    assert capture.amount_micros == 60  # (10 + 20) tokens x 0.002 / 1000 credits
    assert capture.metadata["price_source"] == "fallback"


async def test_per_call_custom_prices_are_used(llm: CreditedLLM, ledger: Ledger) -> None:
    await llm.acompletion(
        "gina",
        model="openai/acme-unpriced",
        messages=MESSAGES,
        mock_response=TEXT,
        input_cost_per_token=0.000001,
        output_cost_per_token=0.000002,
    )
    [capture] = await captures(ledger, "gina")
    assert capture.amount_micros == 50  # 10 x 1 µc + 20 x 2 µc


async def test_cancelled_call_releases_its_hold(
    llm: CreditedLLM, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = asyncio.Event()

    async def slow(**kwargs: Any) -> Any:
        started.set()
        await asyncio.sleep(60)

    monkeypatch.setattr(litellm, "acompletion", slow)
    task = asyncio.ensure_future(llm.acompletion("hank", model=MODEL, messages=MESSAGES))
    await asyncio.wait_for(started.wait(), 10)
    assert len(await ledger.holds("hank")) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await llm.drain()
    assert await no_active_holds(ledger, "hank")
    assert (await ledger.balance("hank")).available_micros == 5_000_000


async def test_call_outliving_its_hold_is_still_billed(
    provisioner: Provisioner, ledger: Ledger, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold timed out during the call: capture is refused, the cost is debited instead."""
    llm = CreditedLLM(provisioner, hold_timeout=30)
    real = litellm.acompletion

    async def slow(**kwargs: Any) -> Any:
        clock.advance(31)
        return await real(**kwargs)

    monkeypatch.setattr(litellm, "acompletion", slow)
    response = await llm.acompletion("ivy", model=MODEL, messages=MESSAGES, mock_response=TEXT)
    expected = micros_up(litellm.completion_cost(completion_response=response))
    [late] = [e for e in await ledger.history("ivy") if e.kind == "debit"]
    assert late.amount_micros == expected and late.metadata["late"] is True
    assert await no_active_holds(ledger, "ivy")


async def test_embedding_is_metered(llm: CreditedLLM, ledger: Ledger) -> None:
    response = await llm.aembedding(
        "jack", model="text-embedding-3-small", input=["hello"], mock_response=[0.1, 0.2]
    )
    [capture] = await captures(ledger, "jack")
    assert capture.amount_micros == micros_up(response._hidden_params["response_cost"])
    assert capture.amount_micros > 0


# ---------------------------------------------------------------- streams


async def read(
    stream: CreditedStream, stop_after: int | None = None, into: list[Any] | None = None
) -> list[Any]:
    chunks: list[Any] = [] if into is None else into
    async for chunk in stream:
        chunks.append(chunk)
        if stop_after is not None and len(chunks) == stop_after:
            break
    return chunks


def content(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def expected_for_text(text: str) -> int:
    prompt = litellm.token_counter(model=MODEL, messages=MESSAGES)
    completion = litellm.token_counter(model=MODEL, text=text, count_response_tokens=True)
    p, c = litellm.cost_per_token(model=MODEL, prompt_tokens=prompt, completion_tokens=completion)
    return micros_up(Decimal(repr(p)) + Decimal(repr(c)))


async def test_full_stream_is_billed_from_its_usage_chunk(llm: CreditedLLM, ledger: Ledger) -> None:
    stream = await llm.acompletion(
        "kim", model=MODEL, messages=MESSAGES, mock_response=TEXT, stream=True
    )
    chunks = await read(stream)
    assert content(chunks) == TEXT
    usage = chunks[-1].usage
    assert usage.completion_tokens > 0
    p, c = litellm.cost_per_token(
        model=MODEL, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
    )
    [capture] = await captures(ledger, "kim")
    assert capture.amount_micros == micros_up(Decimal(repr(p)) + Decimal(repr(c))) > 0
    assert capture.metadata["outcome"] == "complete"
    assert stream.receipt is not None and stream.receipt.entry.entry_id == capture.entry_id
    assert await no_active_holds(ledger, "kim")


async def test_stream_without_usage_is_rebuilt_never_zero(llm: CreditedLLM, ledger: Ledger) -> None:
    stream = await llm.acompletion(
        "lou",
        model=MODEL,
        messages=MESSAGES,
        mock_response=TEXT,
        stream=True,
        stream_options={"include_usage": False},
    )
    chunks = await read(stream)
    assert all(getattr(c, "usage", None) is None for c in chunks)
    [capture] = await captures(ledger, "lou")
    assert capture.amount_micros == expected_for_text(TEXT) > 0
    assert capture.metadata["completion_tokens"] > 0


@pytest.mark.parametrize("how", ["aclose", "async_with", "dropped"])
async def test_client_stopping_after_two_chunks_pays_for_them(
    llm: CreditedLLM, ledger: Ledger, how: str
) -> None:
    stream = await llm.acompletion(
        "mia", model=MODEL, messages=MESSAGES, mock_response=TEXT, stream=True
    )
    if how == "async_with":
        async with stream:
            chunks = await read(stream, stop_after=2)
    else:
        chunks = await read(stream, stop_after=2)
        if how == "aclose":
            await stream.aclose()
        else:
            del stream  # dropped mid-stream: settles in the background
            await llm.drain()
    assert len(chunks) == 2
    [capture] = await captures(ledger, "mia")
    assert capture.amount_micros == expected_for_text(content(chunks)) > 0
    outcome = "abandoned" if how == "dropped" else "client_closed"
    assert capture.metadata["outcome"] == outcome
    assert await no_active_holds(ledger, "mia")


class _Breaks:
    """A provider stream that fails after ``after`` chunks."""

    def __init__(self, inner: Any, after: int) -> None:
        self.inner, self.after, self.sent = inner, after, 0

    def __aiter__(self) -> _Breaks:
        return self

    async def __anext__(self) -> Any:
        if self.sent == self.after:
            raise APIConnectionError(
                message="connection reset mid-stream", llm_provider="openai", model=MODEL
            )
        self.sent += 1
        return await self.inner.__anext__()


def breaking_after(n: int) -> Callable[..., Any]:
    real = litellm.acompletion

    async def call(**kwargs: Any) -> Any:
        return _Breaks(await real(**kwargs), n)

    return call


async def test_provider_error_mid_stream_charges_what_was_generated(
    llm: CreditedLLM, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(litellm, "acompletion", breaking_after(2))
    stream = await llm.acompletion(
        "ned", model=MODEL, messages=MESSAGES, mock_response=TEXT, stream=True
    )
    chunks: list[Any] = []
    with pytest.raises(APIConnectionError):
        await read(stream, into=chunks)
    [capture] = await captures(ledger, "ned")
    assert capture.amount_micros == expected_for_text(content(chunks)) > 0
    assert capture.metadata["outcome"] == "provider_error"
    assert await no_active_holds(ledger, "ned")


async def test_provider_error_before_any_chunk_releases(
    llm: CreditedLLM, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(litellm, "acompletion", breaking_after(0))
    stream = await llm.acompletion(
        "oli", model=MODEL, messages=MESSAGES, mock_response=TEXT, stream=True
    )
    with pytest.raises(APIConnectionError):
        await read(stream)
    assert await captures(ledger, "oli") == []
    assert (await ledger.balance("oli")).available_micros == 5_000_000
    assert await no_active_holds(ledger, "oli")


class _Stalls:
    """A provider stream that stalls forever after ``after`` chunks."""

    def __init__(self, inner: Any, after: int) -> None:
        self.inner, self.after, self.sent = inner, after, 0
        self.stalled = asyncio.Event()

    def __aiter__(self) -> _Stalls:
        return self

    async def __anext__(self) -> Any:
        if self.sent == self.after:
            self.stalled.set()
            await asyncio.sleep(3600)
        self.sent += 1
        return await self.inner.__anext__()


async def test_reader_cancelled_mid_stream_pays_for_what_it_got(
    llm: CreditedLLM, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = litellm.acompletion
    made: list[_Stalls] = []

    async def stalling(**kwargs: Any) -> Any:
        made.append(_Stalls(await real(**kwargs), 2))
        return made[-1]

    monkeypatch.setattr(litellm, "acompletion", stalling)
    stream = await llm.acompletion(
        "pia", model=MODEL, messages=MESSAGES, mock_response=TEXT, stream=True
    )
    chunks: list[Any] = []
    task = asyncio.ensure_future(read(stream, into=chunks))
    await asyncio.wait_for(made[0].stalled.wait(), 10)
    assert len(chunks) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await llm.drain()
    [capture] = await captures(ledger, "pia")
    assert capture.amount_micros == expected_for_text(content(chunks)) > 0
    assert capture.metadata["outcome"] == "cancelled"
    assert await no_active_holds(ledger, "pia")


# ---------------------------------------------------------------- concurrency and faults


async def test_concurrent_calls_never_hold_more_than_the_balance(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = CreditedLLM(Provisioner(ledger))
    hold = probe.estimate(model=MODEL, messages=MESSAGES, max_tokens=1000)
    trial = hold * 21 - Decimal("0.000001")  # covers 20 holds, not 21
    llm = CreditedLLM(Provisioner(ledger, TrialPolicy(amount=trial)))
    real = litellm.acompletion
    gate = asyncio.Event()
    inside = {"now": 0, "max": 0, "calls": 0}

    async def gated(**kwargs: Any) -> Any:
        inside["calls"] += 1
        inside["now"] += 1
        inside["max"] = max(inside["max"], inside["now"])
        await gate.wait()
        inside["now"] -= 1
        return await real(**kwargs)

    monkeypatch.setattr(litellm, "acompletion", gated)
    refused: list[InsufficientCredits] = []

    async def one() -> None:
        try:
            await llm.acompletion(
                "pat", model=MODEL, messages=MESSAGES, max_tokens=1000, mock_response=TEXT
            )
        except InsufficientCredits as exc:
            refused.append(exc)

    tasks = [asyncio.ensure_future(one()) for _ in range(50)]
    for _ in range(3000):  # until every call is either inside the provider or refused
        if inside["now"] + len(refused) == 50:
            break
        await asyncio.sleep(0.01)
    assert inside["now"] == 20 and len(refused) == 30
    gate.set()
    await asyncio.gather(*tasks)
    assert inside["max"] == 20 and inside["calls"] == 20
    charged = sum(e.amount_micros for e in await captures(ledger, "pat"))
    balance = await ledger.balance("pat")
    assert balance.held_micros == 0 and balance.available_micros >= 0
    assert balance.spendable_micros == int(trial * 10**6) - charged


async def test_failsafe_layer_provisions_once_under_concurrency(ledger: Ledger) -> None:
    """30 concurrent first calls for a user no other layer knows, through two processes'
    worth of provisioners: one account, one trial grant, 30 captures."""
    llms = [CreditedLLM(Provisioner(ledger)), CreditedLLM(Provisioner(ledger))]
    await asyncio.gather(
        *(
            llms[i % 2].acompletion("newbie", model=MODEL, messages=MESSAGES, mock_response=TEXT)
            for i in range(30)
        )
    )
    history = await ledger.history("newbie", limit=1000)
    grants = [e for e in history if e.kind == "grant"]
    assert len(grants) == 1 and grants[0].layer == "litellm"
    assert len([e for e in history if e.kind == "capture"]) == 30
    balance = await ledger.balance("newbie")
    assert [g.source for g in balance.grants] == ["trial"]


_KILLED_WORKER = """
import asyncio, os, sys
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import litellm
from credit_middleware import Ledger, Provisioner
from credit_middleware.integrations.litellm import CreditedLLM

async def hang(**kwargs):
    print("CALLING", flush=True)
    await asyncio.sleep(3600)

litellm.acompletion = hang

async def main():
    start = float(sys.argv[2])
    ledger = Ledger(sys.argv[1], clock=lambda: start)
    llm = CreditedLLM(Provisioner(ledger), hold_timeout=30)
    messages = [{"role": "user", "content": "hi"}]
    await llm.acompletion("victim", model="gpt-4o-mini", messages=messages)

asyncio.run(main())
"""


async def test_process_killed_between_hold_and_capture_loses_nothing(
    ledger: Ledger, ledger_url: str, clock: Any, tmp_path: Any
) -> None:
    import signal
    import subprocess
    import sys

    script = tmp_path / "killed_worker.py"
    script.write_text(_KILLED_WORKER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        ledger_url,
        repr(clock.now),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"CALLING"  # the hold is written, the provider call is running
        proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    [hold] = await ledger.holds("victim")
    balance = await ledger.balance("victim")
    assert balance.held_micros == hold.amount_micros > 0
    clock.advance(31)
    await ledger.sweep()
    assert await no_active_holds(ledger, "victim")
    balance = await ledger.balance("victim")
    assert balance.held_micros == 0 and balance.available_micros == 5_000_000
    assert await captures(ledger, "victim") == []
