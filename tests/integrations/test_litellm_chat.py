"""``examples/chat.py`` behind the real ``CreditMiddleware`` in handler mode: the route is paid
by its LLM cost (hold + capture through ``CreditedLLM``), never by the fixed per-call price."""

from __future__ import annotations

import json
import os
import time
from decimal import Decimal
from typing import Any

import httpx
import jwt
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download

from starlette.applications import Starlette

from credit_middleware import Ledger, Provisioner, TrialPolicy
from credit_middleware.http.middleware import CreditMiddleware
from credit_middleware.pricing import Pricing, Route
from examples.chat import DEFAULT_MOCK, chat_route

pytestmark = [
    pytest.mark.anyio,
    # pydantic, building LiteLLM's response types on first use, warns about their ReadOnly items
    pytest.mark.filterwarnings(
        "ignore:Item '.*' on TypedDict class '.*' is using the `ReadOnly` qualifier:UserWarning"
    ),
]

SECRET = "test-secret-for-the-chat-example-0123456789"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi there"}]}


def app_for(ledger: Ledger, policy: TrialPolicy | None = None, **options: Any) -> Starlette:
    """The chat route behind the middleware. LiteLLM may take seconds to load on a busy
    machine: these tests are about billing, so their first request waits for it (the 503
    while it loads has a test of its own, which passes ``ready_timeout``)."""
    provisioner = Provisioner(ledger, policy)
    app = Starlette(routes=[chat_route(provisioner, **{"ready_timeout": 120, **options})])
    app.add_middleware(
        CreditMiddleware,
        provisioner=provisioner,
        jwt_secret=SECRET,
        pricing=Pricing(routes=[Route("/v1/chat/completions", mode="handler")]),
    )
    return app


def auth(sub: str) -> dict[str, str]:
    claims = {"sub": sub, "exp": int(time.time()) + 600}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def entries(ledger: Ledger, account: str, kind: str) -> list[Any]:
    return [e for e in await ledger.history(account, limit=1000) if e.kind == kind]


async def test_a_chat_call_is_billed_at_its_llm_cost(ledger: Ledger) -> None:
    async with client(app_for(ledger)) as http:
        r = await http.post("/v1/chat/completions", json=BODY, headers=auth("chatter"))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == DEFAULT_MOCK
    [capture] = await entries(ledger, "chatter", "capture")
    assert capture.layer == "litellm" and capture.amount_micros > 0
    assert Decimal(r.headers["Credit-Cost"]) == capture.amount
    assert await entries(ledger, "chatter", "debit") == []  # no fixed price on top
    assert not await ledger.holds("chatter")


async def test_a_streamed_chat_call_is_billed_and_sent_as_sse(ledger: Ledger) -> None:
    async with client(app_for(ledger)) as http:
        r = await http.post(
            "/v1/chat/completions", json={**BODY, "stream": True}, headers=auth("streamer")
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, events[:-1])
        if c.get("choices")
    )
    assert text == DEFAULT_MOCK
    [capture] = await entries(ledger, "streamer", "capture")
    assert capture.amount_micros > 0 and capture.metadata["outcome"] == "complete"
    assert f": credit-cost {capture.amount}" in r.text
    assert not await ledger.holds("streamer")


async def test_short_credits_get_a_402_problem(ledger: Ledger) -> None:
    app = app_for(ledger, TrialPolicy(amount=Decimal("0.0001")))
    async with client(app) as http:
        r = await http.post("/v1/chat/completions", json=BODY, headers=auth("poor"))
    assert r.status_code == 402
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("insufficient-credits")
    assert r.json()["available"] == "0.0001"


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": [{"role": "user"}]},
        {"model": "gpt-4-very-expensive", "messages": BODY["messages"]},
        {**BODY, "stream": "yes"},
        ["not", "an", "object"],
    ],
)
async def test_malformed_bodies_are_400_and_move_no_money(ledger: Ledger, body: Any) -> None:
    async with client(app_for(ledger)) as http:
        r = await http.post("/v1/chat/completions", json=body, headers=auth("sloppy"))
    assert r.status_code == 400
    assert await entries(ledger, "sloppy", "hold") == []


