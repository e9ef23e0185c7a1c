"""The real LiteLLM proxy (``litellm --config``) with the credit hook, PostgreSQL and Redis
locks, driven by the official ``openai`` SDK: every call type a broke user tries is refused,
chat, streams, responses, Anthropic messages, embeddings and an alias are billed exactly what
``litellm.completion_cost`` says, and a failing deployment bills nothing. Deployments answer
with ``mock_response`` (no network). Needs ``credit-middleware[litellm-proxy]``: skipped where
it is missing, failed under ``CI=true``."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx

from credit_middleware import Ledger, Provisioner
from credit_middleware.integrations.litellm_pricing import usd

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:Item '.*' on TypedDict class '.*' is using the `ReadOnly` qualifier:UserWarning"
    ),
]

WORKTREE = Path(__file__).resolve().parent.parent
ALIAS_PRICES = {"input_cost_per_token": 0.000002, "output_cost_per_token": 0.000008}
UNREACHABLE = "http://127.0.0.1:9/v1"  # connection refused: a deployment that fails at once

CONFIG = f"""
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-not-used
      mock_response: "Hello from the mocked proxy, every token is billed."
  - model_name: my-assistant
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-not-used
      input_cost_per_token: {ALIAS_PRICES["input_cost_per_token"]}
      output_cost_per_token: {ALIAS_PRICES["output_cost_per_token"]}
      mock_response: "The alias answers, at its own price."
  - model_name: gpt-4.1
    litellm_params:  # the model LiteLLM's mocked Responses API says it is
      model: openai/gpt-4.1-2025-04-14
      api_key: sk-not-used
      mock_response: "Hello from the mocked Responses API."
  - model_name: claude
    litellm_params:
      model: anthropic/claude-haiku-4-5
      api_key: sk-not-used
      mock_response: "Claude, mocked."
  - model_name: text-embedding-3-small
    litellm_params:
      model: openai/text-embedding-3-small
      api_key: sk-not-used
      mock_response: [0.1, 0.2, 0.3]
  - model_name: broken
    litellm_params: {{model: openai/gpt-4o-mini, api_key: sk-not-used, api_base: {UNREACHABLE}}}
  - model_name: gpt-image-1
    litellm_params: {{model: openai/gpt-image-1, api_key: sk-not-used, api_base: {UNREACHABLE}}}
  - model_name: tts-1
    litellm_params: {{model: openai/tts-1, api_key: sk-not-used, api_base: {UNREACHABLE}}}
  - model_name: whisper-1
    litellm_params: {{model: openai/whisper-1, api_key: sk-not-used, api_base: {UNREACHABLE}}}
  - model_name: omni-moderation-latest
    litellm_params:
      model: openai/omni-moderation-latest
      api_key: sk-not-used
      api_base: {UNREACHABLE}
  - model_name: rerank
    litellm_params:
      model: cohere/rerank-english-v3.0
      api_key: sk-not-used
      api_base: {UNREACHABLE}
litellm_settings:
  callbacks: credit_hooks.credits
  num_retries: 0
  request_timeout: 10
general_settings:
  master_key: sk-master
  custom_auth: credit_hooks.auth
"""

HOOKS = """
import os
from litellm.proxy._types import UserAPIKeyAuth
from credit_middleware.integrations.litellm_proxy import CreditProxyHook

class Credits(CreditProxyHook):  # a subclass: the proxy must still find every hook
    pass

credits = Credits.from_url(
    os.environ["CM_LEDGER_URL"],
    redis_url=os.environ["CM_REDIS_URL"],
    key_prefix=os.environ["CM_KEY_PREFIX"],
)

async def auth(request, api_key):
    # keys "sk-user-<id>" belong to user <id>; any other key names no user
    if api_key.startswith("sk-user-"):
        return UserAPIKeyAuth(api_key=api_key, user_id=api_key[len("sk-user-"):])
    return UserAPIKeyAuth(api_key=api_key)
