"""One resolved configuration, seen by every part: a ``Credits`` with every option set to a value
that is not its default, and each consumer (the middleware, the rate limiter, provisioning,
signup, the LiteLLM proxy hook, ``CreditedLLM``, the admin app, the upkeep) holding each option
that concerns it. ``Credits.from_env`` fills the same groups from every ``CREDIT_*`` variable."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from _middleware_helpers import SECRET

from credit_middleware import (
    ConfigurationError,
    CreditMiddleware,
    Credits,
    TrialPolicy,
    provision_credits,
)
from credit_middleware.config import (
    Billing,
    Config,
    Faults,
    Headers,
    Idempotency,
    Lifecycle,
    Limits,
)

pytestmark = pytest.mark.anyio
REDIS_URL = "redis://127.0.0.1:6379/0"  # nothing connects in these tests
ADMIN_TOKEN = "admin-token-0123456789abcdef"


def everything(sqlite_url: str) -> Credits:
    return Credits(
        database_url=sqlite_url,
        redis_url=REDIS_URL,
        key_prefix="cfgtest:",
        meter="/v2/*",
        cost="0.25",
        tiers={"trial": "7/minute", "pro": "70/minute"},
        policy=TrialPolicy(amount=Decimal(9)),
        jwt_secret=SECRET,
        jwt_audience="cfg",
        trusted_proxies=["10.0.0.0/8"],
        timeout=2.5,
        limits=Limits(default="9/minute", strategy="fixed-window"),
        faults=Faults(on_ledger_error="allow", on_redis_error="refuse"),
        billing=Billing(statuses=[200, 201], hold_timeout=120),
        idempotency=Idempotency(ttl=7200, lease=90, max_stored_body=2048, max_request_body=4096),
        headers=Headers(balance="X-Left", legacy_rate_limit=True),
        lifecycle=Lifecycle(auto_migrate=False, maintenance_interval=60),
        signup={"budget": 0.5},
    )


def test_every_option_differs_from_its_default(sqlite_url: str) -> None:
    config, default = everything(sqlite_url).config, Config()
    for name in Config.__dataclass_fields__:
        assert getattr(config, name) != getattr(default, name), name


async def test_the_middleware_reads_every_option_that_concerns_it(sqlite_url: str) -> None:
    credits = everything(sqlite_url)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    mw = CreditMiddleware(app, credits=credits)
    assert mw.ledger is credits.ledger and mw.limiter is credits.limiter
    assert mw.pricing is credits.pricing and mw.resolver is credits.resolver
    assert mw._fail_open and mw._legacy
    assert (mw._balance_header, mw.settlement.balance_name) == ("X-Left", b"x-left")
    assert (mw._timeout, mw._hold_timeout, mw.settlement.hold_timeout) == (2.5, 120.0, 120.0)
    assert mw.settlement.idempotency_ttl == 7200.0 and mw.settlement.leases == (90.0, 90.0)
    assert (mw.settlement.max_stored_body, mw._max_request_body) == (2048, 4096)
    assert [s for s in (200, 201, 202, 500) if mw.settlement.billable(s)] == [200, 201]
    assert mw._migrated  # auto_migrate=False: the operator migrates
    await credits.aclose()


async def test_the_built_parts_read_theirs(sqlite_url: str) -> None:
    credits = everything(sqlite_url)
    limiter: Any = credits.limiter
    assert [str(i) for i in limiter.items_for("gold", None)] == ["9 per 1 minute"]
    assert [str(i) for i in limiter.items_for("pro", None)] == ["70 per 1 minute"]
    assert limiter._policy == "refuse" and limiter._timeout == 1.0
    assert limiter._tag != Credits(database_url=sqlite_url).limiter._tag  # fixed-window keys
    assert limiter._remote._prefix.startswith("cfgtest:rl")
    assert credits.provisioner.locks._prefix == "cfgtest:lock:"  # type: ignore[attr-defined]
    assert credits.policy.amount == Decimal(9)
    assert credits.pricing.price({"type": "http", "path": "/v2/x"}) is not None
    assert credits.signup.provisioner is credits.provisioner
    assert credits.signup.proxies is credits.proxies and credits.signup.budget == 0.5
    assert credits.signup.prepare == credits.ready  # migrated (or not) as the lifecycle says

    async def register() -> dict[str, str]:
        return {"id": "ann"}

    decorated: Any = provision_credits(credits)(register)
    assert decorated.credit_provisioning is credits.signup  # the decorator runs the same one
    assert credits.maintenance is not None and credits.maintenance.interval == 60.0
    assert credits.migrated and credits.timeout == 2.5
    await credits.aclose()


async def test_the_litellm_parts_get_the_hold_timeout_balance_header_and_ledger(
    sqlite_url: str,
) -> None:
    pytest.importorskip("litellm")
    credits = everything(sqlite_url)
    hook, llm = credits.proxy_hook(), credits.llm()
    for meter in (hook.meter, llm.meter):
        assert meter.hold_timeout == 120.0
        assert meter.provisioner is credits.provisioner  # its ledger, bounded by ``timeout``
    assert hook.balance_header == "X-Left"
    assert hook.auto_migrate is False
    assert credits.proxy_hook(hold_timeout=30).meter.hold_timeout == 30.0  # options add to it
    await credits.aclose()


async def test_the_admin_app_offers_the_configured_tiers(sqlite_url: str) -> None:
    credits = everything(sqlite_url)
    await credits.ledger.migrate()
    app = credits.admin(token=ADMIN_TOKEN)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        r = await c.post(
            "/api/accounts/ann/tier",
            json={"tier": "gold"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": "k1"},
        )
    assert r.status_code == 400, r.text
    assert "one of trial, pro" in r.text
    await credits.aclose()


def test_from_env_fills_the_same_groups_from_every_variable(sqlite_url: str) -> None:
    env = {
        "CREDIT_DATABASE_URL": sqlite_url,
        "CREDIT_REDIS_URL": REDIS_URL,
        "CREDIT_JWT_SECRET": SECRET,
        "CREDIT_JWT_ISSUER": "me",
        "CREDIT_JWT_AUDIENCE": "cfg",
        "CREDIT_METER": "/v2/*",
        "CREDIT_CALL_COST": "0.25",
        "CREDIT_RATE_LIMIT": "9/minute",
        "CREDIT_TRUSTED_PROXIES": "10.0.0.0/8",
        "CREDIT_TIMEOUT": "2.5",
        "CREDIT_HOLD_TIMEOUT": "120",
        "CREDIT_ON_LEDGER_ERROR": "allow",
        "CREDIT_ON_REDIS_ERROR": "refuse",
        "CREDIT_KEY_PREFIX": "cfgtest:",
        "CREDIT_AUTO_MIGRATE": "false",
        "CREDIT_MAINTENANCE_INTERVAL": "off",
        "CREDIT_TRIAL_AMOUNT": "9",
    }
    config = Credits.from_env(env).config
    assert config.limits == Limits(default="9/minute")
    assert config.faults == Faults(on_ledger_error="allow", on_redis_error="refuse")
    assert config.billing == Billing(hold_timeout=120)
    assert config.lifecycle == Lifecycle(auto_migrate=False, maintenance_interval=None)
    assert (config.timeout, config.key_prefix, config.tiers) == (2.5, "cfgtest:", ("trial",))
    tiers = Credits.from_env({**env, "CREDIT_TIERS": '{"trial": "1/minute", "pro": "2/minute"}'})
    assert tiers.config.tiers == ("trial", "pro")
    # an argument wins: a whole group over its variables, a deprecated flat one over its field
    given = Credits.from_env(env, faults=Faults()).config
    assert given.faults == Faults()
    with pytest.warns(DeprecationWarning, match="hold_timeout"):
        flat = Credits.from_env(env, hold_timeout=60).config
    assert flat.billing == Billing(hold_timeout=60)
    with pytest.raises(ConfigurationError, match="CREDIT_ON_LEDGER_ERROR"):
        Credits.from_env({"CREDIT_ON_LEDGER_ERROR": "ignore"})
