"""Trial cohorts: a stable cohort per account, an even split, the cohort's amount granted."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credit_middleware import ConfigurationError, Identity, Ledger, Provisioner, TrialPolicy

pytestmark = pytest.mark.anyio

COHORTS = {"A": Decimal("5.0"), "B": Decimal("10.0")}


@given(st.text(min_size=1, max_size=100).filter(lambda s: s.isprintable() and s.strip()))
def test_cohort_is_a_function_of_the_account_id(account_id: str) -> None:
    one, two = TrialPolicy(cohorts=COHORTS), TrialPolicy(cohorts=dict(reversed(COHORTS.items())))
    assert one.cohort_of(account_id) == one.cohort_of(account_id) == two.cohort_of(account_id)
    assert one.cohort_of(account_id) in COHORTS


def test_cohorts_split_roughly_evenly() -> None:
    policy = TrialPolicy(cohorts={"A": Decimal(1), "B": Decimal(2), "C": Decimal(3)})
    counts = Counter(policy.cohort_of(f"user-{i}") for i in range(6000))
    assert set(counts) == {"A", "B", "C"}
    assert all(1800 <= n <= 2200 for n in counts.values()), counts


def test_without_cohorts_there_is_none() -> None:
    assert TrialPolicy().cohort_of("x") is None
    with pytest.raises(ConfigurationError):
        TrialPolicy(cohorts={})
    with pytest.raises(ConfigurationError):
        TrialPolicy(cohorts={"A": Decimal("-1")})
    with pytest.raises(ConfigurationError):
        TrialPolicy(cohorts={"A": Decimal("0.0000001")})


async def test_decision_uses_the_cohort_amount() -> None:
    policy = TrialPolicy(cohorts=COHORTS)
    for i in range(50):
        decision = await policy.decide(Identity(f"d{i}"))
        assert decision.cohort is not None
        assert decision.amount == COHORTS[decision.cohort]


async def test_cohort_is_recorded_on_account_and_grant(ledger: Ledger) -> None:
    prov = Provisioner(ledger, TrialPolicy(cohorts=COHORTS))
    seen: set[str] = set()
    for i in range(16):
        result = await prov.ensure_account(f"c{i}", layer="request")
        assert result.cohort is not None
        assert result.amount == COHORTS[result.cohort]
        account = await ledger.get_account(f"c{i}")
        assert account is not None
        assert account.cohort == result.cohort
        (grant,) = (await ledger.balance(f"c{i}")).grants
        assert grant.source == "trial"
        assert grant.amount == COHORTS[result.cohort]
        assert grant.metadata["cohort"] == result.cohort
        seen.add(result.cohort)
    assert seen == {"A", "B"}  # 16 ids: both cohorts show up


async def test_denied_trial_keeps_the_cohort(ledger: Ledger) -> None:
    prov = Provisioner(ledger, TrialPolicy(cohorts=COHORTS, require_verified_email=True))
    result = await prov.ensure_account(Identity("unv", email_verified=False), layer="request")
    assert not result.granted
    assert result.reason == "email_not_verified"
    account = await ledger.get_account("unv")
    assert account is not None
    assert account.cohort == TrialPolicy(cohorts=COHORTS).cohort_of("unv")
    assert account.metadata["trial_denied"] == "email_not_verified"
    assert (await ledger.balance("unv")).spendable == 0