"""


#: Modules the proxy server imports that plain ``litellm`` does not install.
_PROXY_NEEDS = ("websockets", "apscheduler", "backoff", "orjson", "fastapi_sso", "multipart")
LITELLM_CLI = Path(sys.executable).with_name("litellm")


def _proxy_missing() -> str | None:
    """What keeps ``litellm --config`` from starting here (checked without importing the
    proxy, which takes half a minute), or None."""
    absent = [name for name in _PROXY_NEEDS if importlib.util.find_spec(name) is None]
    if absent:
        return "missing " + ", ".join(absent)
    return None if LITELLM_CLI.exists() else f"no {LITELLM_CLI}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def micros_up(*costs: float) -> int:
    """LiteLLM's float dollars, read as the library reads them (15 significant digits),
    summed and rounded up to 1 µc once."""
    exact = sum((usd(c) for c in costs), Decimal(0))
    return int((exact * 10**6).to_integral_value(ROUND_CEILING))


@pytest.fixture
async def proxy(tmp_path: Path, pg_url: str, redis_client: Any) -> AsyncIterator[str]:
    """A running ``litellm --config`` on a free port, billing into this test's schema."""
    missing = _proxy_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"litellm[proxy] must be installed in CI ({missing})")
        pytest.skip(f"litellm[proxy] is not installed here ({missing})")
    async with Ledger(pg_url) as ledger:
        await ledger.migrate()
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "credit_hooks.py").write_text(HOOKS)
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(WORKTREE)]),
        "CM_LEDGER_URL": pg_url,
        "CM_REDIS_URL": "redis://127.0.0.1:6379/0",
        "CM_KEY_PREFIX": redis_client.test_prefix,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    env.pop("DATABASE_URL", None)  # LiteLLM's own database: not used here
    log = (tmp_path / "proxy.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(LITELLM_CLI),
        "--config",
        str(tmp_path / "config.yaml"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(360):  # the proxy imports a lot: allow 3 minutes on a busy machine
                if proc.returncode is not None:
                    break
                try:
                    if (await http.get(f"{base}/health/liveliness", timeout=1)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
            else:
                raise AssertionError("the proxy did not start")
        if proc.returncode is not None:
            raise AssertionError((tmp_path / "proxy.log").read_text()[-3000:])
        yield base
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        log.close()


async def _settled(ledger: Ledger, account: str, call_ids: set[str]) -> dict[Any, Any]:
    """Captures by call id, once every call's success event has been billed."""
    for _ in range(500):
        found = {
            e.metadata.get("request_id"): e
            for e in await ledger.history(account, limit=1000)
            if e.kind == "capture"
        }
        if call_ids <= found.keys() and not await ledger.holds(account):
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"calls never settled: {call_ids - found.keys()}")


async def test_the_real_proxy_bills_every_call_and_refuses_the_broke(
    proxy: str, pg_url: str
) -> None:
    async with contextlib.AsyncExitStack() as clients:
        await _drive(proxy, pg_url, clients)


async def _drive(proxy: str, pg_url: str, clients: contextlib.AsyncExitStack) -> None:
    import litellm
    import openai
    from litellm.types.llms.openai import ResponsesAPIResponse

    def client(key: str) -> Any:
        sdk = openai.AsyncOpenAI(base_url=proxy, api_key=key, max_retries=0)
        clients.push_async_callback(sdk.close)
        return sdk

    m = [{"role": "user", "content": "Hello, ledger."}]
    ann = client("sk-user-ann")
    expected: dict[str, int] = {}  # litellm call id -> µc per litellm.completion_cost

    raw: Any = await ann.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=m)
    chat = raw.parse()
    assert raw.headers.get("credit-balance") is not None
    expected[raw.headers["x-litellm-call-id"]] = micros_up(
        litellm.completion_cost(
            completion_response=litellm.ModelResponse(**chat.model_dump()),
            model="openai/gpt-4o-mini",
        )
    )

    raw = await ann.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=m, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in raw.parse()]
    usage = chunks[-1].usage
    p, c = litellm.cost_per_token(
        model="openai/gpt-4o-mini",
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )
    expected[raw.headers["x-litellm-call-id"]] = micros_up(p, c)

    raw = await ann.chat.completions.with_raw_response.create(model="my-assistant", messages=m)
    alias = raw.parse()
    expected[raw.headers["x-litellm-call-id"]] = micros_up(
        litellm.completion_cost(
            completion_response=litellm.ModelResponse(**alias.model_dump()),
            model="openai/gpt-4o-mini",
            custom_cost_per_token=ALIAS_PRICES,
        )
    )

    raw = await ann.responses.with_raw_response.create(model="gpt-4.1", input="Hello")
    resp = ResponsesAPIResponse.model_construct(**raw.parse().model_dump())
    expected[raw.headers["x-litellm-call-id"]] = micros_up(
        litellm.completion_cost(
            completion_response=resp, model="openai/gpt-4.1-2025-04-14", call_type="aresponses"
        )
    )

    raw = await ann.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="Hello"
    )
    emb = raw.parse()
    p, _ = litellm.cost_per_token(
        model="openai/text-embedding-3-small",
        prompt_tokens=emb.usage.prompt_tokens,
        call_type="embedding",
    )
    expected[raw.headers["x-litellm-call-id"]] = micros_up(p)

    async with httpx.AsyncClient(base_url=proxy, timeout=30) as http:
        r = await http.post(
            "/v1/messages",
            headers={"Authorization": "Bearer sk-user-ann"},
            json={"model": "claude", "max_tokens": 100, "messages": m},
        )
    assert r.status_code == 200, r.text
    u = r.json()["usage"]
    p, c = litellm.cost_per_token(
        model="anthropic/claude-haiku-4-5",
        prompt_tokens=u["input_tokens"],
        completion_tokens=u["output_tokens"],
    )
    expected[r.headers["x-litellm-call-id"]] = micros_up(p, c)

    with pytest.raises(openai.InternalServerError):  # a failing deployment bills nothing
        await ann.chat.completions.create(model="broken", messages=m)

    master = client("sk-master")
    with pytest.raises(openai.AuthenticationError) as no_user:
        await master.chat.completions.create(model="gpt-4o-mini", messages=m)
    assert no_user.value.code == "no_credit_account"
    with pytest.raises(openai.BadRequestError) as unbillable:
        await ann.files.list()
    assert unbillable.value.code == "call_type_not_billable"

    # a user at 0 credits: refused on every call type, before any provider is called
    async with Ledger(pg_url) as ledger:
        await Provisioner(ledger).ensure_account("broke", layer="litellm")
        await ledger.debit("broke", (await ledger.balance("broke")).available)
    broke = client("sk-user-broke")
    attempts: dict[str, Any] = {
        "chat": broke.chat.completions.create(model="gpt-4o-mini", messages=m),
        "stream": broke.chat.completions.create(model="gpt-4o-mini", messages=m, stream=True),
        "responses": broke.responses.create(model="gpt-4o-mini", input="Hello"),
        "embeddings": broke.embeddings.create(model="text-embedding-3-small", input="Hello"),
        "alias": broke.chat.completions.create(model="my-assistant", messages=m),
        "image": broke.images.generate(model="gpt-image-1", prompt="a ledger"),
        "speech": broke.audio.speech.create(model="tts-1", input="Hello", voice="alloy"),
        "transcription": broke.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", b"RIFF0000WAVEfmt ")
        ),
        "moderation": broke.moderations.create(model="omni-moderation-latest", input="Hello"),
        "rerank": broke.post(
            "/v1/rerank",
            body={"model": "rerank", "query": "q", "documents": ["a"]},
            cast_to=httpx.Response,
        ),
    }
    refused: dict[str, Any] = {}
    for name, attempt in attempts.items():
        with pytest.raises(openai.APIStatusError) as info:
            await attempt
        refused[name] = (info.value.status_code, info.value.type, info.value.code)
    # The image, audio-transcription and rerank routes rebuild the error, keeping its type
    # but putting the status in ``code``.
    rebuilt = {"image", "transcription", "rerank"}
    assert refused == {
        name: (402, "insufficient_credits", "402" if name in rebuilt else "insufficient_credits")
        for name in attempts
    }, refused
    async with httpx.AsyncClient(base_url=proxy, timeout=30) as http:
        r = await http.post(
            "/v1/messages",
            headers={"Authorization": "Bearer sk-user-broke"},
            json={"model": "claude", "max_tokens": 100, "messages": m},
        )
    assert r.status_code == 402, r.text

    async with Ledger(pg_url) as ledger:
        captured = await _settled(ledger, "ann", set(expected))
        billed = {call_id: captured[call_id].amount_micros for call_id in expected}
        print(f"billed µc {sorted(billed.values())} vs completion_cost {sorted(expected.values())}")
        assert billed == expected
        assert all(m > 0 for m in billed.values())
        releases = [e for e in await ledger.history("ann", limit=1000) if e.kind == "release"]
        assert len(releases) == 1  # the failing deployment's hold
        assert [e.kind for e in await ledger.history("broke")] == ["debit", "grant"]
        assert await ledger.get_account("default_user_id") is None
        assert (await ledger.verify()).ok
