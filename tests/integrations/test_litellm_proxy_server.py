"""The real LiteLLM proxy (``litellm --config``, two worker processes) with the credit hook,
driven by the official ``openai`` SDK in front of a fake provider (real HTTP, fixed answers),
billing a private PostgreSQL this module may stop: every priced call is charged what LiteLLM
says the deployment that answered costs (a fallback's, after the primary failed), what nothing
prices is refused before any provider call, refusals keep a shape the SDK reads on every route,
a ledger outage mid-stream neither breaks the stream nor loses its capture, and a short
recording holds its own length. Needs ``credit-middleware[litellm-proxy]``: skipped where it is
missing, failed under ``CI=true``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import pytest
from _litellm_helpers import wav

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
from _litellm_proxy_run import UNREACHABLE, need_proxy, proxy, upstream

from credit_middleware import Ledger, Provisioner
from credit_middleware.integrations.litellm.pricing import usd

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:Item '.*' on TypedDict class '.*' is using the `ReadOnly` qualifier:UserWarning"
    ),
]

ALIAS = {"input_cost_per_token": 0.000002, "output_cost_per_token": 0.000008}
PRIVATE = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000003}
GATED = {"input_cost_per_token": 0.0000005, "output_cost_per_token": 0.0000015}
M: Any = [{"role": "user", "content": "Hello, ledger."}]


def _flow(mapping: dict[str, Any]) -> str:
    """A YAML flow mapping; prices in fixed point (YAML reads ``2e-06`` as a string)."""
    items = (f"{k}: {v:.12f}" if isinstance(v, float) else f"{k}: {v}" for k, v in mapping.items())
    return "{" + ", ".join(items) + "}"


def _config(up: str) -> str:
    v1 = f"{up}/v1"

    def at(name: str, model: str, base: Any = v1, **extra: Any) -> str:
        params = {"model": model, "api_key": "sk-not-used", "api_base": base}
        info = extra.pop("model_info", None)
        params.update(extra)
        line = f"  - model_name: {name}\n    litellm_params: {_flow(params)}\n"
        return line + (f"    model_info: {_flow(info)}\n" if info else "")

    return (
        "model_list:\n"
        + at("gpt-4o-mini", "openai/gpt-4o-mini")
        + at("my-assistant", "openai/gpt-4o-mini", **ALIAS)
        + at("gated", "openai/gated-gpt-4o-mini", **GATED)
        + at("text-embedding-3-small", "openai/text-embedding-3-small")
        + at("broken", "openai/gpt-4o-mini", UNREACHABLE)
        + at("cheap", "openai/gpt-4o-mini", UNREACHABLE)
        + at("pricey", "openai/gpt-4o")
        + at("pricey-down", "openai/gpt-4o", UNREACHABLE)
        + at("unpriced", "openai/my-private-model")
        + at("private-priced", "openai/my-private-model", model_info=PRIVATE)
        + at("dall-e-3", "openai/dall-e-3")
        + at("dall-e-3-priced", "openai/dall-e-3", model_info={"output_cost_per_image": 0.04})
        + at("gpt-image-1", "openai/gpt-image-1")
        + at("whisper-1", "openai/whisper-1")
        + at("tts-1", "openai/tts-1")
        + at("omni-moderation-latest", "openai/omni-moderation-latest")
        + at("rerank", "cohere/rerank-english-v3.0", up)
        + "  - model_name: claude\n"
        + "    litellm_params: {model: anthropic/claude-haiku-4-5, api_key: sk-not-used,"
        + ' mock_response: "Claude, mocked."}\n'
        + "router_settings:\n"
        + '  fallbacks: [{"cheap": ["pricey"]}, {"pricey-down": ["gpt-4o-mini"]}]\n'
        + "litellm_settings:\n  callbacks: credit_hooks.credits\n  num_retries: 0\n"
        + "  request_timeout: 20\n"
        + "general_settings:\n  master_key: sk-master\n  custom_auth: credit_hooks.auth\n"
    )


HOOKS = """
import os
import redis.asyncio as redis
from litellm.proxy._types import UserAPIKeyAuth
from credit_middleware import Ledger, Provisioner, RedisLocks
from credit_middleware.integrations.litellm.proxy import CreditProxyHook

