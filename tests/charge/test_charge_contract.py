"""The charge contract through the middleware, on SQLite and on PostgreSQL: a served call is
paid exactly once, an Idempotency-Key buys one call, and a 503 means nothing was charged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from _middleware_helpers import Recorder, balance, bearer, client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from credit_middleware import Identity, Ledger, Provisioner, TrialPolicy
from credit_middleware.config import Headers, Idempotency
from credit_middleware.errors import BackendUnavailable
from credit_middleware.http.middleware import FINAL_COST_STATE, CreditMiddleware
from credit_middleware.pricing import Pricing
from credit_middleware.pricing import Route as Priced

pytestmark = pytest.mark.anyio
SECRET = "test-secret-0123456789abcdef-0123456789"


@pytest.fixture
def ledger_clock() -> Callable[[], float]:
    return time.time  # tokens and rate-limit windows read the wall clock


class Outcomes(Recorder):
    def unknown_outcome(self, operation: str, resolution: str) -> None:
        self.events.append(("unknown", (operation, resolution)))


class Work:
    """The app's handlers, counting how often each really ran."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.fail_first = True
        self.final_costs = ["0.5", "0.9"]

    def ran(self, name: str) -> int:
        self.runs[name] = self.runs.get(name, 0) + 1
        return self.runs[name]

    async def work(self, request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"run": self.ran("work"), "echo": body.decode()})

    async def flaky(self, request: Request) -> Response:
        n = self.ran("flaky")
        if self.fail_first and n == 1:
            return PlainTextResponse("upstream broke", status_code=500)
        return JSONResponse({"run": n})

    async def hold(self, request: Request) -> JSONResponse:
        n = self.ran("hold")
        setattr(request.state, FINAL_COST_STATE, self.final_costs[min(n, 2) - 1])
        return JSONResponse({"run": n})

    async def chat(self, request: Request) -> JSONResponse:
        return JSONResponse({"run": self.ran("chat"), "charge": request.state.credit_charge_id})

    async def big(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("x" * 5000 + str(self.ran("big")))

    async def gone(self, request: Request) -> Response:
        self.ran("gone")
        self.after_gone()  # e.g. the ledger goes away while the app answers
        return PlainTextResponse("no such thing", status_code=404)

    def after_gone(self) -> None:
        pass


def build(ledger: Ledger, work: Work, **options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/work", work.work, methods=["POST"]),
            Route("/v1/flaky", work.flaky, methods=["POST"]),
            Route("/v1/hold", work.hold, methods=["POST"]),
            Route("/v1/chat", work.chat, methods=["POST"]),
            Route("/v1/big", work.big, methods=["POST"]),
            Route("/v1/gone", work.gone, methods=["POST"]),
        ]
    )
    pricing = Pricing(
        default_cost="0.5",
        routes=[Priced("/v1/hold", cost="1", mode="hold"), Priced("/v1/chat", mode="handler")],
    )
    options.setdefault("provisioner", Provisioner(ledger, options.pop("policy", None)))
    options.setdefault("tiers", {"trial": "10000/minute"})
    options.setdefault("idempotency", Idempotency(max_stored_body=4096))
    app.add_middleware(CreditMiddleware, jwt_secret=SECRET, pricing=pricing, **options)
    return app


def keyed(key: str, user: str = "u1") -> dict[str, str]:
    return {**bearer(user), "Idempotency-Key": key}


async def debits(ledger: Ledger, aid: str) -> list[Decimal]:
    return [e.amount for e in await ledger.history(aid, limit=1000) if e.kind == "debit"]


# --------------------------------------------------------------------------- idempotency


async def test_one_key_buys_one_call_however_the_body_changes(ledger: Ledger) -> None:
    work = Work()
    async with client(build(ledger, work)) as c:
        first = await c.post("/v1/work", content=b"body-0", headers=keyed("k"))
        others = [
            await c.post("/v1/work", content=f"body-{i}".encode(), headers=keyed("k"))
            for i in range(1, 20)
        ]
    assert first.status_code == 200 and first.json()["run"] == 1
    assert {r.status_code for r in others} == {422}
    assert all(r.json()["type"].endswith(":idempotency-mismatch") for r in others)
    assert work.runs == {"work": 1}
    assert await debits(ledger, "u1") == [Decimal("0.5")]


