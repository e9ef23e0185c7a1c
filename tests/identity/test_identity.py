"""Identity resolvers: HS256 and JWKS (RS256/ES256, rotation), API keys, trusted headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from _middleware_helpers import SECRET, balance, client, echo, token
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

import credit_middleware.identity.jwt as jwt_module
from credit_middleware import BackendUnavailable, ConfigurationError, Ledger
from credit_middleware.identity import (
    ChainResolver,
    HeaderResolver,
    Identity,
    InvalidCredentials,
    ScopeUserResolver,
    TrustedProxies,
)
from credit_middleware.identity.jwt import JWTResolver

pytestmark = pytest.mark.anyio


def scope(headers: dict[str, str] | None = None, client: str = "127.0.0.1", **extra: Any) -> Any:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "headers": raw, "client": (client, 5000), **extra}


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def test_hs256_claims_are_kept() -> None:
    resolver = JWTResolver(secret=SECRET)
    tok = token("alice", email="a@example.com", email_verified=True, tier="pro")
    ident = await resolver.resolve(scope(auth(tok)))
    assert ident is not None
    assert (ident.account_id, ident.email, ident.email_verified, ident.tier, ident.source) == (
        "alice",
        "a@example.com",
        True,
        "pro",
        "jwt",
    )
    assert await resolver.resolve(scope()) is None
    assert await resolver.resolve(scope({"Authorization": "Basic abc"})) is None


async def test_issuer_audience_and_times_are_checked() -> None:
    resolver = JWTResolver(secret=SECRET, issuer="https://idp", audience="api")
    good = token("bob", iss="https://idp", aud="api")
    assert await resolver.resolve(scope(auth(good))) is not None
    for bad in (
        token("bob", iss="https://evil", aud="api"),
        token("bob", iss="https://idp", aud="other"),
        token("bob", aud="api"),
        token("bob", iss="https://idp", aud="api", lifetime=-1),
        token("bob", iss="https://idp", aud="api", nbf=int(time.time()) + 600),
    ):
        with pytest.raises(InvalidCredentials):
            await resolver.resolve(scope(auth(bad)))


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        JWTResolver(secret="short")
    with pytest.raises(ConfigurationError):
        JWTResolver(secret=SECRET, algorithms=["RS256"])
    with pytest.raises(ConfigurationError):
        JWTResolver()
    with pytest.raises(ConfigurationError):
        JWTResolver(secret=SECRET, jwks={"keys": []})


def _rsa() -> tuple[Any, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, dict(RSAAlgorithm.to_jwk(key.public_key(), as_dict=True))


def _ec() -> tuple[Any, dict[str, Any]]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, dict(ECAlgorithm.to_jwk(key.public_key(), as_dict=True))


def _signed(key: Any, kid: str, alg: str, sub: str = "carol") -> str:
    claims = {"sub": sub, "exp": int(time.time()) + 600}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


async def test_injected_jwks_rs256_and_es256() -> None:
    rkey, rjwk = _rsa()
    ekey, ejwk = _ec()
    jwks = {"keys": [{**rjwk, "kid": "r1", "alg": "RS256"}, {**ejwk, "kid": "e1", "alg": "ES256"}]}
    resolver = JWTResolver(jwks=jwks)
    assert (await resolver.resolve(scope(auth(_signed(rkey, "r1", "RS256"))))) is not None
    assert (await resolver.resolve(scope(auth(_signed(ekey, "e1", "ES256"))))) is not None
    other, _ = _rsa()
    with pytest.raises(InvalidCredentials):  # right kid, wrong key
        await resolver.resolve(scope(auth(_signed(other, "r1", "RS256"))))
    with pytest.raises(InvalidCredentials):  # HS256 signed with the public key: confusion
        await resolver.resolve(scope(auth(_hs256_by_hand(json.dumps(rjwk).encode(), "r1"))))


def _hs256_by_hand(secret: bytes, kid: str) -> str:
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps({"sub": "x", "exp": int(time.time()) + 60}).encode())
    sig = b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


class _JWKS:
    """A JWKS endpoint on a local port whose key set the test can rotate."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {"keys": []}
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                data = json.dumps(outer.body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server() -> Iterator[_JWKS]:
    server = _JWKS()
    try:
        yield server
    finally:
        server.close()


async def test_jwks_url_caches_and_follows_rotation(jwks_server: _JWKS) -> None:
    k1, j1 = _rsa()
    k2, j2 = _rsa()
    jwks_server.body = {"keys": [{**j1, "kid": "k1"}]}
    resolver = JWTResolver(jwks_url=jwks_server.url, min_refresh=0.0)
    for _ in range(5):
        assert await resolver.resolve(scope(auth(_signed(k1, "k1", "RS256")))) is not None
    assert jwks_server.fetches == 1  # cached
    jwks_server.body = {"keys": [{**j2, "kid": "k2"}]}  # the IdP rotates
    assert await resolver.resolve(scope(auth(_signed(k2, "k2", "RS256")))) is not None
    assert jwks_server.fetches == 2


async def test_unknown_kids_do_not_flood_the_idp(jwks_server: _JWKS) -> None:
    k1, j1 = _rsa()
    jwks_server.body = {"keys": [{**j1, "kid": "k1"}]}
    resolver = JWTResolver(jwks_url=jwks_server.url, min_refresh=60.0)
    assert await resolver.resolve(scope(auth(_signed(k1, "k1", "RS256")))) is not None
    for i in range(20):
        with pytest.raises(InvalidCredentials):
            await resolver.resolve(scope(auth(_signed(k1, f"forged{i}", "RS256"))))
    assert jwks_server.fetches == 1


async def test_unreachable_jwks_is_a_backend_error_not_a_401() -> None:
    resolver = JWTResolver(jwks_url="http://127.0.0.1:1/certs", timeout=0.5)
    k1, _ = _rsa()
    with pytest.raises(BackendUnavailable):
        await resolver.resolve(scope(auth(_signed(k1, "k1", "RS256"))))


async def test_forwarded_for_only_from_trusted_proxies() -> None:
    none = TrustedProxies()
    assert none.client_ip(scope({"X-Forwarded-For": "1.2.3.4"}, client="10.0.0.1")) == "10.0.0.1"
    proxies = TrustedProxies(["10.0.0.0/8"])
    xff = {"X-Forwarded-For": "6.6.6.6, 1.2.3.4, 10.0.0.2"}
    assert proxies.client_ip(scope(xff, client="10.0.0.1")) == "1.2.3.4"
    assert proxies.client_ip(scope(xff, client="8.8.8.8")) == "8.8.8.8"
    bad = {"X-Forwarded-For": "not-an-ip"}
    assert proxies.client_ip(scope(bad, client="10.0.0.1")) == "10.0.0.1"


async def test_header_and_scope_user_resolvers() -> None:
    header = HeaderResolver(["10.0.0.1"], header="X-User-ID")
    assert await header.resolve(scope({"X-User-ID": "u1"}, client="10.0.0.2")) is None
    found = await header.resolve(scope({"X-User-ID": "u1"}, client="10.0.0.1"))
    assert found == Identity("u1", source="header")
    with pytest.raises(InvalidCredentials):
        await header.resolve(scope({"X-User-ID": "x" * 300}, client="10.0.0.1"))

    class User:
        is_authenticated = True
        identity = "scoped"

    chain = ChainResolver(ScopeUserResolver(), JWTResolver(secret=SECRET))
    found = await chain.resolve(scope(user=User()))
    assert found is not None
    assert found.account_id == "scoped"
    found = await chain.resolve(scope(auth(token("jwt-user"))))
    assert found is not None
    assert found.account_id == "jwt-user"
    assert await chain.resolve(scope()) is None


class _Later:
    """A clock a hand-moved ``offset`` ahead, standing in for ``time`` in the resolver and for
    ``datetime`` where PyJWT checks ``exp``."""

    offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def datetime(self) -> type[datetime]:
        clock = self

        class Later(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return datetime.fromtimestamp(clock.time(), tz)

            @classmethod
            def utcnow(cls) -> Any:
                return datetime.fromtimestamp(clock.time(), timezone.utc).replace(tzinfo=None)

        return Later


async def test_verified_tokens_are_cached_but_expiry_still_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jwt.api_jwt

    later = _Later()
    monkeypatch.setattr(jwt_module, "time", later)
    monkeypatch.setattr(jwt.api_jwt, "datetime", later.datetime())
    resolver = JWTResolver(secret=SECRET, cache_size=2)
    short = jwt.encode({"sub": "dan", "exp": int(time.time()) + 1}, SECRET, algorithm="HS256")
    assert (await resolver.decode(short))["sub"] == "dan"
    assert short in resolver._verified  # served from memory next time
    assert (await resolver.decode(short))["sub"] == "dan"
    later.offset = 1.2  # past exp: the cached entry is gone, the token checked again
    with pytest.raises(InvalidCredentials, match="expired"):
        await resolver.decode(short)
    assert short not in resolver._verified


async def test_the_cache_never_accepts_a_tampered_token_and_stays_bounded() -> None:
    resolver = JWTResolver(secret=SECRET, cache_size=2)
    good = token("erin")
    await resolver.decode(good)
    head, body, sig = good.split(".")
    forged = f"{head}.{body}.{sig[:-2]}{'AA' if not sig.endswith('AA') else 'BB'}"
    with pytest.raises(InvalidCredentials):
        await resolver.decode(forged)
    for name in ("f", "g", "h"):
        await resolver.decode(token(name))
    assert len(resolver._verified) == 2


async def test_a_request_user_without_identity_is_found_by_its_display_name(
    ledger: Ledger,
) -> None:
    """A user class that implements only ``display_name`` (as Starlette's own ``SimpleUser``
    did before 0.38, and many apps' classes do) is an identity, not a 503 blaming the ledger;
    one with neither is refused as a credential (401), never a 5xx."""
    from starlette.applications import Starlette
    from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.requests import HTTPConnection
    from starlette.routing import Route

    from credit_middleware import CreditMiddleware, Provisioner

    class NamedUser(BaseUser):  # identity left to BaseUser: NotImplementedError
        def __init__(self, name: str) -> None:
            self.name = name

        @property
        def is_authenticated(self) -> bool:
            return True

        @property
        def display_name(self) -> str:
            return self.name

    class Session(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
            return AuthCredentials(["authenticated"]), NamedUser(conn.headers.get("x-user", ""))

    app = Starlette(routes=[Route("/v1/echo", echo)])
    app.add_middleware(CreditMiddleware, provisioner=Provisioner(ledger), meter="/v1/*")
    app.add_middleware(AuthenticationMiddleware, backend=Session())
    async with client(app) as c:
        r = await c.get("/v1/echo", headers={"X-User": "named"})
        assert r.status_code == 200, r.text
        assert r.json()["account"] == "named"
        nameless = await c.get("/v1/echo")
        assert nameless.status_code == 401
        assert nameless.json()["type"].endswith(":invalid-credentials")
    assert await balance(ledger, "named") == Decimal("4.999")