class Credits(CreditProxyHook):  # a subclass: the proxy must still find every hook
    async def async_post_call_response_headers_hook(self, data, user_api_key_dict, response,
                                                    request_headers=None, litellm_call_info=None):
        headers = await super().async_post_call_response_headers_hook(
            data, user_api_key_dict, response, request_headers, litellm_call_info)
        return {**(headers or {}), "x-worker-pid": str(os.getpid())}

ledger = Ledger(os.environ["CM_LEDGER_URL"], timeout=1.5)
locks = RedisLocks(redis.Redis.from_url(os.environ["CM_REDIS_URL"]),
                   prefix=os.environ["CM_KEY_PREFIX"] + "lock:")
credits = Credits(Provisioner(ledger, locks=locks))

async def auth(request, api_key):
    # keys "sk-user-<id>" belong to user <id>; any other key names no user
    if api_key.startswith("sk-user-"):
        return UserAPIKeyAuth(api_key=api_key, user_id=api_key[len("sk-user-"):])
    return UserAPIKeyAuth(api_key=api_key)
"""


@dataclass
class Stack:
    proxy: str
    upstream: str
    ledger_url: str
    pg: Any
    pids: set[str]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One proxy (2 workers), one fake provider, one private PostgreSQL, for the module."""
    need_proxy()
    from chaos.services import PrivatePostgres

    folder = tmp_path_factory.mktemp("litellm-proxy")
    # PostgreSQL runs as its own user, who cannot enter pytest's folders: a folder of its own
    pg_home = tempfile.TemporaryDirectory(prefix="cm-litellm-pg-")
    pg = PrivatePostgres(Path(pg_home.name))
    try:
        pg.start()
    except Exception as exc:  # no PostgreSQL binaries here
        if os.environ.get("CI") == "true":
            raise
        pg_home.cleanup()
        pytest.skip(f"cannot start a private PostgreSQL: {exc}")
    prefix = f"cmtest:{secrets.token_hex(4)}:"
    try:

        async def migrate() -> None:
            async with Ledger(pg.url) as ledger:
                await ledger.migrate()

        asyncio.run(migrate())
        env = {
            "CM_LEDGER_URL": pg.url,
            "CM_REDIS_URL": os.environ.get("CREDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "CM_KEY_PREFIX": prefix,
        }
        with upstream(folder) as up, proxy(folder, _config(up), HOOKS, env, workers=2) as base:
            yield Stack(base, up, pg.url, pg, set())
    finally:
        pg.stop()
        pg_home.cleanup()
        _forget_redis_keys(prefix)


def _forget_redis_keys(prefix: str) -> None:
    import redis

    with contextlib.suppress(redis.RedisError, OSError):
        client = redis.Redis.from_url(
            os.environ.get("CREDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"), socket_timeout=2
        )
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
async def ledger(stack: Stack) -> AsyncIterator[Ledger]:
    """The proxy's ledger, verified clean after each test."""
    async with Ledger(stack.ledger_url) as led:
        yield led
        report = await led.verify()
        assert report.ok, report.discrepancies


@pytest.fixture
async def sdk(stack: Stack) -> AsyncIterator[Any]:
    """``sdk(key)``: an ``openai.AsyncOpenAI`` on the proxy, closed after the test."""
    import openai

    made: list[Any] = []

    def client(key: str) -> Any:
        made.append(openai.AsyncOpenAI(base_url=stack.proxy, api_key=key, max_retries=0))
        return made[-1]

    yield client
    for c in made:
        await c.close()


def micros_up(*costs: object) -> int:
    """LiteLLM's float dollars, read as the library reads them (15 significant digits),
    summed and rounded up to 1 µc once."""
    exact = sum((usd(c) for c in costs), Decimal(0))
    return int((exact * 10**6).to_integral_value(ROUND_CEILING))


def account(name: str) -> str:
    """A fresh account name per test run (the ledger is shared by the module)."""
    return f"{name}-{secrets.token_hex(3)}"


async def with_credits(ledger: Ledger, who: str, credits: str) -> None:
    """Provision ``who`` and leave exactly ``credits`` available."""
    await Provisioner(ledger).ensure_account(who, layer="litellm")
    extra = (await ledger.balance(who)).available - Decimal(credits)
    if extra > 0:
        await ledger.debit(who, extra)


async def captures(ledger: Ledger, who: str, call_ids: set[str]) -> dict[str, Any]:
    """Captures by call id, once every call was settled and no hold is left active."""
    found: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entries = await ledger.history(who, limit=1000)
        found = {str(e.metadata.get("request_id")): e for e in entries if e.kind == "capture"}
        if call_ids <= found.keys() and not await ledger.holds(who):
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"calls never settled: {call_ids - found.keys()}")


