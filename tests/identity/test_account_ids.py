"""Account ids are printable, everywhere one enters: an id with an invisible, direction-changing
or separator character, or a space at either end, is refused with a clear error by the ledger,
the middleware's identities (JWT ``sub``, API key, trusted header, ``request.user``), signup,
the webhook, the admin API and the CLI; it gets no account and no trial. Every id a real
identity provider issues still works."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from _middleware_helpers import bearer, build_app, client
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection

from credit_middleware import Identity, Ledger, Provisioner
from credit_middleware.admin import admin_app
from credit_middleware.errors import InvalidAccountId
from credit_middleware.money import check_account_id
from credit_middleware.ops.cli import main as cli
from credit_middleware.trials.signup import provision_credits
from credit_middleware.trials.webhook import WebhookReceiver, sign

pytestmark = pytest.mark.anyio

UNPRINTABLE = [
    "ali\u200bce",  # zero-width space: shows as "alice"
    "admin\u202euser",  # right-to-left override: shows reversed
    "a\u2028b",  # line separator
    "a\u2029b",  # paragraph separator
    "\ufeffbom",  # byte-order mark (zero-width no-break space)
    "soft\u00adhyphen",
    "no\u00a0break",  # a space that is not the space
    "lrm\u200e",
    "tag\U000e0041",  # tag characters hide text
    "private\ue000use",
    " alice",
    "alice ",
    "\u3000ideographic",
]
FINE = [
    "alice",
    "alice@example.org",
    "jörg@exämple.de",
    "3f2b1c8e-1111-4d2a-9c1b-0123456789ab",
    "auth0|5f7c8ec7c33c6c004bbafe82",
    "google-oauth2|108079876543210987654",
    "00u1abcdEFGH2ijk3l4",  # Okta
    "f:1b2c3d4e-0000-4000-8000-000000000000:alice",  # Keycloak federated
    "CN=Alice Smith,O=Acme",  # a certificate subject, with inner spaces
    "用户-42 ✓",
    "ユーザー🙂",
    "x" * 255,
]


@pytest.mark.parametrize("account_id", UNPRINTABLE)
def test_the_rule_refuses_what_does_not_show_as_itself(account_id: str) -> None:
    with pytest.raises(InvalidAccountId) as caught:
        check_account_id(account_id)
    message = str(caught.value)
    assert "printable" in message or "space" in message
    assert account_id.strip() not in message  # the id is named by its character, not echoed


@pytest.mark.parametrize("account_id", FINE)
def test_ids_of_real_identity_providers_stay_valid(account_id: str) -> None:
    assert check_account_id(account_id) == account_id


@pytest.mark.parametrize("account_id", UNPRINTABLE)
async def test_the_ledger_gives_no_account_and_no_trial(ledger: Ledger, account_id: str) -> None:
    with pytest.raises(InvalidAccountId):
        await ledger.provision(account_id, tier="trial", trial_amount="5")
    with pytest.raises(InvalidAccountId):
        await ledger.open_account(account_id)
    assert (await ledger.verify()).accounts == 0


async def test_a_jwt_sub_api_key_or_header_with_one_is_a_401(ledger: Ledger) -> None:
    async def lookup(key: str) -> Identity | None:
        return Identity(account_id={"k-zw": "ali\u200bce", "k-ok": "alice"}[key])

    app = build_app(
        ledger=ledger,
        api_key_lookup=lookup,
        user_header="x-user-id",
        trusted_proxies=["127.0.0.1"],
    )
    async with client(app) as c:
        for account_id in UNPRINTABLE:
            r = await c.get("/v1/echo", headers=bearer(account_id))
            assert r.status_code == 401, (account_id, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert "printable" in r.text or "space" in r.text
        r = await c.get("/v1/echo", headers={"x-api-key": "k-zw"})
        assert r.status_code == 401, r.text
        r = await c.get("/v1/echo", headers={b"x-user-id": "admin\u202euser".encode()})
        assert r.status_code == 401, r.text
        # the same credentials with a plain id are served
        assert (await c.get("/v1/echo", headers={"x-api-key": "k-ok"})).status_code == 200
        for account_id in FINE:
            assert (await c.get("/v1/echo", headers=bearer(account_id))).status_code == 200
    assert (await ledger.verify()).accounts == len(FINE)


async def test_a_request_user_with_one_is_a_401(ledger: Ledger) -> None:
    class Backend(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, Any]:
            return AuthCredentials(["authenticated"]), SimpleUser(conn.headers["x-name"])

    inner = build_app(ledger=ledger)
    app = AuthenticationMiddleware(inner, backend=Backend())
    async with client(app) as c:
        r = await c.get("/v1/echo", headers={"x-name": "bob "})
        assert r.status_code == 401, r.text
        assert (await c.get("/v1/echo", headers={"x-name": "bob"})).status_code == 200
    assert (await ledger.verify()).accounts == 1


async def test_signup_with_one_registers_but_provisions_nobody(ledger: Ledger) -> None:
    @provision_credits(Provisioner(ledger))
    async def register(name: str) -> dict[str, str]:
        return {"user_id": name}

    for account_id in UNPRINTABLE:
        assert await register(account_id) == {"user_id": account_id}
    assert (await ledger.verify()).accounts == 0


async def test_the_webhook_and_the_admin_api_answer_400(ledger: Ledger) -> None:
    secret = "s3cret-shared-with-the-idp-0123456789"
    hook = WebhookReceiver(Provisioner(ledger), secret=secret, clock=lambda: 1_800_000_000)
    admin = admin_app(ledger, token="admin-token-0123456789")
    auth = {"Authorization": "Bearer admin-token-0123456789"}
    for app, base in ((hook, "http://hook"), (admin, "http://admin")):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base) as c:
            for account_id in UNPRINTABLE:
                if app is hook:
                    body = json.dumps({"type": "REGISTER", "userId": account_id}).encode()
                    headers = {
                        "x-credit-timestamp": "1800000000",
                        "x-credit-signature": sign(secret, body, 1_800_000_000),
                    }
                    r = await c.post("/", content=body, headers=headers)
                else:
                    r = await c.get("/account", params={"id": account_id}, headers=auth)
                    assert r.status_code == 400, (account_id, r.text)
                    path = "/api/accounts/" + quote(account_id, safe="")
                    r = await c.post(
                        path + "/grants",
                        json={"amount": "1"},
                        headers={**auth, "Idempotency-Key": "k"},
                    )
                assert r.status_code == 400, (account_id, r.text)
                assert "printable" in r.text or "space" in r.text
    assert (await ledger.verify()).accounts == 0


def test_the_cli_says_why(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ("--database-url", ledger_url)
    assert cli(["migrate", *db]) == 0
    for account_id in ("ali\u200bce", " alice"):
        assert cli(["grant", account_id, "1", "--create", *db]) != 0
        out = capsys.readouterr()
        assert "printable" in out.err + out.out or "space" in out.err + out.out
    assert cli(["verify", "--json", *db]) == 0
    assert json.loads(capsys.readouterr().out)["accounts"] == 0
