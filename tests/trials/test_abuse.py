"""The per-IP trial cap: counts real new trials once each, shared across layers, fails open."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

import pytest
from _signup_helpers import Recorder, trial_grants
from conftest import REDIS_URL
from limits.aio.storage import MemoryStorage
from limits.storage import storage_from_string

from credit_middleware import ConfigurationError, Identity, Ledger, Provisioner, TrialPolicy
from credit_middleware.trials.abuse import IP_TRIAL_LIMIT, TrialIpCap, network_of

pytestmark = pytest.mark.anyio


def test_network_of_buckets_addresses() -> None:
    assert network_of("203.0.113.7") == "203.0.113.7"
    assert network_of(" 203.0.113.7 ") == "203.0.113.7"
    assert network_of("::ffff:203.0.113.7") == "203.0.113.7"
    assert network_of("2001:db8:1:2:aaaa::1") == network_of("2001:db8:1:2:ffff::9")
    assert network_of("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert network_of("2001:db8:1:3::1") != network_of("2001:db8:1:2::1")
    assert network_of("2001:db8::1", ipv6_prefix=128) == "2001:db8::1/128"
    assert network_of(None) is None
    assert network_of("") is None
    assert network_of("not-an-ip") is None


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        TrialIpCap("three a day")
    with pytest.raises(ConfigurationError):
        TrialIpCap("3/day", strategy="leaky")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TrialIpCap("3/day", ipv6_prefix=129)
    with pytest.raises(ConfigurationError):
        TrialIpCap("3/day", storage="nosuch://x")
    with pytest.raises(ConfigurationError):
        TrialIpCap("3/day", timeout=0)


async def test_fourth_trial_from_one_ip_gets_a_zero_credit_account(ledger: Ledger) -> None:
    cap = TrialIpCap("3/day")
    prov = Provisioner(ledger, TrialPolicy(checks=(cap,)))
    results = [
        await prov.ensure_account(Identity(f"u{i}", client_ip="198.51.100.9"), layer="request")
        for i in range(4)
    ]
    assert [r.granted for r in results] == [True, True, True, False]
    assert results[3].created
    assert results[3].reason == IP_TRIAL_LIMIT
    account = await ledger.get_account("u3")
    assert account is not None
    assert account.tier == "trial"
    assert account.metadata["trial_denied"] == IP_TRIAL_LIMIT
    assert (await ledger.balance("u3")).spendable == 0
    assert (await ledger.balance("u2")).spendable == Decimal("5")
    # Another network is not affected; identities without an address are not counted.
    other = await prov.ensure_account(Identity("v1", client_ip="198.51.100.10"), layer="request")
    assert other.granted
    anonymous = await prov.ensure_account(Identity("v2"), layer="request")
    assert anonymous.granted
    # Existing accounts are never re-decided, so they spend nothing.
    again = await prov.ensure_account(Identity("u0", client_ip="198.51.100.9"), layer="request")
    assert not again.created
    assert await cap.remaining("198.51.100.9") == 0


async def test_same_account_decided_many_times_spends_one_slot() -> None:
    cap = TrialIpCap("3/day")
    ident = Identity("dup", client_ip="192.0.2.1")
    answers = await asyncio.gather(*(cap(ident) for _ in range(20)))
    assert answers == [None] * 20
    assert await cap.remaining("192.0.2.1") == 2
    # Retried much later for the same account: the recorded answer, no new slot.
    assert await cap(ident) is None
    assert await cap.remaining("192.0.2.1") == 2


async def test_a_denial_is_remembered_for_that_account() -> None:
    cap = TrialIpCap("1/day")
    assert await cap(Identity("a", client_ip="192.0.2.2")) is None
    assert await cap(Identity("b", client_ip="192.0.2.2")) == IP_TRIAL_LIMIT
    assert await cap(Identity("b", client_ip="192.0.2.2")) == IP_TRIAL_LIMIT
    assert await cap(Identity("a", client_ip="192.0.2.2")) is None


async def test_concurrent_duplicate_signups_burn_the_quota_once(ledger: Ledger) -> None:
    cap = TrialIpCap("3/day")
    prov = Provisioner(ledger, TrialPolicy(checks=(cap,)))
    ident = Identity("herd", client_ip="192.0.2.3")
    results = await asyncio.gather(
        *(prov.ensure_account(ident, layer="request") for _ in range(20))
    )
    assert sum(r.granted for r in results) == 1
    assert await trial_grants(ledger, "herd") == 1
    assert await cap.remaining("192.0.2.3") == 2


async def test_decisions_racing_on_separate_provisioners_agree(ledger: Ledger) -> None:
    """Two processes' provisioners (no shared lock) deciding for one account: one slot."""
    cap = TrialIpCap("3/day")
    policy = TrialPolicy(checks=(cap,))
    provs = [Provisioner(ledger, policy) for _ in range(5)]
    ident = Identity("racer", client_ip="192.0.2.4")
    results = await asyncio.gather(*(p.ensure_account(ident, layer="signup") for p in provs))
    assert sum(r.created for r in results) == 1
    assert await trial_grants(ledger, "racer") == 1
    assert await cap.remaining("192.0.2.4") == 2