async def upstream_calls(stack: Stack) -> dict[str, int]:
    async with httpx.AsyncClient() as http:
        calls: dict[str, int] = (await http.get(f"{stack.upstream}/control/calls")).json()
        return calls


def cost_header(raw: Any) -> float:
    return float(raw.headers["x-litellm-response-cost"])


async def test_every_call_type_is_billed_what_litellm_charges(
    stack: Stack, ledger: Ledger, sdk: Any
) -> None:
    import litellm

    ann = account("ann")
    client = sdk(f"sk-user-{ann}")
    expected: dict[str, int] = {}  # call id -> µc LiteLLM says the call cost

    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=M)
    chat = raw.parse()
    stack.pids.add(raw.headers["x-worker-pid"])
    assert raw.headers.get("credit-balance") is not None
    own = litellm.completion_cost(
        completion_response=litellm.ModelResponse(**chat.model_dump()), model="openai/gpt-4o-mini"
    )
    assert micros_up(own) == micros_up(cost_header(raw))  # LiteLLM's cost, by either route
    expected[raw.headers["x-litellm-call-id"]] = micros_up(own)

    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=M, stream=True, stream_options={"include_usage": True}
    )
    usage = [c async for c in raw.parse()][-1].usage
    p, c = litellm.cost_per_token(
        model="openai/gpt-4o-mini",
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )
    expected[raw.headers["x-litellm-call-id"]] = micros_up(p, c)

    raw = await client.chat.completions.with_raw_response.create(model="my-assistant", messages=M)
    u = raw.parse().usage
    expected[raw.headers["x-litellm-call-id"]] = micros_up(
        Decimal(repr(ALIAS["input_cost_per_token"])) * u.prompt_tokens
        + Decimal(repr(ALIAS["output_cost_per_token"])) * u.completion_tokens
    )
    assert expected[raw.headers["x-litellm-call-id"]] == micros_up(cost_header(raw))

    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        r = await http.post(
            "/v1/messages",
            headers={"Authorization": f"Bearer sk-user-{ann}"},
            json={"model": "claude", "max_tokens": 100, "messages": M},
        )
    assert r.status_code == 200, r.text
    p, c = litellm.cost_per_token(
        model="anthropic/claude-haiku-4-5",
        prompt_tokens=r.json()["usage"]["input_tokens"],
        completion_tokens=r.json()["usage"]["output_tokens"],
    )
    expected[r.headers["x-litellm-call-id"]] = micros_up(p, c)

    calls = {  # the rest: LiteLLM's own cost of each, as it reports it
        "responses": client.responses.with_raw_response.create(model="gpt-4o-mini", input="Hi"),
        "embeddings": client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input="Hello"
        ),
        "image": client.images.with_raw_response.generate(
            model="gpt-image-1", prompt="a ledger", size="1024x1024", quality="low"
        ),
        "speech": client.audio.speech.with_raw_response.create(
            model="tts-1", input="Hello there", voice="alloy"
        ),
        "transcription": client.audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=("hello.wav", wav(3.0))
        ),
    }
    for name, call in calls.items():
        raw = await call
        assert cost_header(raw) > 0, name
        expected[raw.headers["x-litellm-call-id"]] = micros_up(cost_header(raw))

    stream = await client.responses.create(model="gpt-4o-mini", input="Hi", stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "response.completed"  # streamed /v1/responses is served whole
    done = events[-1].response.usage
    p, c = litellm.cost_per_token(
        model="openai/gpt-4o-mini",
        prompt_tokens=done.input_tokens,
        completion_tokens=done.output_tokens,
    )

    import openai

    with pytest.raises(openai.InternalServerError):  # no fallback: the request fails ...
        await client.chat.completions.create(model="broken", messages=M)

    billed = await captures(ledger, ann, set(expected))  # ... and its hold is released
    releases = [e for e in await ledger.history(ann, limit=1000) if e.kind == "release"]
    assert len(releases) == 1
    amounts = {call_id: billed[call_id].amount_micros for call_id in expected}
    print(f"billed µc {sorted(amounts.values())} vs LiteLLM {sorted(expected.values())}")
    assert amounts == expected
    assert all(v > 0 for v in amounts.values())
    streamed = [e for e in billed.values() if e.metadata.get("request_id") not in expected]
    assert [e.amount_micros for e in streamed] == [micros_up(p, c)]


async def test_a_fallback_is_billed_at_the_deployment_that_answered(
    stack: Stack, ledger: Ledger, sdk: Any
) -> None:
    """``cheap`` fails at once and the router falls back to ``pricey`` (gpt-4o): the call is
    captured at gpt-4o's cost, and the hold covered gpt-4o's worst case."""
    import litellm

    fred = account("fred")
    raw = await sdk(f"sk-user-{fred}").chat.completions.with_raw_response.create(
        model="cheap", messages=M
    )
    assert raw.headers["x-litellm-attempted-fallbacks"] == "1"
    call_id = raw.headers["x-litellm-call-id"]
    [capture] = (await captures(ledger, fred, {call_id})).values()
    u = raw.parse().usage
    p, c = litellm.cost_per_token(
        model="openai/gpt-4o", prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens
    )
    assert capture.amount_micros == micros_up(p, c) == micros_up(cost_header(raw)) > 0
    assert capture.model == "openai/gpt-4o"
    [hold] = [e for e in await ledger.history(fred) if e.kind == "hold"]
    p, c = litellm.cost_per_token(
        model="openai/gpt-4o",
        prompt_tokens=hold.metadata["prompt_tokens"],
        completion_tokens=hold.metadata["max_tokens"],
    )
    assert hold.amount_micros == micros_up(p, c)
    assert not [e for e in await ledger.history(fred) if e.kind == "release"]

    # the other way round: held for the dear primary, served by its cheap fallback, which is
    # what is captured and the model the entry names
    raw = await sdk(f"sk-user-{fred}").chat.completions.with_raw_response.create(
        model="pricey-down", messages=M
    )
    call_id = raw.headers["x-litellm-call-id"]
    capture = (await captures(ledger, fred, {call_id}))[call_id]
    u = raw.parse().usage
    p, c = litellm.cost_per_token(
        model="openai/gpt-4o-mini",
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
    )
    assert capture.amount_micros == micros_up(p, c) == micros_up(cost_header(raw))
    assert (capture.model, capture.metadata["held_for"]) == ("openai/gpt-4o-mini", "openai/gpt-4o")


async def test_a_user_who_covers_only_the_primary_is_refused_before_any_call(
    stack: Stack, ledger: Ledger, sdk: Any
) -> None:
    """0.01 credits cover ``cheap``'s worst case (gpt-4o-mini, ~0.0025) but not its fallback's
    (gpt-4o, ~0.04): refused with 402 before the provider is called, nothing held."""
    gina = account("gina")
    await with_credits(ledger, gina, "0.01")
    before = await upstream_calls(stack)
    import openai

    with pytest.raises(openai.APIStatusError) as info:
        await sdk(f"sk-user-{gina}").chat.completions.create(model="cheap", messages=M)
    assert (info.value.status_code, info.value.code) == (402, "insufficient_credits")
    assert await upstream_calls(stack) == before
    assert [e.kind for e in await ledger.history(gina)] == ["debit", "grant"]


async def test_what_nothing_prices_is_refused_and_configured_prices_bill(
    stack: Stack, ledger: Ledger, sdk: Any
) -> None:
    """A deployment LiteLLM has no price for (a private model; ``openai/dall-e-3``, absent
    from LiteLLM 1.108's table) is refused before any provider call; with prices in its
    ``model_info`` it is served and billed at them, images per image."""
    import openai

    una = account("una")
    client = sdk(f"sk-user-{una}")
    before = await upstream_calls(stack)
    attempts = {
        "chat": client.chat.completions.create(model="unpriced", messages=M),
        "image": client.images.generate(model="dall-e-3", prompt="a ledger"),
    }
    for name, attempt in attempts.items():
        with pytest.raises(openai.APIStatusError) as info:
            await attempt
        assert info.value.status_code == 400, name
        assert info.value.type == "unknown_model_price", name
        assert "no price known" in info.value.message
    assert await upstream_calls(stack) == before
    assert not await ledger.holds(una)

    raw = await client.chat.completions.with_raw_response.create(model="private-priced", messages=M)
    u = raw.parse().usage
    private = micros_up(
        Decimal(repr(PRIVATE["input_cost_per_token"])) * u.prompt_tokens
        + Decimal(repr(PRIVATE["output_cost_per_token"])) * u.completion_tokens
    )
    img = await client.images.with_raw_response.generate(
        model="dall-e-3-priced", prompt="a ledger", n=2, size="1024x1024"
    )
    assert len(img.parse().data) == 2
    ids = {raw.headers["x-litellm-call-id"], img.headers["x-litellm-call-id"]}
    billed = await captures(ledger, una, ids)
    assert billed[raw.headers["x-litellm-call-id"]].amount_micros == private > 0
    assert billed[img.headers["x-litellm-call-id"]].amount_micros == 2 * 40_000
    holds = {e.metadata["request_id"]: e for e in await ledger.history(una) if e.kind == "hold"}
    assert holds[img.headers["x-litellm-call-id"]].amount_micros == 2 * 40_000


async def test_a_short_recording_holds_its_own_length(
    stack: Stack, ledger: Ledger, sdk: Any
) -> None:
    """whisper-1 costs $0.0001 a second: a 2-second recording holds 200 µc (not the hour a
    missing length would assume), so 0.001 credits are enough."""
    tess = account("tess")
    await with_credits(ledger, tess, "0.001")
    raw = await sdk(f"sk-user-{tess}").audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("short.wav", wav(2.0))
    )
    call_id = raw.headers["x-litellm-call-id"]
    [capture] = (await captures(ledger, tess, {call_id})).values()
    assert capture.amount_micros == micros_up(cost_header(raw)) == 200
    [hold] = [e for e in await ledger.history(tess) if e.kind == "hold"]
    assert hold.amount_micros == 200
    assert hold.metadata["audio_seconds"] == 2.0


