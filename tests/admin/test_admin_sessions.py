"""Signing in to the admin app from a browser: the form, the signed session cookie, CSRF on
writes, expiry, forgery, signing out; the bearer header still serving scripts."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from credit_middleware import ConfigurationError, Ledger
from credit_middleware.admin import AdminGuard, admin_app, credentials_login

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAGE = {"Accept": "text/html,application/xhtml+xml"}


def _site(ledger: Ledger, clock: Any = None, **options: Any) -> Starlette:
    options.setdefault("token", TOKEN)
    if clock is not None:
        options["clock"] = clock
    return Starlette(routes=[Mount("/admin", app=admin_app(ledger, **options))])


def _client(app: Any, base: str = "http://admin.test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field"
    return found.group(1)


async def _sign_in(
    c: httpx.AsyncClient, password: str = TOKEN, user: str = "ops"
) -> httpx.Response:
    form = await c.get("/admin/login", params={"next": "/accounts"})
    assert form.status_code == 200
    nonce = _field(form.text, "nonce")
    return await c.post(
        "/admin/login",
        data={"nonce": nonce, "next": "/accounts", "username": user, "password": password},
    )


def _cookie_attrs(response: httpx.Response, name: str) -> str:
    for value in response.headers.get_list("set-cookie"):
        if value.startswith(name + "="):
            return value
    raise AssertionError(f"no {name} cookie")


@pytest.fixture
async def alice(ledger: Ledger) -> Ledger:
    await ledger.open_account("alice", tier="trial", metadata={"email": "alice@example.com"})
    await ledger.grant("alice", "5", source="promo", key="p")
    return ledger


async def test_a_page_without_a_session_leads_to_the_login_form(alice: Ledger) -> None:
    async with _client(_site(alice)) as c:
        r = await c.get("/admin/account", params={"id": "alice"}, headers=PAGE)
        assert (
            r.status_code == 303
            and r.headers["location"] == "/admin/login?next=/account%3Fid%3Dalice"
        )
        api = await c.get("/admin/api/accounts/alice")  # a script: the bare 401, as before
        assert api.status_code == 401 and api.headers["www-authenticate"] == "Bearer"
        form = await c.get("/admin/login")
    assert form.status_code == 200 and 'type="password"' in form.text
    assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
    nonce_cookie = _cookie_attrs(form, "cm_admin_login")
    assert "HttpOnly" in nonce_cookie and "SameSite=Strict" in nonce_cookie
    assert "Path=/admin" in nonce_cookie and "Secure" not in nonce_cookie


async def test_signing_in_sets_a_signed_strict_cookie_and_opens_the_pages(alice: Ledger) -> None:
    async with _client(_site(alice)) as c:
        wrong = await _sign_in(c, password="not-the-token-at-all")
        assert wrong.status_code == 401 and "Wrong user or password" in wrong.text
        assert "cm_admin_session" not in c.cookies
        r = await _sign_in(c)
        assert r.status_code == 303 and r.headers["location"] == "/admin/accounts"
        cookie = _cookie_attrs(r, "cm_admin_session")
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=28800"):
            assert attribute in cookie
        assert "Secure" not in cookie  # plain http here; https below
        page = await c.get("/admin/accounts")
        assert page.status_code == 200 and "alice" in page.text and "ops" in page.text
        assert (await c.get("/admin/api/accounts/alice")).json()["tier"] == "trial"


async def test_on_https_the_cookie_is_secure(alice: Ledger) -> None:
    async with _client(_site(alice), base="https://admin.test") as c:
        r = await _sign_in(c)
    assert "Secure" in _cookie_attrs(r, "cm_admin_session")


async def test_login_csrf_nonce_and_next_are_checked(alice: Ledger) -> None:
    async with _client(_site(alice)) as c:
        await c.get("/admin/login")
        r = await c.post("/admin/login", data={"nonce": "forged", "password": TOKEN})
        assert r.status_code == 403 and "cm_admin_session" not in c.cookies
        form = await c.get("/admin/login")
        data = {"nonce": _field(form.text, "nonce"), "password": TOKEN, "next": "//evil.test/x"}
        r = await c.post("/admin/login", data=data)
    assert r.status_code == 303 and r.headers["location"] == "/admin/"


async def test_writes_with_a_session_need_the_csrf_token_and_our_origin(alice: Ledger) -> None:
    async with _client(_site(alice)) as c:
        await _sign_in(c)
        page = await c.get("/admin/account", params={"id": "alice"})
        csrf, key = _field(page.text, "csrf"), _field(page.text, "key")
        form = {"id": "alice", "tier": "pro", "reason": "paid", "key": key}
        for data, headers in (
            (form, {}),  # no token
            ({**form, "csrf": "x" * 43}, {}),  # a wrong one
            ({**form, "csrf": csrf}, {"Origin": "http://evil.test"}),  # another site
        ):
            r = await c.post("/admin/account/tier", data=data, headers=headers)
            assert r.status_code == 403, r.text
        assert (await alice.get_account("alice")).tier == "trial"  # type: ignore[union-attr]
        assert await alice.tier_history("alice") == []
        ok = await c.post(
            "/admin/account/tier",
            data={**form, "csrf": csrf},
            headers={"Origin": "http://admin.test"},
        )
        assert ok.status_code == 303
        again = await c.post("/admin/account/tier", data={**form, "csrf": csrf})  # double submit
        assert again.status_code == 303
        api = await c.post(
            "/admin/api/accounts/alice/tier",
            json={"tier": "team"},
            headers={"Idempotency-Key": "j1"},
        )
        assert api.status_code == 403  # JSON with a session: the header token is required
        api = await c.post(
            "/admin/api/accounts/alice/tier",
            json={"tier": "team"},
            headers={"Idempotency-Key": "j1", "X-CSRF-Token": csrf},
        )
        assert api.status_code == 201, api.text
    changes = await alice.tier_history("alice")
    assert [(h.new_tier, h.metadata["by"], h.metadata["via"]) for h in changes] == [
        ("team", "ops", "session"),
        ("pro", "ops", "session"),
    ]
    assert changes[1].reason == "paid" and changes[1].layer == "admin"


async def test_the_bearer_header_still_serves_scripts_without_csrf(alice: Ledger) -> None:
    async with _client(_site(alice)) as c:
        r = await c.post(
            "/admin/api/accounts/alice/tier",
            json={"tier": "pro"},
            headers={**AUTH, "Idempotency-Key": "s1"},
        )
    assert r.status_code == 201 and r.json()["new_tier"] == "pro"
    assert (await alice.tier_history("alice"))[0].metadata["by"] == "bearer"


async def test_expired_forged_or_altered_cookies_are_refused(alice: Ledger, clock: Any) -> None:
    async with _client(_site(alice, clock)) as c:
        await _sign_in(c)
        good = c.cookies["cm_admin_session"]
        assert (await c.get("/admin/accounts")).status_code == 200
        version, user, expires, sid, sig = good.split(".")
        for forged in (
            f"{version}.{user}.{int(expires) + 3600}.{sid}.{sig}",  # extended
            f"{version}.YWRtaW4.{expires}.{sid}.{sig}",  # another user
            f"{version}.{user}.{expires}.{sid}.{sig[:-2]}AA",  # another signature
            "v1.x.1.y",
            "",
        ):
            c.cookies.set("cm_admin_session", forged, domain="admin.test", path="/admin")
            r = await c.get("/admin/accounts", headers=PAGE)
            assert r.status_code == 303 and "/admin/login" in r.headers["location"]
        c.cookies.set("cm_admin_session", good, domain="admin.test", path="/admin")
        clock.advance(8 * 3600 + 1)  # past the session's lifetime
        r = await c.get("/admin/accounts", headers=PAGE)
    assert r.status_code == 303


async def test_a_session_signed_for_another_token_is_refused(alice: Ledger) -> None:
    async with _client(_site(alice, token="another-admin-token-987654321")) as other:
        await _sign_in(other, password="another-admin-token-987654321")
        stolen = other.cookies["cm_admin_session"]
    async with _client(_site(alice)) as c:
        c.cookies.set("cm_admin_session", stolen, domain="admin.test", path="/admin")
        assert (await c.get("/admin/api/accounts/alice")).status_code == 401


async def test_signing_out_clears_the_cookie(alice: Ledger) -> None:
    async with _client(_site(alice)) as c:
        await _sign_in(c)
        page = await c.get("/admin/accounts")
        assert 'id="logout"' in page.text
        refused = await c.post("/admin/logout", data={"csrf": "forged"})
        assert refused.status_code == 403
        r = await c.post("/admin/logout", data={"csrf": _field(page.text, "csrf")})
        assert r.status_code == 303 and r.headers["location"] == "/admin/login"
        assert "Max-Age=0" in _cookie_attrs(r, "cm_admin_session")
        assert (await c.get("/admin/accounts", headers=PAGE)).status_code == 303


async def test_configured_credentials_and_a_brute_force_brake(alice: Ledger) -> None:
    app = _site(
        alice,
        token=None,
        login=credentials_login({"ops": "correct horse battery"}),
        session_secret="k" * 32,
    )
    async with _client(app) as c:
        assert (await c.get("/admin/api/verify", headers=AUTH)).status_code == 403  # no bearer
        assert (await _sign_in(c, password=TOKEN, user="ops")).status_code == 401
        assert (await _sign_in(c, password="correct horse battery", user="eve")).status_code == 401
        assert (await _sign_in(c, password="correct horse battery")).status_code == 303
        c.cookies.clear()
        for _ in range(18):
            await _sign_in(c, password="wrong password!!")
        r = await _sign_in(c, password="correct horse battery")
    assert r.status_code == 429 and "cm_admin_session" not in c.cookies


async def test_sign_in_configuration_is_checked(ledger: Ledger) -> None:
    login = credentials_login({"ops": "correct horse battery"})
    with pytest.raises(ConfigurationError, match="session_secret"):
        admin_app(ledger, login=login)
    with pytest.raises(ConfigurationError, match="32 bytes"):
        admin_app(ledger, login=login, session_secret="short")
    with pytest.raises(ConfigurationError, match="needs login"):
        admin_app(ledger, authorize=AdminGuard.__call__, session_secret="k" * 32)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="16 characters"):
        admin_app(ledger, token="short")
    with pytest.raises(ConfigurationError, match="12"):
        credentials_login({"ops": "short"})
    with pytest.raises(ConfigurationError, match="session_ttl"):
        admin_app(ledger, token=TOKEN, session_ttl=0)
    assert admin_app(ledger, token=TOKEN).billing_exempt is True  # type: ignore[attr-defined]


async def test_mounted_behind_the_middleware_with_admin_exempt(ledger: Ledger) -> None:
    """The README's layout: the admin app mounted inside a metered app. Its paths must be
    exempt from billing (``AdminGuard.billing_exempt``); then neither the bearer token nor the
    session cookie is read as a user's credential, and no account is made for them."""
    from _middleware_helpers import SECRET

    from credit_middleware import Provisioner
    from credit_middleware.http.middleware import CreditMiddleware
    from credit_middleware.pricing import Pricing, Route

    site = _site(ledger)
    pricing = Pricing(routes=[Route("/admin", mode="exempt"), Route("/admin/*", mode="exempt")])
    site.add_middleware(
        CreditMiddleware, provisioner=Provisioner(ledger), jwt_secret=SECRET, pricing=pricing
    )
    async with _client(site) as c:
        assert (await c.get("/admin/api/verify", headers=AUTH)).status_code == 200
        assert (await _sign_in(c)).status_code == 303
        assert (await c.get("/admin/accounts")).status_code == 200
    assert await ledger.search_accounts("") == []