async def test_an_exact_retry_gets_the_stored_response_without_the_handler(ledger: Ledger) -> None:
    work = Work()
    async with client(build(ledger, work)) as c:
        first = await c.post("/v1/work?x=1", content=b"hello", headers=keyed("k"))
        again = await c.post("/v1/work?x=1", content=b"hello", headers=keyed("k"))
        other_query = await c.post("/v1/work?x=2", content=b"hello", headers=keyed("k"))
        other_user = await c.post("/v1/work?x=1", content=b"hello", headers=keyed("k", "u2"))
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() == {"run": 1, "echo": "hello"}
    assert again.headers["idempotent-replayed"] == "true"
    assert "credit-cost" not in again.headers and first.headers["credit-cost"] == "0.5"
    assert again.headers["credit-charge-id"] == first.headers["credit-charge-id"]
    assert other_query.status_code == 422
    assert other_user.status_code == 200 and other_user.json()["run"] == 2  # keys are per account
    assert work.runs == {"work": 2}
    assert await debits(ledger, "u1") == [Decimal("0.5")]


async def test_50_concurrent_sends_of_one_key_run_once_and_pay_once(ledger: Ledger) -> None:
    work = Work()
    async with client(build(ledger, work)) as c:
        rs = await asyncio.gather(
            *(c.post("/v1/work", content=b"same", headers=keyed("herd")) for _ in range(50))
        )
    codes = sorted(r.status_code for r in rs)
    assert set(codes) <= {200, 409}, codes
    served = [r for r in rs if r.status_code == 200]
    assert sum("idempotent-replayed" not in r.headers for r in served) == 1
    assert all(r.json() == {"run": 1, "echo": "same"} for r in served)
    assert all(r.headers["retry-after"] for r in rs if r.status_code == 409)
    assert work.runs == {"work": 1}
    assert await debits(ledger, "u1") == [Decimal("0.5")]


async def test_replays_at_zero_balance_get_the_stored_response_not_fresh_work(
    ledger: Ledger,
) -> None:
    work = Work()
    app = build(ledger, work, policy=TrialPolicy(amount=Decimal("1")))
    async with client(app) as c:
        first = await c.post("/v1/work", content=b"a", headers=keyed("old"))
        await c.post("/v1/work", content=b"b", headers=keyed("spend"))
        broke = await c.post("/v1/work", content=b"c", headers=keyed("new"))
        replays = [await c.post("/v1/work", content=b"a", headers=keyed("old")) for _ in range(30)]
    assert first.status_code == 200 and broke.status_code == 402
    assert {r.status_code for r in replays} == {200}
    assert all(r.json() == first.json() for r in replays)
    assert work.runs == {"work": 2}
    assert await balance(ledger, "u1") == 0


async def test_a_failed_first_attempt_frees_its_key_and_the_retry_is_billed(
    ledger: Ledger,
) -> None:
    work = Work()
    async with client(build(ledger, work)) as c:
        first = await c.post("/v1/flaky", content=b"q", headers=keyed("retry-me"))
        retry = await c.post("/v1/flaky", content=b"q", headers=keyed("retry-me"))
        replay = await c.post("/v1/flaky", content=b"q", headers=keyed("retry-me"))
    assert first.status_code == 500 and first.headers["credit-cost"] == "0"
    assert retry.status_code == 200 and "idempotent-replayed" not in retry.headers
    assert retry.headers["credit-cost"] == "0.5"
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert work.runs == {"flaky": 2}
    assert await balance(ledger, "u1") == Decimal("4.5")


async def test_a_hold_route_replay_runs_nothing_and_claims_no_cost(ledger: Ledger) -> None:
    work = Work()
    async with client(build(ledger, work)) as c:
        first = await c.post("/v1/hold", content=b"x", headers=keyed("h"))
        again = await c.post("/v1/hold", content=b"x", headers=keyed("h"))
    assert first.status_code == 200 and first.headers["credit-cost"] == "0.5"
    assert first.headers["credit-balance"] == "4.5"
    assert again.status_code == 200 and "credit-cost" not in again.headers
    assert work.runs == {"hold": 1}
    assert await balance(ledger, "u1") == Decimal("4.5")
    assert await ledger.holds("u1") == []


