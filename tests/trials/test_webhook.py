"""The IdP webhook receiver: signed deliveries provision once; every refusal writes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import httpx
import pytest
from _signup_helpers import Recorder, trial_grants
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from credit_middleware import ConfigurationError, Identity, Ledger, Provisioner, TrialPolicy
from credit_middleware.trials.abuse import IP_TRIAL_LIMIT, TrialIpCap
from credit_middleware.trials.webhook import WebhookReceiver, parse_event, sign

pytestmark = pytest.mark.anyio

SECRET = "s3cret-shared-with-the-idp-0123456789"
NOW = 1_800_000_000


def keycloak(user_id: str = "kc-1", **extra: Any) -> dict[str, Any]:
    return {
        "type": "REGISTER",
        "realmId": "acme",
        "clientId": "web",
        "userId": user_id,
        "ipAddress": "198.51.100.20",
        "details": {"email": f"{user_id}@example.org", "register_method": "form"},
        **extra,
    }


def signed(body: bytes, *, ts: int = NOW, secret: str = SECRET) -> dict[str, str]:
    return {
        "x-credit-timestamp": str(ts),
        "x-credit-signature": sign(secret, body, ts),
        "content-type": "application/json",
    }


class Hook:
    """A receiver mounted in an app, with an httpx client and a hand-set clock."""

    def __init__(self, provisioner: Provisioner, **options: Any) -> None:
        self.now = float(NOW)
        self.receiver = WebhookReceiver(
            provisioner, secret=options.pop("secret", SECRET), clock=lambda: self.now, **options
        )
        app = Starlette(routes=[Route("/hooks/idp", endpoint=self.receiver)])
        transport = httpx.ASGITransport(app=app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://test")

    async def deliver(
        self, event: Mapping[str, Any] | bytes, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        return await self.client.post(
            "/hooks/idp", content=body, headers=headers if headers is not None else signed(body)
        )

    async def aclose(self) -> None:
        await self.client.aclose()


@pytest.fixture
async def hook(ledger: Ledger) -> Any:
    h = Hook(Provisioner(ledger))
    yield h
    await h.aclose()


async def test_valid_keycloak_register_provisions(hook: Hook, ledger: Ledger) -> None:
    r = await hook.deliver(keycloak("kc-1"))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "created", "account_id": "kc-1", "granted": True}
    assert (await ledger.balance("kc-1")).spendable == Decimal("5")
    account = await ledger.get_account("kc-1")
    assert account is not None
    assert account.metadata["provisioned_by"] == "webhook"
    assert account.metadata["email_domain"] == "example.org"


async def test_generic_user_created_provisions(hook: Hook, ledger: Ledger) -> None:
    r = await hook.deliver({"event": "user.created", "user_id": "g-1", "email": "g@x.io"})
    assert r.status_code == 200
    assert await trial_grants(ledger, "g-1") == 1


async def test_replayed_and_duplicate_deliveries_move_money_once(
    hook: Hook, ledger: Ledger
) -> None:
    body = json.dumps(keycloak("dup")).encode()
    headers = signed(body)
    first = await hook.deliver(body, headers)
    replay = await hook.deliver(body, headers)  # byte-identical, within the tolerance
    hook.now += 60
    redelivery = await hook.deliver(body, signed(body, ts=NOW + 60))  # the IdP's own retry
    assert [first.status_code, replay.status_code, redelivery.status_code] == [200, 200, 200]
    assert first.json()["status"] == "created"
    assert replay.json()["status"] == "existing"
    assert redelivery.json()["status"] == "existing"
    assert await trial_grants(ledger, "dup") == 1
    assert (await ledger.balance("dup")).spendable == Decimal("5")


async def test_stale_replay_is_refused(hook: Hook, ledger: Ledger) -> None:
    body = json.dumps(keycloak("stale")).encode()
    headers = signed(body)
    hook.now += 301
    r = await hook.deliver(body, headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith(":stale-signature")
    hook.now = NOW - 400  # far in the future, as seen from here
    assert (await hook.deliver(body, headers)).status_code == 401
    assert await ledger.get_account("stale") is None


@pytest.mark.parametrize(
    "tamper",
    [
        "body",
        "timestamp",
        "secret",
        "missing-signature",
        "missing-timestamp",
        "garbage-ts",
        "superscript-ts",
        "long-ts",
    ],
)
async def test_tampered_or_unsigned_deliveries_are_refused(
    hook: Hook, ledger: Ledger, tamper: str
) -> None:
    body = json.dumps(keycloak("victim")).encode()
    headers = signed(body)
    if tamper == "body":
        body = body.replace(b"victim", b"attacker")
    elif tamper == "timestamp":
        headers["x-credit-timestamp"] = str(NOW + 1)
    elif tamper == "secret":
        headers = signed(body, secret="another-secret-of-enough-length")
    elif tamper == "missing-signature":
        del headers["x-credit-signature"]
    elif tamper == "missing-timestamp":
        del headers["x-credit-timestamp"]
    elif tamper == "superscript-ts":  # a digit to str.isdigit, not to int()
        headers = {"x-credit-timestamp": b"\xb2", "x-credit-signature": "sha256=00"}  # type: ignore[dict-item]
    elif tamper == "long-ts":
        headers["x-credit-timestamp"] = "9" * 5000
    else:
        headers["x-credit-timestamp"] = "-1e9"
    r = await hook.deliver(body, headers)
    assert r.status_code == 401
    assert r.json()["type"].endswith(":invalid-signature")
    assert await ledger.get_account("victim") is None
    assert await ledger.get_account("attacker") is None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "Expecting"),
        (b"[1, 2]", "object"),
        (b'"REGISTER"', "object"),
        (json.dumps({"type": "REGISTER", "realmId": "acme"}).encode(), "userId"),
        (json.dumps({"type": "REGISTER", "userId": 7}).encode(), "userId"),
        (json.dumps({"type": "REGISTER", "userId": "a\x00b"}).encode(), "user id"),
        (json.dumps({"type": "REGISTER", "userId": "x", "details": []}).encode(), "details"),
        (json.dumps({"event": "user.created"}).encode(), "user_id"),
        (
            json.dumps({"event": "user.created", "user_id": "u", "email_verified": "yes"}).encode(),
            "email_verified",
        ),
        (json.dumps({"hello": "world"}).encode(), "event"),
        (b"\xff\xfe", ""),
        (
            b'{"type": "REGISTER", "userId": "x", "d": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
            "deep",
        ),
        (b"[" * 32_000 + b"]" * 32_000, "deep"),
        (b'{"type": "REGISTER", "userId": ' + b"9" * 5000 + b"}", ""),
    ],
)
async def test_malformed_bodies_are_400(hook: Hook, ledger: Ledger, body: bytes, why: str) -> None:
    r = await hook.deliver(body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert why in r.json()["detail"]
    assert (await ledger.verify()).ok


async def test_other_events_are_ignored(hook: Hook, ledger: Ledger) -> None:
    for event in (keycloak("login", type="LOGIN"), {"event": "user.deleted", "user_id": "d"}):
        r = await hook.deliver(event)
        assert r.status_code == 202
        assert r.json()["status"] == "ignored"
    assert await ledger.get_account("login") is None
    assert await ledger.get_account("d") is None


async def test_oversized_bodies_are_413(hook: Hook, ledger: Ledger) -> None:
    event = keycloak("big", padding="x" * 70_000)
    r = await hook.deliver(event)
    assert r.status_code == 413
    assert await ledger.get_account("big") is None


async def test_oversized_stream_without_length_is_cut(ledger: Ledger) -> None:
    """A chunked body with no Content-Length is read only up to the cap."""
    receiver = WebhookReceiver(Provisioner(ledger), secret=SECRET, max_body=1000)
    chunks = [b"x" * 600] * 1000
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": chunks[received - 1], "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    await receiver(scope, receive, send)
    assert sent[0]["status"] == 413
    assert received == 2  # stopped reading as soon as the cap was passed


async def test_only_post_is_accepted(hook: Hook) -> None:
    r = await hook.client.get("/hooks/idp")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"


async def test_ledger_outage_answers_503_so_the_idp_retries(ledger: Ledger) -> None:
    dead = Ledger("postgresql://postgres@127.0.0.1:1/test", timeout=1.0)
    h = Hook(Provisioner(dead))
    try:
        r = await h.deliver(keycloak("later"))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "30"
    finally:
        await h.aclose()
        await dead.close()


async def test_realm_filter_and_secret_rotation(ledger: Ledger) -> None:
    h = Hook(Provisioner(ledger), realms=["acme"], secret=["old-secret-0123456789", SECRET])
    try:
        r = await h.deliver(keycloak("other-realm", realmId="evil"))
        assert r.status_code == 202
        assert await ledger.get_account("other-realm") is None
        body = json.dumps(keycloak("rotated")).encode()
        r = await h.deliver(body, signed(body, secret="old-secret-0123456789"))
        assert r.status_code == 200
        assert await trial_grants(ledger, "rotated") == 1
    finally:
        await h.aclose()


@pytest.mark.parametrize("realm", [["acme"], {"id": "acme"}, 7, ["acme", ["nested"]]])
async def test_a_realm_that_is_not_a_string_is_malformed(ledger: Ledger, realm: Any) -> None:
    h = Hook(Provisioner(ledger), realms=["acme"])
    try:
        r = await h.deliver(keycloak("listy", realmId=realm))
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "realmId" in r.json()["detail"]
        assert await ledger.get_account("listy") is None
    finally:
        await h.aclose()


@pytest.mark.parametrize("length", ["\u00b2", "1" * 5000, "-1", "1e3", " 12"])
async def test_an_unreadable_content_length_is_400(ledger: Ledger, length: str) -> None:
    receiver = WebhookReceiver(Provisioner(ledger), secret=SECRET)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    headers = [(b"content-length", length.encode("latin-1"))]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    await receiver(scope, receive, send)
    assert sent[0]["status"] == 400


def test_configuration_is_checked() -> None:
    prov = Provisioner(Ledger("sqlite:///:memory:"))
    with pytest.raises(ConfigurationError):
        WebhookReceiver(prov, secret="short")
    with pytest.raises(ConfigurationError):
        WebhookReceiver(prov, secret=[])
    with pytest.raises(ConfigurationError):
        WebhookReceiver(prov, secret=SECRET, tolerance=0)


def test_parse_event_reads_both_shapes() -> None:
    ident = parse_event(keycloak("p"))
    assert ident == Identity(
        "p", email="p@example.org", client_ip="198.51.100.20", source="webhook"
    )
    generic = parse_event(
        {"event": "user.created", "user_id": "q", "email_verified": True, "ip": "192.0.2.1"}
    )
    assert generic is not None
    assert generic.email_verified is True
    assert generic.client_ip == "192.0.2.1"
    assert parse_event({"type": "LOGIN", "userId": "p"}) is None


async def test_unverified_users_are_deferred_when_the_policy_requires_it(ledger: Ledger) -> None:
    rec = Recorder()
    h = Hook(Provisioner(ledger, TrialPolicy(require_verified_email=True), observer=rec))
    try:
        r = await h.deliver(keycloak("unverified"))
        assert r.status_code == 202
        assert r.json()["status"] == "deferred"
        assert await ledger.get_account("unverified") is None
        r = await h.deliver({"event": "user.created", "user_id": "ok", "email_verified": True})
        assert r.json()["status"] == "created"
        assert rec.count("webhook", "deferred") == 1
    finally:
        await h.aclose()


async def test_webhook_respects_the_ip_cap(ledger: Ledger) -> None:
    """The cap counts the user's address from the event (ipAddress), not the IdP's."""
    h = Hook(Provisioner(ledger, TrialPolicy(checks=(TrialIpCap("1/day"),))))
    try:
        assert (await h.deliver(keycloak("first"))).json()["granted"] is True
        r = await h.deliver(keycloak("second"))
        assert r.status_code == 200
        assert r.json() == {
            "status": "denied",
            "account_id": "second",
            "granted": False,
            "trial_denied": IP_TRIAL_LIMIT,
        }
        assert (await ledger.balance("second")).spendable == 0
    finally:
        await h.aclose()


async def test_mountable_with_the_real_clock(ledger: Ledger) -> None:
    receiver = WebhookReceiver(Provisioner(ledger), secret=SECRET)
    app = Starlette(routes=[Mount("/hooks/idp", app=receiver)])
    body = json.dumps(keycloak("mounted")).encode()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.post("/hooks/idp/", content=body, headers=signed(body, ts=int(time.time())))
    assert r.status_code == 200
    assert await trial_grants(ledger, "mounted") == 1


async def test_a_verified_email_event_grants_the_denied_trial_once(ledger: Ledger) -> None:
    """Keycloak's VERIFY_EMAIL (or a generic user.email_verified) reaches a user whose first
    request, with an unverified token, opened an account without a trial."""
    policy = TrialPolicy(require_verified_email=True)
    lazy = await Provisioner(ledger, policy).ensure_account(
        Identity("kc-v", email_verified=False), layer="request"
    )
    assert lazy.reason == "email_not_verified"
    h = Hook(Provisioner(ledger, policy))
    try:
        r = await h.deliver(keycloak("kc-v", type="VERIFY_EMAIL"))
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "granted", "account_id": "kc-v", "granted": True}
        for event in (  # duplicate deliveries, in both shapes: nothing more
            keycloak("kc-v", type="VERIFY_EMAIL"),
            {"event": "user.email_verified", "user_id": "kc-v"},
        ):
            r = await h.deliver(event)
            assert r.json()["status"] == "existing", r.text
        r = await h.deliver(
            {"event": "user.email_verified", "user_id": "kc-v", "email_verified": False}
        )
        assert r.status_code == 400
    finally:
        await h.aclose()
    assert await trial_grants(ledger, "kc-v") == 1
    bal = await ledger.balance("kc-v")
    assert bal.available == 5 and bal.grants[0].layer == "webhook"
