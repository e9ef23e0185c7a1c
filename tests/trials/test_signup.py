"""@provision_credits: provisions after a successful signup, keeps FastAPI's signature, never
fails or stalls the registration, retries in the background, and grants once under a herd."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Annotated, Any

import httpx
import pytest
from _signup_helpers import Recorder, trial_grants
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from credit_middleware import ConfigurationError, Identity, Ledger, Provisioner, TrialPolicy
from credit_middleware.trials.provisioning import ProvisionResult
from credit_middleware.trials.signup import (
    SignupProvisioning,
    default_account_id,
    provision,
    provision_credits,
)

pytestmark = pytest.mark.anyio


class RegisterBody(BaseModel):
    username: str
    email: str


class UserOut(BaseModel):
    user_id: str
    email: str


def get_realm() -> str:
    return "acme"


def get_session() -> Iterator[dict[str, str]]:
    """A sync dependency that yields, as a database session does."""
    yield {"realm": "acme"}


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.50", 4711))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def fastapi_app(prov: Provisioner | SignupProvisioning) -> FastAPI:
    app = FastAPI()

    @app.post("/auth/register", status_code=201, response_model=UserOut)
    @provision_credits(prov)
    async def register(
        body: RegisterBody, realm: Annotated[str, Depends(get_realm)]
    ) -> dict[str, str]:
        if body.username == "taken":
            raise HTTPException(409, "username taken")
        return {"user_id": f"{realm}:{body.username}", "email": body.email}

    @app.post("/auth/register-with-request", status_code=201)
    @provision_credits(prov)
    async def register_req(body: RegisterBody, request: Request) -> UserOut:
        assert isinstance(request, Request)
        return UserOut(user_id=body.username, email=body.email)

    return app


def starlette_app(prov: Provisioner | SignupProvisioning, **options: Any) -> Starlette:
    @provision_credits(prov, **options)
    async def register(request: Request) -> JSONResponse:
        data = await request.json()
        if data.get("refuse"):
            return JSONResponse({"user_id": data["user_id"], "error": "no"}, status_code=400)
        return JSONResponse({"user_id": data["user_id"]}, status_code=201)

    return Starlette(routes=[Route("/auth/register", register, methods=["POST"])])


async def test_fastapi_handler_with_body_and_depends_is_provisioned(ledger: Ledger) -> None:
    prov = Provisioner(ledger)
    app = fastapi_app(prov)
    async with client(app) as c:
        r = await c.post("/auth/register", json={"username": "ann", "email": "ann@example.org"})
        assert r.status_code == 201, r.text
        assert r.json() == {"user_id": "acme:ann", "email": "ann@example.org"}
        # The trial is there before the user's first request.
        assert (await ledger.balance("acme:ann")).spendable == Decimal("5")
        account = await ledger.get_account("acme:ann")
        assert account is not None
        assert account.metadata["provisioned_by"] == "signup"
        assert account.metadata["email_domain"] == "example.org"

        r = await c.post("/auth/register-with-request", json={"username": "bo", "email": "b@x.io"})
        assert r.status_code == 201, r.text
        assert await trial_grants(ledger, "bo") == 1

        r = await c.post("/auth/register", json={"username": "taken", "email": "t@x.io"})
        assert r.status_code == 409
        assert await ledger.get_account("acme:taken") is None

        r = await c.post("/auth/register", json={"username": "no-email"})
        assert r.status_code == 422
    # FastAPI still documents exactly the handler's own parameters.
    schema = app.openapi()
    op = schema["paths"]["/auth/register"]["post"]
    assert "parameters" not in op or all(
        p["name"] != "credit_signup_request__" for p in op["parameters"]
    )
    assert "RegisterBody" in str(op["requestBody"])


def test_signature_is_kept_for_dependency_injection() -> None:
    async def handler(body: RegisterBody, realm: str = "x", **extra: Any) -> dict[str, str]:
        return {"user_id": realm}

    wrapped = provision_credits(Provisioner(Ledger("sqlite:///:memory:")))(handler)
    params = inspect.signature(wrapped).parameters
    assert list(params)[:2] == ["body", "realm"]
    assert list(params)[-1] == "extra"  # the added Request stays before **kwargs
    assert params["credit_signup_request__"].annotation is Request
    assert wrapped.__wrapped__ is handler  # type: ignore[attr-defined]
    assert wrapped.__name__ == "handler"
    with pytest.raises(ConfigurationError):
        provision_credits(Provisioner(Ledger("sqlite:///:memory:")))(42)  # type: ignore[type-var]


async def test_plain_def_handlers_are_provisioned_and_run_off_the_event_loop(
    ledger: Ledger,
) -> None:
    """The full-stack FastAPI template's handlers are all plain ``def``: a body model, a
    ``Depends`` that yields a (blocking) session, a ``response_model``; and a sync Starlette
    endpoint. Each still runs in a worker thread, as the framework would run it."""
    prov = Provisioner(ledger)
    loop_thread = threading.get_ident()
    threads: list[int] = []

    app = FastAPI()

    @app.post("/users/signup", response_model=UserOut)
    @provision_credits(prov)
    def register_user(
        body: RegisterBody, session: Annotated[dict[str, str], Depends(get_session)]
    ) -> UserOut:
        threads.append(threading.get_ident())
        time.sleep(0.01)  # a blocking call, as a sync database session makes
        return UserOut(user_id=f"{session['realm']}:{body.username}", email=body.email)

    def starlette_register(request: Request) -> JSONResponse:
        threads.append(threading.get_ident())
        return JSONResponse({"user_id": request.query_params["name"]}, status_code=201)

    app.add_route("/plain", provision_credits(prov)(starlette_register), methods=["POST"])
    async with client(app) as c:
        r = await c.post("/users/signup", json={"username": "syd", "email": "syd@example.org"})
        assert r.status_code == 200, r.text
        assert r.json() == {"user_id": "acme:syd", "email": "syd@example.org"}
        assert (await c.post("/plain?name=plain-1")).status_code == 201
    assert await trial_grants(ledger, "acme:syd") == 1
    assert await trial_grants(ledger, "plain-1") == 1
    assert len(threads) == 2 and loop_thread not in threads
    op = app.openapi()["paths"]["/users/signup"]["post"]
    assert "RegisterBody" in str(op["requestBody"])
    assert "session" not in str(op.get("parameters", []))


async def test_starlette_endpoint_reads_the_json_response(ledger: Ledger) -> None:
    prov = Provisioner(ledger)
    async with client(starlette_app(prov)) as c:
        r = await c.post("/auth/register", json={"user_id": "u-1"})
        assert r.status_code == 201
        assert await trial_grants(ledger, "u-1") == 1
        r = await c.post("/auth/register", json={"user_id": "u-2", "refuse": True})
        assert r.status_code == 400
        assert await ledger.get_account("u-2") is None


async def test_client_ip_comes_from_the_request(ledger: Ledger) -> None:
    seen: list[Identity] = []

    async def spy(identity: Identity) -> str | None:
        seen.append(identity)
        return None

    prov = Provisioner(ledger, TrialPolicy(checks=(spy,)))
    async with client(fastapi_app(prov)) as c:
        await c.post("/auth/register", json={"username": "ip", "email": "ip@example.org"})
    assert [(i.client_ip, i.email, i.source) for i in seen] == [
        ("203.0.113.50", "ip@example.org", "signup")
    ]


def test_default_account_id_reads_keys_attributes_and_bodies() -> None:
    assert default_account_id({"user_id": "a"}, None) == "a"
    assert default_account_id({"user_id": 42}, None) == "42"
    assert default_account_id(UserOut(user_id="b", email="e@x"), None) == "b"
    assert default_account_id(JSONResponse({"user_id": "c"}), None) == "c"
    assert default_account_id(JSONResponse({"user_id": "c"}, status_code=500), None) is None
    # `id` too (fastapi-users, ORMs), after `user_id`; UUIDs and ints become strings
    assert default_account_id({"id": "d"}, None) == "d"
    assert default_account_id({"id": "x", "user_id": "y"}, None) == "y"
    uid = uuid.uuid4()
    assert default_account_id(SimpleNamespace(id=uid), None) == str(uid)
    assert default_account_id({"id": None}, None) is None
    assert default_account_id(None, None) is None
    assert default_account_id({"user_id": True}, None) is None


async def test_custom_account_id_getter_and_identity(ledger: Ledger) -> None:
    def getter(result: Any, request: Request | None) -> Identity:
        return Identity(result["sub"], email="x@corp.example", email_verified=True)

    prov = Provisioner(ledger, TrialPolicy(require_verified_email=True))

    @provision_credits(prov, account_id=getter)
    async def create_user(name: str) -> dict[str, str]:
        return {"sub": f"sub-{name}"}

    assert await create_user("z") == {"sub": "sub-z"}
    assert await trial_grants(ledger, "sub-z") == 1


async def test_unverified_email_is_left_to_a_later_layer(ledger: Ledger) -> None:
    """With require_verified_email, signup must not give a trial-less account for good."""
    rec = Recorder()
    prov = Provisioner(ledger, TrialPolicy(require_verified_email=True), observer=rec)

    @provision_credits(prov)
    async def signup(verified: bool) -> dict[str, Any]:
        return {"user_id": f"v-{verified}", "email_verified": verified}

    await signup(False)
    assert await ledger.get_account("v-False") is None
    assert rec.count("signup", "deferred") == 1
    await signup(True)
    assert (await ledger.balance("v-True")).spendable == Decimal("5")
    # The lazy layer later sees the verified token claim and grants.
    later = Identity("v-False", email_verified=True)
    assert (await prov.ensure_account(later, layer="request")).granted


async def test_twenty_concurrent_identical_signups_grant_once(ledger: Ledger) -> None:
    prov = Provisioner(ledger)
    app = fastapi_app(prov)
    async with client(app) as c:
        responses = await asyncio.gather(
            *(
                c.post("/auth/register", json={"username": "dbl", "email": "d@x.io"})
                for _ in range(20)
            )
        )
    assert [r.status_code for r in responses] == [201] * 20
    assert await trial_grants(ledger, "acme:dbl") == 1
    assert (await ledger.balance("acme:dbl")).spendable == Decimal("5")


class _Slow(Provisioner):
    async def ensure_account(
        self, identity: Identity | str, *, layer: Any, missing: bool = False
    ) -> ProvisionResult:
        await asyncio.sleep(0.5)
        return await super().ensure_account(identity, layer=layer)


class _Flaky(Provisioner):
    def __init__(self, *args: Any, failures: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures
        self.calls = 0

    async def ensure_account(
        self, identity: Identity | str, *, layer: Any, missing: bool = False
    ) -> ProvisionResult:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("ledger down")
        return await super().ensure_account(identity, layer=layer)


async def test_slow_provisioning_is_cut_at_the_budget_and_finishes_later(ledger: Ledger) -> None:
    rec = Recorder()
    runner = SignupProvisioning(_Slow(ledger, observer=rec), budget=0.05)
    async with client(starlette_app(runner)) as c:
        r = await c.post("/auth/register", json={"user_id": "slow"})
    assert r.status_code == 201
    assert rec.count("signup", "timeout") == 1  # the budget, not the provisioning, answered
    assert runner.pending == 1
    await runner.drain(timeout=10)
    assert runner.pending == 0
    assert await trial_grants(ledger, "slow") == 1


async def test_failed_provisioning_retries_in_the_background(ledger: Ledger) -> None:
    rec = Recorder()
    flaky = _Flaky(ledger, failures=2, observer=rec)
    runner = SignupProvisioning(flaky, backoff=0.01, attempts=4)
    async with client(starlette_app(runner)) as c:
        r = await c.post("/auth/register", json={"user_id": "flaky"})
    assert r.status_code == 201
    await runner.drain(timeout=10)
    assert flaky.calls == 3
    assert rec.count("signup", "retry") == 2
    assert await trial_grants(ledger, "flaky") == 1


async def test_retries_are_bounded(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    flaky = _Flaky(ledger, failures=100, observer=rec)
    assert await provision(flaky, "never", backoff=0.001, attempts=3) is None
    runner = SignupProvisioning(flaky, backoff=0.001, attempts=3)
    assert await provision(runner, "never") is None
    await runner.drain(timeout=10)
    assert runner.pending == 0
    assert rec.count("signup", "abandoned") >= 1
    assert await ledger.get_account("never") is None


async def test_plain_provision_call(ledger: Ledger) -> None:
    prov = Provisioner(ledger)
    result = await provision(prov, Identity("plain", email="p@example.org"))
    assert result is not None
    assert result.granted
    assert result.layer == "signup"
    again = await provision(prov, "plain")
    assert again is not None
    assert not again.created
    with pytest.raises(ConfigurationError):
        await provision(SignupProvisioning(prov), "plain", budget=1.0)
    with pytest.raises(ConfigurationError):
        SignupProvisioning(prov, budget=0)
    with pytest.raises(ConfigurationError):
        SignupProvisioning(prov, attempts=0)


async def test_registration_succeeds_with_the_ledger_unreachable(ledger: Ledger) -> None:
    """Nothing listens on port 1: signup answers 201 within the budget; a later layer (the
    lazy one, on the user's first request) provisions the user on a working ledger."""
    dead = Ledger("postgresql://postgres@127.0.0.1:1/test", timeout=1.0)
    rec = Recorder()
    runner = SignupProvisioning(Provisioner(dead, observer=rec), budget=0.2, backoff=30)
    try:
        async with client(fastapi_app(runner)) as c:
            started = time.monotonic()
            r = await c.post("/auth/register", json={"username": "down", "email": "d@x.io"})
            elapsed = time.monotonic() - started
        assert r.status_code == 201
        assert elapsed < 2.0  # generous: the budget is 0.2 s
        assert runner.pending == 1  # a retry is scheduled, with a reference kept
        assert rec.count("signup", "retry") + rec.count("signup", "timeout") >= 1
    finally:
        await runner.aclose()
        await dead.close()
    assert runner.pending == 0
    lazy = await Provisioner(ledger).ensure_account("acme:down", layer="request")
    assert lazy.created
    assert lazy.granted


async def test_background_retry_succeeds_once_the_ledger_is_back(ledger: Ledger) -> None:
    class _Outage(Provisioner):
        up = False

        async def ensure_account(
            self, identity: Identity | str, *, layer: Any, missing: bool = False
        ) -> ProvisionResult:
            if not self.up:
                raise OSError("connection refused")
            return await super().ensure_account(identity, layer=layer)

    prov = _Outage(ledger)
    runner = SignupProvisioning(prov, backoff=0.05, attempts=5)
    assert await runner.provision("comeback") is None
    prov.up = True
    await runner.drain(timeout=10)
    assert await trial_grants(ledger, "comeback") == 1


async def test_a_bad_account_id_never_breaks_the_signup(ledger: Ledger) -> None:
    rec = Recorder()

    @provision_credits(Provisioner(ledger, observer=rec))
    async def signup() -> dict[str, str]:
        return {"user_id": "bad\x00id"}

    assert await signup() == {"user_id": "bad\x00id"}
    assert rec.count("signup", "skipped") == 1


class _Users:
    """A class-based handler, as in examples/app.py: the provisioner is an attribute."""

    def __init__(self, provisioner: Provisioner) -> None:
        self.provisioner = provisioner

    @provision_credits(lambda self: self.provisioner)
    async def register(self, request: Request) -> JSONResponse:
        data = await request.json()
        return JSONResponse({"user_id": data["user_id"]}, status_code=201)


async def test_provisioner_found_at_call_time(ledger: Ledger) -> None:
    users = _Users(Provisioner(ledger))
    app = Starlette(routes=[Route("/auth/register", users.register, methods=["POST"])])
    async with client(app) as c:
        r = await c.post("/auth/register", json={"user_id": "m-1", "email": "m@example.org"})
    assert r.status_code == 201
    assert await trial_grants(ledger, "m-1") == 1
    account = await ledger.get_account("m-1")
    assert account is not None
    assert account.metadata["email_domain"] == "example.org"  # read from the request body

    @provision_credits(lambda request: request.app.state.provisioner)
    async def register(request: Request) -> JSONResponse:
        return JSONResponse({"user_id": "s-1"}, status_code=201)

    app = Starlette(routes=[Route("/r", register, methods=["POST"])])
    app.state.provisioner = Provisioner(ledger)
    async with client(app) as c:
        assert (await c.post("/r")).status_code == 201
    assert await trial_grants(ledger, "s-1") == 1


async def test_a_failing_provisioner_lookup_never_breaks_the_signup() -> None:
    @provision_credits(lambda first: first.missing)
    async def register(request: Request) -> JSONResponse:
        return JSONResponse({"user_id": "nobody"}, status_code=201)

    app = Starlette(routes=[Route("/r", register, methods=["POST"])])
    async with client(app) as c:
        assert (await c.post("/r")).status_code == 201


async def test_refusals_are_not_retried(ledger: Ledger) -> None:
    class _Refusing(Provisioner):
        calls = 0

        async def ensure_account(
            self, identity: Identity | str, *, layer: Any, missing: bool = False
        ) -> ProvisionResult:
            self.calls += 1
            raise ValueError("metadata must be JSON-serialisable")

    rec = Recorder()
    prov = _Refusing(ledger, observer=rec)
    runner = SignupProvisioning(prov, backoff=0.001, attempts=5)
    assert await runner.provision("refused") is None
    await runner.drain(timeout=10)
    assert prov.calls == 1
    assert rec.count("signup", "abandoned") == 1


async def test_runners_of_a_call_time_target_can_be_drained(ledger: Ledger) -> None:
    dead = Ledger("postgresql://postgres@127.0.0.1:1/test", timeout=1.0)
    users = _Users(Provisioner(dead))
    app = Starlette(routes=[Route("/auth/register", users.register, methods=["POST"])])
    try:
        async with client(app) as c:
            r = await c.post("/auth/register", json={"user_id": "later"})
        assert r.status_code == 201
        runners = users.register.credit_runners()  # type: ignore[attr-defined]
        (runner,) = [r for r in runners if r.provisioner is users.provisioner]
        assert runner.pending == 1
        await runner.aclose()
        assert runner.pending == 0
    finally:
        await dead.close()


async def test_call_time_runners_are_bounded(ledger: Ledger) -> None:
    provs = [Provisioner(ledger) for _ in range(20)]

    @provision_credits(lambda n: provs[n])
    async def signup(n: int) -> dict[str, str]:
        return {"user_id": f"bounded-{n}"}

    for n in range(20):
        await signup(n)
    assert len(signup.credit_runners()) <= 16  # type: ignore[attr-defined]
    for n in range(20):
        assert await trial_grants(ledger, f"bounded-{n}") == 1