async def test_handler_billed_routes_follow_the_key_too(ledger: Ledger) -> None:
    work = Work()
    async with client(build(ledger, work)) as c:
        first = await c.post("/v1/chat", content=b"hi", headers=keyed("c"))
        again = await c.post("/v1/chat", content=b"hi", headers=keyed("c"))
        plain = await c.post("/v1/chat", content=b"hi", headers=bearer("u1"))
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert first.json()["charge"] == first.headers["credit-charge-id"]
    assert plain.json()["charge"] != first.json()["charge"]
    assert work.runs == {"chat": 2}


async def test_a_response_too_large_to_keep_is_not_served_twice(ledger: Ledger) -> None:
    work = Work()
    async with client(build(ledger, work)) as c:
        first = await c.post("/v1/big", content=b"x", headers=keyed("big"))
        again = await c.post("/v1/big", content=b"x", headers=keyed("big"))
    assert first.status_code == 200 and len(first.content) > 4096
    assert again.status_code == 409
    assert again.json()["type"].endswith(":idempotency-response-not-stored")
    assert work.runs == {"big": 1}
    assert await debits(ledger, "u1") == [Decimal("0.5")]


async def test_an_oversized_keyed_request_is_refused_and_moves_nothing(ledger: Ledger) -> None:
    work = Work()
    app = build(ledger, work, idempotency=Idempotency(max_stored_body=4096, max_request_body=1000))
    async with client(app) as c:
        r = await c.post("/v1/work", content=b"z" * 1001, headers=keyed("fat"))
    assert r.status_code == 413 and r.json()["type"].endswith(":request-too-large")
    assert work.runs == {}
    assert await ledger.get_account("u1") is None or await debits(ledger, "u1") == []


# --------------------------------------------------------------------------- honest answers


async def lost_after_commit(real: Any, *args: Any, **kwargs: Any) -> Any:
    """The operation commits; its answer is lost with the connection."""
    await real(*args, **kwargs)
    raise BackendUnavailable("database", "connection lost", maybe_applied=True)


def patch(ledger: Ledger, name: str, wrapper: Callable[..., Any]) -> None:
    real = getattr(ledger, name)

    async def patched(*args: Any, **kwargs: Any) -> Any:
        return await wrapper(real, *args, **kwargs)

    setattr(ledger, name, patched)


async def test_a_charge_committed_but_answered_late_is_served_not_503(ledger: Ledger) -> None:
    answer = asyncio.Event()

    async def late_reply(real: Any, *args: Any, **kwargs: Any) -> Any:
        receipt = await real(*args, **kwargs)
        await answer.wait()  # committed; the reply is stuck (a stalled loop, a slow network)
        return receipt

    work, seen = Work(), Outcomes()
    app = build(ledger, work, timeout=0.5, observer=seen)
    async with client(app) as c:
        await c.post("/v1/work", content=b"warm", headers=bearer("u1"))
        patch(ledger, "debit", late_reply)
        r = await c.post("/v1/work", content=b"x", headers=bearer("u1"))
        answer.set()
    assert r.status_code == 200, r.text
    assert await debits(ledger, "u1") == [Decimal("0.5")] * 2
    assert work.runs == {"work": 2}
    assert ("charge", "stood") in seen.of("unknown")


async def test_a_charge_lost_with_its_connection_is_resolved_by_its_id(ledger: Ledger) -> None:
    work = Work()
    async with client(build(ledger, work)) as c:
        await c.post("/v1/work", content=b"warm", headers=bearer("u1"))
        patch(ledger, "debit", lost_after_commit)
        r = await c.post("/v1/work", content=b"x", headers=bearer("u1"))
    assert r.status_code == 200
    assert await debits(ledger, "u1") == [Decimal("0.5")] * 2