def _refusals(client: Any) -> dict[str, Any]:
    async def streamed_chat() -> None:
        s = await client.chat.completions.create(model="gpt-4o-mini", messages=M, stream=True)
        async for _ in s:
            pass

    async def streamed_responses() -> None:
        s = await client.responses.create(model="gpt-4o-mini", input="Hello", stream=True)
        async for _ in s:
            pass

    return {
        "chat": client.chat.completions.create(model="gpt-4o-mini", messages=M),
        "stream": streamed_chat(),
        "completions": client.completions.create(model="gpt-4o-mini", prompt="Hello"),
        "responses": client.responses.create(model="gpt-4o-mini", input="Hello"),
        "responses_stream": streamed_responses(),
        "embeddings": client.embeddings.create(model="text-embedding-3-small", input="Hello"),
        "alias": client.chat.completions.create(model="my-assistant", messages=M),
        "speech": client.audio.speech.create(model="tts-1", input="Hello", voice="alloy"),
        "moderation": client.moderations.create(model="omni-moderation-latest", input="Hello"),
        "image": client.images.generate(model="gpt-image-1", prompt="a ledger"),
        "transcription": client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav(1.0))
        ),
        "rerank": client.post(
            "/v1/rerank",
            body={"model": "rerank", "query": "q", "documents": ["a"]},
            cast_to=httpx.Response,
        ),
    }


