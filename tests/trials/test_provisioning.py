"""ensure_account: one account and one trial grant, whatever the layer or the concurrency."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from conftest import Clock

from credit_middleware import (
    BackendUnavailable,
    Identity,
    Ledger,
    Provisioner,
    TrialPolicy,
)
from credit_middleware.events import Observer

pytestmark = pytest.mark.anyio


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def provisioned(self, layer: str, outcome: str) -> None:
        self.events.append((layer, outcome))


async def test_default_trial_is_five_credits_for_thirty_days(ledger: Ledger, clock: Clock) -> None:
    result = await Provisioner(ledger).ensure_account("sub-123", layer="signup")
    assert result.created
    assert result.granted
    assert result.amount == Decimal("5.0")
    bal = await ledger.balance("sub-123")
    assert bal.tier == "trial"
    assert bal.available == 5
    (grant,) = bal.grants
    assert grant.source == "trial"
    assert grant.key == "trial"
    assert grant.layer == "signup"
    assert grant.expires_at is not None
    assert grant.expires_at.timestamp() == pytest.approx(clock() + 30 * 86400, abs=1)
    account = await ledger.get_account("sub-123")
    assert account is not None
    assert account.metadata["provisioned_by"] == "signup"
    # about 5,000 calls at 0.001
    for _ in range(3):
        await ledger.debit("sub-123", "0.001")
    assert (await ledger.balance("sub-123")).available == Decimal("4.997")


async def test_every_layer_reaches_the_same_single_grant(ledger: Ledger) -> None:
    recorder = Recorder()
    first = await Provisioner(ledger, observer=recorder).ensure_account("u", layer="signup")
    for layer in ("request", "litellm", "webhook"):
        again = await Provisioner(ledger, observer=recorder).ensure_account("u", layer=layer)
        assert not again.created
        assert not again.granted
    assert first.granted
    assert [e.kind for e in await ledger.history("u")] == ["grant"]
    assert recorder.events == [("signup", "created")]  # the rest found the account at once


async def test_known_accounts_are_cached_per_instance(ledger_url: str) -> None:
    led = Ledger(ledger_url)
    await led.migrate()
    prov = Provisioner(led, known_cache_size=2)
    await prov.ensure_account("a", layer="request")
    await led.close()  # with the cache, a known account needs no database at all
    assert not (await prov.ensure_account("a", layer="request")).created
    other = Provisioner(led)  # another instance shares nothing
    assert "a" not in other._known
    with pytest.raises(BackendUnavailable):  # and has to ask the (closed) database
        await other.ensure_account("a", layer="request")


async def test_unverified_email_gets_an_account_without_credits(ledger: Ledger) -> None:
    policy = TrialPolicy(require_verified_email=True)
    recorder = Recorder()
    prov = Provisioner(ledger, policy, observer=recorder)
    result = await prov.ensure_account(
        Identity("unverified", email="x@example.com", email_verified=False), layer="request"
    )
    assert result.created
    assert not result.granted
    assert result.reason == "email_not_verified"
    assert (await ledger.balance("unverified")).available == 0
    account = await ledger.get_account("unverified")
    assert account is not None
    assert account.metadata["trial_denied"] == "email_not_verified"
    assert recorder.events == [("request", "denied")]
    ok = await prov.ensure_account(
        Identity("verified", email="y@example.com", email_verified=True), layer="request"
    )
    assert ok.granted


async def test_policy_shapes_the_grant(ledger: Ledger) -> None:
    policy = TrialPolicy(tier="starter", amount=Decimal("2.5"), valid_for=None, priority=5)
    await Provisioner(ledger, policy).ensure_account("p", layer="admin")
    bal = await ledger.balance("p")
    assert bal.tier == "starter"
    assert bal.available == Decimal("2.5")
    assert bal.grants[0].expires_at is None
    assert bal.grants[0].priority == 5


async def test_bad_identity_and_layer_are_refused(ledger: Ledger) -> None:
    prov = Provisioner(ledger)
    with pytest.raises(ValueError, match="layer"):
        await prov.ensure_account("ok", layer="nonsense")  # type: ignore[arg-type]
    for bad in ("", "x" * 300, "a\x00b"):
        with pytest.raises(ValueError, match="account id"):
            await prov.ensure_account(bad, layer="request")
    assert (await ledger.verify()).accounts == 0


@pytest.mark.parametrize(
    "url",
    ["postgresql://postgres@127.0.0.1:1/nowhere", "sqlite:////nonexistent-dir/x/credits.db"],
    ids=["postgres-dead-port", "sqlite-unwritable"],
)
async def test_unreachable_database_is_backend_unavailable(url: str) -> None:
    ledger = Ledger(url, timeout=1.0)
    recorder = Recorder()
    prov = Provisioner(ledger, observer=recorder)
    with pytest.raises(BackendUnavailable):
        await ledger.debit("a", "1")
    with pytest.raises(BackendUnavailable):
        await prov.ensure_account("a", layer="request")
    await ledger.close()


async def test_ledger_recovers_when_the_database_comes_back(pg_url: str) -> None:
    """A pool that failed to open is retried on the next call (no restart needed)."""
    from credit_middleware.ledger._executor import AsyncpgExecutor

    executor = AsyncpgExecutor("postgresql://postgres@127.0.0.1:1/x", timeout=0.5)
    ledger = Ledger(executor=executor)
    with pytest.raises(BackendUnavailable):
        await ledger.get_account("a")
    executor._dsn = pg_url.split("?")[0]  # the database is reachable again
    executor._pool = None
    assert await ledger.schema_version() == 0  # no schema in that database yet: reachable
    await ledger.close()


async def test_cohort_is_recorded_on_account_and_grant(ledger: Ledger) -> None:
    amounts = {"A": Decimal("5"), "B": Decimal("10")}
    policy = TrialPolicy(cohorts=amounts)
    prov = Provisioner(ledger, policy)
    result = await prov.ensure_account("cohort-user", layer="signup")
    cohort = policy.cohort_of("cohort-user")
    assert cohort in amounts
    assert result.cohort == cohort
    assert result.amount == amounts[cohort]
    bal = await ledger.balance("cohort-user")
    assert bal.grants[0].metadata["cohort"] == cohort


async def test_trial_expiry_uses_the_ledger_clock(ledger: Ledger, clock: Clock) -> None:
    await Provisioner(ledger, TrialPolicy(valid_for=timedelta(hours=1))).ensure_account(
        "short", layer="request"
    )
    clock.advance(3601)
    assert (await ledger.balance("short")).available == 0


async def test_what_a_process_knows_of_an_account_expires(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tier changed elsewhere (a purchase) reaches this process's provisioner within
    KNOWN_TTL: the LiteLLM integration prices by the tier it reports."""
    import credit_middleware.trials.provisioning as provisioning

    class Monotonic:
        now = 1000.0

        def monotonic(self) -> float:
            return self.now

    clock = Monotonic()
    monkeypatch.setattr(provisioning, "time", clock)
    prov = Provisioner(ledger)
    assert (await prov.ensure_account("t", layer="request")).tier == "trial"
    await ledger.set_tier("t", "pro", key="upgrade-1", reason="bought")
    clock.now += provisioning.KNOWN_TTL - 1
    assert (await prov.ensure_account("t", layer="request")).tier == "trial"  # still trusted
    clock.now += 2
    assert (await prov.ensure_account("t", layer="request")).tier == "pro"