async def test_a_503_means_nothing_was_charged_even_when_the_debit_arrives_late(
    ledger: Ledger,
) -> None:
    go = asyncio.Event()
    late: list[Any] = []

    async def stuck_before_sending(real: Any, *args: Any, **kwargs: Any) -> Any:
        await go.wait()
        try:
            return await real(*args, **kwargs)
        except Exception as exc:
            late.append(exc)
            raise

    work = Work()
    app = build(ledger, work, timeout=0.5)
    async with client(app) as c:
        await c.post("/v1/work", content=b"warm", headers=bearer("u1"))
        patch(ledger, "debit", stuck_before_sending)
        r = await c.post("/v1/work", content=b"x", headers=bearer("u1"))
        assert r.status_code == 503 and r.headers["retry-after"]
        charge_id = r.headers["credit-charge-id"]
        go.set()
        for _ in range(200):  # the abandoned debit now reaches the ledger: it must be refused
            if late:
                break
            await asyncio.sleep(0.01)
    assert type(late[0]).__name__ == "ChargeVoided"
    assert await debits(ledger, "u1") == [Decimal("0.5")]
    assert all(e.key != charge_id for e in await ledger.history("u1"))
    assert work.runs == {"work": 1}


async def test_a_charge_that_cannot_be_resolved_is_reversed_later(ledger: Ledger) -> None:
    down = [True]

    async def resolver(real: Any, *args: Any, **kwargs: Any) -> Any:
        if down[0]:
            raise BackendUnavailable("database", "still down")
        return await real(*args, **kwargs)

    work, seen = Work(), Outcomes()
    app = build(ledger, work, observer=seen)
    async with client(app) as c:
        await c.post("/v1/work", content=b"warm", headers=bearer("u1"))
        patch(ledger, "debit", lost_after_commit)
        patch(ledger, "resolve_charge", resolver)
        r = await c.post("/v1/work", content=b"x", headers=bearer("u1"))
        assert r.status_code == 503
        mw = _middleware(app)
        assert mw.outcomes.pending == 1
        down[0] = False
        assert await mw.outcomes.drain() == 0
    assert await balance(ledger, "u1") == Decimal("4.5")  # the lost charge was refunded
    kinds = [e.kind for e in await ledger.history("u1")]
    assert kinds.count("debit") == 2 and kinds.count("refund") == 1
    assert ("charge", "reversal_pending") in seen.of("unknown")
    assert work.runs == {"work": 1}


async def test_a_client_gone_mid_charge_is_not_billed(ledger: Ledger) -> None:
    reached, go = asyncio.Event(), asyncio.Event()

    async def slow(real: Any, *args: Any, **kwargs: Any) -> Any:
        receipt = await real(*args, **kwargs)
        reached.set()
        await go.wait()
        return receipt

    work = Work()
    app = build(ledger, work)
    async with client(app) as c:
        await c.post("/v1/work", content=b"warm", headers=bearer("u1"))
        patch(ledger, "debit", slow)
        request = asyncio.ensure_future(c.post("/v1/work", content=b"x", headers=bearer("u1")))
        await reached.wait()
        request.cancel()  # the client disconnected, or a server timeout fired
        with pytest.raises(asyncio.CancelledError):
            await request
        go.set()
        assert await _middleware(app).outcomes.drain() == 0
    assert await balance(ledger, "u1") == Decimal("4.5")
    assert work.runs == {"work": 1}


def _middleware(app: Starlette) -> CreditMiddleware:
    node: Any = app.middleware_stack
    while not isinstance(node, CreditMiddleware):
        node = node.app
    return node