#: Routes where LiteLLM rebuilds the error raised by a hook: the status goes into ``code``,
#: and ``Retry-After`` and the figures are dropped (measured on 1.108.7 and 1.110.2).
REBUILT = {"image", "transcription", "rerank"}


async def test_every_refusal_keeps_a_shape_the_sdks_read(
    stack: Stack, ledger: Ledger, sdk: Any
) -> None:
    import openai

    bob = account("broke")
    await with_credits(ledger, bob, "0")
    client = sdk(f"sk-user-{bob}")
    before = await upstream_calls(stack)
    seen: dict[str, Any] = {}
    for name, attempt in _refusals(client).items():
        with pytest.raises(openai.APIStatusError) as info:
            await attempt
        e = info.value
        seen[name] = (e.status_code, e.type, e.code)
        if name not in REBUILT:
            assert isinstance(e.body, dict) and e.body["available"] == "0", (name, e.body)
            assert Decimal(e.body["required"]) > 0
    assert seen == {
        name: (402, "insufficient_credits", "402" if name in REBUILT else "insufficient_credits")
        for name in seen
    }, seen
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        for stream in (False, True):
            r = await http.post(
                "/v1/messages",
                headers={"Authorization": f"Bearer sk-user-{bob}"},
                json={"model": "claude", "max_tokens": 100, "messages": M, "stream": stream},
            )
            assert r.status_code == 402, r.text
            error = r.json()["error"]  # Anthropic's envelope, with our type and figures
            assert r.json()["type"] == "error"
            assert error["type"] == error["code"] == "insufficient_credits", error
            assert error["available"] == "0" and "not enough credits" in error["message"]
    with pytest.raises(openai.BadRequestError) as unbillable:
        await client.files.list()
    assert unbillable.value.code == "call_type_not_billable"
    assert "GET /files" in unbillable.value.message  # the route, not its internal call type
    assert await upstream_calls(stack) == before  # no provider was called for the broke
    assert [e.kind for e in await ledger.history(bob)] == ["debit", "grant"]