async def test_no_credentials_no_call(ledger: Ledger) -> None:
    async with client(app_for(ledger)) as http:
        r = await http.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 401


async def test_the_example_app_bills_chat_by_llm_cost(sqlite_url: str) -> None:
    from examples import app as example
    from examples.chat import warm_up

    app = example.create_app(database_url=sqlite_url, jwt_secret=SECRET)
    async with app.router.lifespan_context(app), client(app) as http:
        await warm_up(app, wait=True)  # loaded: the chat route serves instead of a 503
        r = await http.post(
            "/auth/register", json={"email": "bo@example.com", "password": "correct horse"}
        )
        assert r.status_code == 201, r.text
        user, token = r.json()["user_id"], r.json()["token"]
        r = await http.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 200, r.text
    async with Ledger(sqlite_url) as ledger:
        [capture] = await entries(ledger, user, "capture")
        assert capture.layer == "litellm" and capture.amount_micros > 0
        assert await entries(ledger, user, "debit") == []  # not the fixed 0.001 a call
        assert (await ledger.verify()).ok


def _with_charge_id(app: Any, charge_id: str) -> Any:
    """Stands in for the middleware's per-attempt charge id, as the chat handler reads it."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["credit_charge_id"] = charge_id
        await app(scope, receive, send)

    return wrapped


async def test_the_hold_is_keyed_by_the_requests_charge_id(ledger: Ledger) -> None:
    provisioner = Provisioner(ledger)
    app = Starlette(routes=[chat_route(provisioner, ready_timeout=120)])
    app.add_middleware(_with_charge_id, charge_id="charge-abc")  # inner: after the door
    app.add_middleware(
        CreditMiddleware,
        provisioner=provisioner,
        jwt_secret=SECRET,
        pricing=Pricing(routes=[Route("/v1/chat/completions", mode="handler")]),
    )
    async with client(app) as http:
        r = await http.post("/v1/chat/completions", json=BODY, headers=auth("keyed"))
    assert r.status_code == 200, r.text
    [hold] = await entries(ledger, "keyed", "hold")
    assert hold.key == "litellm:charge-abc"


async def test_warm_up_builds_litellm_off_the_event_loop(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from examples.chat import ChatEndpoint, warm_up

    threads: list[str] = []
    real = ChatEndpoint._build

    def spy(self: ChatEndpoint) -> Any:
        threads.append(threading.current_thread().name)
        return real(self)

    monkeypatch.setattr(ChatEndpoint, "_build", spy)
    app = app_for(ledger)
    await warm_up(app, wait=True)
    assert len(threads) == 1 and threads[0] != threading.main_thread().name
    async with client(app) as http:  # the first request finds LiteLLM ready
        r = await http.post("/v1/chat/completions", json=BODY, headers=auth("warm"))
    assert r.status_code == 200, r.text
    assert len(threads) == 1


async def test_while_litellm_loads_a_chat_request_gets_503_not_a_hang(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a worker restart LiteLLM takes seconds to load: a chat request arriving meanwhile
    waits at most ``ready_timeout``, then gets 503 with Retry-After (and pays nothing)."""
    import threading

    from examples.chat import ChatEndpoint, warm_up

    loaded = threading.Event()
    real = ChatEndpoint._build

    def slow(self: ChatEndpoint) -> Any:
        loaded.wait(60)  # LiteLLM still importing, until the test lets it finish
        return real(self)

    monkeypatch.setattr(ChatEndpoint, "_build", slow)
    app = app_for(ledger, ready_timeout=0.05, retry_after=7)
    async with client(app) as http:
        r = await http.post("/v1/chat/completions", json=BODY, headers=auth("early"))
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "7"
        assert r.json()["type"].endswith("llm-loading")
        loaded.set()
        await warm_up(app, wait=True, routes=app.routes)
        r = await http.post("/v1/chat/completions", json=BODY, headers=auth("early"))
    assert r.status_code == 200, r.text
    assert len(await entries(ledger, "early", "capture")) == 1  # the 503 was not billed
    assert not await entries(ledger, "early", "debit")