async def test_every_deferred_refund_of_one_account_lands(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18 item 1: while the ledger is away, two unserved calls of one account each leave
    a refund to settle later; both land (they were de-duplicated by account and kind)."""
    from credit_middleware.charge import outcomes as _outcome

    monkeypatch.setattr(_outcome, "_BACKOFF", (3600.0,) * 7)  # only drain() retries here
    work = Work()
    down = [False]
    refused = [0]
    tried_twice = asyncio.Event()  # the first refund and the first retry of it
    real = ledger._run

    async def away(fn: Any, *, write: bool = True) -> Any:
        if down[0]:
            refused[0] += 1
            if refused[0] == 2:
                tried_twice.set()
            raise BackendUnavailable("database", "away")
        return await real(fn, write=write)

    def go_away() -> None:
        down[0] = True

    work.after_gone = go_away  # type: ignore[method-assign]
    app = build(ledger, work)
    async with client(app) as c:
        await c.post("/v1/work", content=b"warm", headers=bearer("u1"))
        monkeypatch.setattr(ledger, "_run", away)
        first = await c.post("/v1/gone", content=b"x", headers=bearer("u1"))
        await tried_twice.wait()  # its refund waits in the background now
        down[0] = False
        second = await c.post("/v1/gone", content=b"x", headers=bearer("u1"))
        assert first.status_code == second.status_code == 404
        down[0] = False
        mw = _middleware(app)
        assert await mw.outcomes.drain() == 0
    assert await balance(ledger, "u1") == Decimal("4.5")  # only the served call is paid
    kinds = [e.kind for e in await ledger.history("u1")]
    assert kinds.count("debit") == 3 and kinds.count("refund") == 2


async def test_a_charge_whose_answer_was_lost_is_refunded_when_not_served(
    ledger: Ledger,
) -> None:
    """Issue 18 item 2: a charge resolved as standing after its answer was lost is this
    request's own: refunded like any other when the app then does not serve it."""

    work = Work()
    async with client(build(ledger, work)) as c:
        await c.post("/v1/work", content=b"warm", headers=bearer("u1"))
        patch(ledger, "debit", lost_after_commit)
        r = await c.post("/v1/gone", content=b"x", headers=bearer("u1"))
    assert r.status_code == 404 and r.headers["credit-cost"] == "0"
    assert await balance(ledger, "u1") == Decimal("4.5")
    kinds = [e.kind for e in await ledger.history("u1")]
    assert kinds.count("debit") == 2 and kinds.count("refund") == 1


async def test_a_resend_the_moment_the_response_ends_is_a_replay_not_a_409(
    ledger: Ledger,
) -> None:
    """The response of a keyed call is stored before its last part goes out: a client that
    re-sends as soon as it has read the response gets the replay, never "in flight"."""
    work = Work()
    app = build(ledger, work)
    async with client(app) as c:  # the lifespan, and a first call to build the stack
        await c.post("/v1/work", content=b"warm", headers=bearer("u1"))
        resent: list[Any] = []

        async def call(key: str, observe: bool) -> int:
            headers = [(k.lower().encode(), v.encode()) for k, v in keyed(key).items()]
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/work",
                "raw_path": b"/v1/work",
                "root_path": "",
                "query_string": b"",
                "headers": headers,
                "client": ("127.0.0.1", 1),
                "server": ("testserver", 80),
            }
            status = 0

            async def receive() -> Any:
                return {"type": "http.request", "body": b"same", "more_body": False}

            async def send(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                elif observe and not message.get("more_body", False):
                    resent.append(await call(key, False))  # the client has it all: again

            await app(scope, receive, send)
            return status

        assert await call("k-now", True) == 200
    assert resent == [200]
    assert work.runs == {"work": 2}  # the warm-up and the first send; the re-send replayed


# --------------------------------------------------------------------------- late trial


async def test_concurrent_requests_right_after_a_late_trial_grant_are_served(
    ledger: Ledger,
) -> None:
    strict = TrialPolicy(require_verified_email=True, amount=Decimal("20"))
    prov = Provisioner(ledger, strict)
    unverified = Identity("late", email="l@x.org", email_verified=False)
    await prov.ensure_account(unverified, layer="signup")
    app = build(ledger, Work(), provisioner=prov)
    verified = bearer("late", email="l@x.org", email_verified=True)
    async with client(app) as c:
        rs = await asyncio.gather(
            *(c.post("/v1/work", content=b"x", headers=verified) for _ in range(20))
        )
    assert [r.status_code for r in rs] == [200] * 20
    assert await balance(ledger, "late") == Decimal("20") - 20 * Decimal("0.5")


async def test_a_402_carries_the_configured_balance_header(ledger: Ledger) -> None:
    app = build(
        ledger, Work(), policy=TrialPolicy(amount=Decimal("0.2")), headers=Headers(balance="X-Left")
    )
    async with client(app) as c:
        r = await c.post("/v1/work", content=b"x", headers=bearer("u1"))
    assert r.status_code == 402 and r.headers["x-left"] == "0.2"
    assert "credit-balance" not in r.headers