async def test_the_ledger_going_down_mid_stream(stack: Stack, ledger: Ledger, sdk: Any) -> None:
    """PostgreSQL stops answering while a stream is being served: the stream still ends
    cleanly, a call arriving meanwhile gets 503 with Retry-After, and once the database is
    back the stream's capture lands exactly once and no hold is left behind."""
    import litellm
    import openai

    olga = account("olga")
    await Provisioner(ledger).ensure_account(olga, layer="litellm")
    client = sdk(f"sk-user-{olga}")
    raw = await client.chat.completions.with_raw_response.create(
        model="gated", messages=M, stream=True, stream_options={"include_usage": True}
    )
    call_id = raw.headers["x-litellm-call-id"]
    stream = raw.parse()
    chunks = [await stream.__anext__(), await stream.__anext__()]  # then the provider waits
    paused = stack.pg.pause()
    try:
        async with httpx.AsyncClient() as http:
            await http.post(f"{stack.upstream}/control/open")
        chunks += [c async for c in stream]  # ends cleanly: no truncated body
        with pytest.raises(openai.APIStatusError) as down:
            await client.chat.completions.create(model="gpt-4o-mini", messages=M)
    finally:
        stack.pg.resume(paused)
        async with httpx.AsyncClient() as http:
            await http.post(f"{stack.upstream}/control/close")
    assert chunks[-1].usage is not None
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    assert (down.value.status_code, down.value.code) == (503, "credits_unavailable")
    assert down.value.response.headers["retry-after"] == "5"

    [capture] = (await captures(ledger, olga, {call_id})).values()
    u = chunks[-1].usage
    assert capture.amount_micros == micros_up(
        Decimal(repr(GATED["input_cost_per_token"])) * u.prompt_tokens
        + Decimal(repr(GATED["output_cost_per_token"])) * u.completion_tokens
    )
    entries = await ledger.history(olga)
    assert [e.kind for e in entries].count("capture") == 1
    held = [e for e in entries if e.kind == "hold"]
    closed = {e.hold_id for e in entries if e.kind in ("capture", "release")}
    assert {e.hold_id for e in held} <= closed  # the 503'd call left no hold behind
    prompt_only, _ = litellm.cost_per_token(
        model="openai/gpt-4o-mini", prompt_tokens=u.prompt_tokens, completion_tokens=0
    )
    assert capture.amount_micros > micros_up(prompt_only)


async def test_both_worker_processes_bill_into_one_ledger(
    stack: Stack, ledger: Ledger, sdk: Any
) -> None:
    """Calls land on both of the proxy's worker processes (each its own hook, connections and
    settlement queue): every call is billed once, at LiteLLM's cost."""
    wes = account("wes")
    expected: dict[str, int] = {}

    async def one() -> str:
        import openai

        async with openai.AsyncOpenAI(
            base_url=stack.proxy, api_key=f"sk-user-{wes}", max_retries=0
        ) as fresh:  # a new connection each time: the kernel hands it to either worker
            raw = await fresh.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=M
            )
        expected[raw.headers["x-litellm-call-id"]] = micros_up(cost_header(raw))
        return str(raw.headers["x-worker-pid"])

    pids = set(await asyncio.gather(*(one() for _ in range(12))))
    for _ in range(200):
        if len(pids | stack.pids) >= 2:
            break
        pids.add(await one())
    assert len(pids | stack.pids) == 2, pids
    billed = await captures(ledger, wes, set(expected))
    assert {k: billed[k].amount_micros for k in expected} == expected
    assert len([e for e in await ledger.history(wes, limit=1000) if e.kind == "hold"]) == len(
        expected
    )
