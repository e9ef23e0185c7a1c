"""A trial denied for an unverified e-mail is granted once the e-mail is verified: at most once,
under concurrency, from any layer, and only for that refusal (same assertions on both backends).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal

import pytest
from _middleware_helpers import Recorder, balance, bearer, build_app, client

from credit_middleware import Identity, Ledger, Provisioner, TrialPolicy
from credit_middleware.events import Observer
from credit_middleware.trials.abuse import IP_TRIAL_LIMIT

pytestmark = pytest.mark.anyio

VERIFIED = Identity("late", email="l@example.com", email_verified=True)
UNVERIFIED = Identity("late", email="l@example.com", email_verified=False)
STRICT = TrialPolicy(require_verified_email=True)


@pytest.fixture
def ledger_clock() -> Callable[[], float]:
    import time

    return time.time  # JWT expiry and rate-limit windows read the wall clock


class Outcomes(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def provisioned(self, layer: str, outcome: str) -> None:
        self.events.append((layer, outcome))


async def trial_grants(ledger: Ledger, account_id: str) -> list[str | None]:
    """The layer of every trial grant entry of the account."""
    history = await ledger.history(account_id, limit=1000)
    return [e.layer for e in history if e.kind == "grant" and e.key == "trial"]


async def test_verifying_the_email_grants_the_denied_trial_once(ledger: Ledger) -> None:
    outcomes = Outcomes()
    prov = Provisioner(ledger, STRICT, observer=outcomes)
    denied = await prov.ensure_account(UNVERIFIED, layer="request")
    assert denied.created and not denied.granted and denied.reason == "email_not_verified"
    # still unverified: nothing to reconsider, and the cache answers
    assert not prov.may_reconsider(UNVERIFIED)
    again = await prov.ensure_account(UNVERIFIED, layer="request")
    assert not again.granted and again.reason == "email_not_verified"

    assert prov.may_reconsider(VERIFIED)
    late = await prov.ensure_account(VERIFIED, layer="litellm")
    assert (late.created, late.granted, late.amount, late.reason) == (
        False,
        True,
        Decimal("5.0"),
        None,
    )
    assert not prov.may_reconsider(VERIFIED)  # settled: no more reads for this account
    assert outcomes.events == [("request", "denied"), ("litellm", "late_grant")]
    assert not (await prov.ensure_account(VERIFIED, layer="request")).granted
    bal = await ledger.balance("late")
    assert bal.available == 5
    (grant,) = bal.grants
    assert (grant.source, grant.layer, grant.expires_at is not None) == ("trial", "litellm", True)
    assert grant.metadata["reconsidered"] == "email_not_verified"
    # the refusal stays on record: the ledger is an audit trail
    account = await ledger.get_account("late")
    assert account is not None and account.metadata["trial_denied"] == "email_not_verified"


async def test_another_process_with_a_cold_cache_does_not_grant_again(ledger: Ledger) -> None:
    await Provisioner(ledger, STRICT).ensure_account(UNVERIFIED, layer="request")
    assert (await Provisioner(ledger, STRICT).ensure_account(VERIFIED, layer="signup")).granted
    outcomes = Outcomes()
    cold = Provisioner(ledger, STRICT, observer=outcomes)
    result = await cold.ensure_account(VERIFIED, layer="webhook")
    assert not result.granted and not result.created
    assert outcomes.events == [("webhook", "existing")]
    assert await trial_grants(ledger, "late") == ["signup"]
    assert not cold.may_reconsider(VERIFIED)


async def test_a_herd_of_verified_requests_grants_once(ledger: Ledger) -> None:
    await Provisioner(ledger, STRICT).ensure_account(UNVERIFIED, layer="request")
    provs = [Provisioner(ledger, STRICT) for _ in range(3)]  # three "processes"
    results = await asyncio.gather(
        *(provs[i % 3].ensure_account(VERIFIED, layer="request") for i in range(60))
    )
    assert sum(r.granted for r in results) == 1
    assert len(await trial_grants(ledger, "late")) == 1
    assert (await ledger.balance("late")).available == 5


async def test_other_refusals_are_not_reconsidered(ledger: Ledger) -> None:
    async def capped(identity: Identity) -> str | None:
        return IP_TRIAL_LIMIT

    prov = Provisioner(ledger, TrialPolicy(checks=(capped,)))
    first = await prov.ensure_account(VERIFIED, layer="request")
    assert first.reason == IP_TRIAL_LIMIT
    assert not prov.may_reconsider(VERIFIED)
    cold = Provisioner(ledger, TrialPolicy())  # even if the cap is gone now
    assert not (await cold.ensure_account(VERIFIED, layer="request")).granted
    assert (await ledger.balance("late")).available == 0


async def test_a_reconsidered_trial_can_still_be_refused_by_a_check(ledger: Ledger) -> None:
    """Verified now, but the per-IP cap (say) is spent: the new reason is recorded and kept."""

    async def capped(identity: Identity) -> str | None:
        return IP_TRIAL_LIMIT

    await Provisioner(ledger, STRICT).ensure_account(UNVERIFIED, layer="request")
    prov = Provisioner(ledger, TrialPolicy(require_verified_email=True, checks=(capped,)))
    result = await prov.ensure_account(VERIFIED, layer="request")
    assert not result.granted and result.reason == IP_TRIAL_LIMIT
    assert not prov.may_reconsider(VERIFIED)
    assert (await ledger.balance("late")).available == 0


async def test_the_middleware_bills_a_user_whose_email_got_verified(ledger: Ledger) -> None:
    recorder = Recorder()
    app = build_app(provisioner=Provisioner(ledger, STRICT, observer=recorder))
    async with client(app) as c:
        r = await c.get("/v1/echo", headers=bearer("late", email_verified=False))
        assert r.status_code == 402 and r.json()["trial_denied"] == "email_not_verified"
        # the same user after clicking the link in the e-mail: a fresh token says verified
        r = await c.get("/v1/echo", headers=bearer("late", email_verified=True))
        assert r.status_code == 200, r.text
        assert r.headers["Credit-Balance"] == "4.999"
    assert await balance(ledger, "late") == Decimal("4.999")
    assert await trial_grants(ledger, "late") == ["request"]


async def test_an_exhausted_verified_user_costs_one_extra_read_not_one_per_402(
    ledger: Ledger,
) -> None:
    """The 402 path asks the provisioner once per account and process, then trusts its cache."""
    policy = TrialPolicy(amount=Decimal("0.002"))
    await Provisioner(ledger, policy).ensure_account("late", layer="signup")  # another process
    await ledger.debit("late", "0.002")
    app = build_app(provisioner=Provisioner(ledger, policy))
    reads = 0
    original = ledger.get_account

    async def counting(account_id: str) -> object:
        nonlocal reads
        reads += 1
        return await original(account_id)

    ledger.get_account = counting  # type: ignore[method-assign,assignment]
    async with client(app) as c:
        statuses = [
            (await c.get("/v1/echo", headers=bearer("late", email_verified=True))).status_code
            for _ in range(5)
        ]
    assert statuses == [402] * 5
    # one read to learn the account is settled, plus the 402 body's read of trial_denied each
    # time (and the tier lookup of the first request)
    assert reads == 1 + 5 + 1