class _Broken(MemoryStorage):
    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        raise ConnectionError("storage down")


class _Slow(MemoryStorage):
    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")


async def test_storage_failure_fails_open_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    cap = TrialIpCap("1/day", storage=_Broken(), observer=rec)
    with caplog.at_level(logging.WARNING, logger="credit_middleware.trials.abuse"):
        for i in range(5):
            assert await cap(Identity(f"x{i}", client_ip="192.0.2.5")) is None
    assert len([r for r in caplog.records if "degraded" in r.getMessage()]) == 1
    assert rec.degradations == [("trial_cap", True)]


async def test_slow_storage_is_cut_at_the_timeout() -> None:
    cap = TrialIpCap("1/day", storage=_Slow(), timeout=0.05)
    assert await cap(Identity("slow", client_ip="192.0.2.6")) is None


async def test_unreachable_redis_fails_open() -> None:
    cap = TrialIpCap("1/day", storage="redis://127.0.0.1:1/0", timeout=1.0)
    for i in range(3):
        assert await cap(Identity(f"r{i}", client_ip="192.0.2.7")) is None


@pytest.fixture
async def redis_storage(redis_client: Any) -> Any:
    return storage_from_string(
        f"async+{REDIS_URL}",
        implementation="redispy",
        key_prefix=redis_client.test_prefix + "limits",
        connection_pool=redis_client.connection_pool,
    )


async def test_redis_cap_is_shared_by_two_instances(redis_storage: Any, ledger: Ledger) -> None:
    """Two app processes (two caps over one Redis) count against the same quota."""
    caps = [TrialIpCap("3/day", storage=redis_storage, timeout=30) for _ in range(2)]
    provs = [Provisioner(ledger, TrialPolicy(checks=(c,))) for c in caps]
    results = []
    for i in range(4):
        prov = provs[i % 2]
        ident = Identity(f"redis{i}", client_ip="192.0.2.8")
        results.append(await prov.ensure_account(ident, layer="request"))
    assert [r.granted for r in results] == [True, True, True, False]
    dup = Identity("redis-dup", client_ip="192.0.2.9")
    answers = await asyncio.gather(*(caps[i % 2](dup) for i in range(10)))
    assert answers == [None] * 10
    assert await caps[0].remaining("192.0.2.9") == 2


async def test_an_app_redis_client_is_shared(redis_client: Any, ledger: Ledger) -> None:
    prefix = redis_client.test_prefix.rstrip(":")
    cap = TrialIpCap("2/day", storage=redis_client, redis_key_prefix=prefix, timeout=30)
    prov = Provisioner(ledger, TrialPolicy(checks=(cap,)))
    granted = []
    for i in range(3):
        ident = Identity(f"pool{i}", client_ip="192.0.2.10")
        granted.append((await prov.ensure_account(ident, layer="request")).granted)
    assert granted == [True, True, False]
    keys = [k async for k in redis_client.scan_iter(match=redis_client.test_prefix + "*")]
    assert keys  # the counters live under the app's prefix, in the app's Redis


def test_storage_must_be_usable() -> None:
    with pytest.raises(ConfigurationError):
        TrialIpCap("3/day", storage=object())
