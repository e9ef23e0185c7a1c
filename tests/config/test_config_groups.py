"""The option groups check themselves when they are built (a clear ``ConfigurationError``, before
any ``Credits`` exists), and ``Config`` checks what spans groups."""

from __future__ import annotations

from typing import Any

import pytest

from credit_middleware import ConfigurationError
from credit_middleware.config import (
    Billing,
    Config,
    Faults,
    Headers,
    Idempotency,
    Lifecycle,
    Limits,
)


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda: Limits(strategy="leaky"), "strategy must be one of"),  # type: ignore[arg-type]
        (lambda: Limits(default=60), "default limits are text"),  # type: ignore[arg-type]
        (lambda: Faults(on_ledger_error="ignore"), "on_ledger_error must be one of"),  # type: ignore[arg-type]
        (lambda: Faults(on_redis_error="ignore"), "on_redis_error must be one of"),  # type: ignore[arg-type]
        (lambda: Billing(statuses=[]), "billing statuses must be HTTP statuses"),
        (lambda: Billing(statuses=[99]), "billing statuses must be HTTP statuses"),
        (lambda: Billing(statuses=[600]), "billing statuses must be HTTP statuses"),
        (lambda: Billing(statuses=[True]), "billing statuses must be HTTP statuses"),
        (lambda: Billing(hold_timeout=0), "hold_timeout must be positive"),
        (lambda: Billing(hold_timeout=8 * 86400), "at most 7 days"),
        (lambda: Billing(hold_timeout=float("inf")), "hold_timeout must be a positive number"),
        (lambda: Idempotency(ttl=-1), "idempotency ttl must be positive"),
        (lambda: Idempotency(lease=0), "idempotency lease must be positive"),
        (lambda: Idempotency(max_stored_body=0), "max_stored_body must be positive"),
        (lambda: Idempotency(max_request_body="big"), "max_request_body must be a positive"),  # type: ignore[arg-type]
        (lambda: Headers(balance=""), "HTTP header name"),
        (lambda: Headers(balance="Credit Balance"), "HTTP header name"),
        (lambda: Headers(balance=None), "HTTP header name"),  # type: ignore[arg-type]
        (lambda: Lifecycle(maintenance_interval=0), "maintenance_interval must be positive"),
        (lambda: Config(timeout=0), "timeout must be positive"),
        (lambda: Config(key_prefix=None), "key_prefix must be text"),  # type: ignore[arg-type]
        (lambda: Config(idempotency=Idempotency(ttl=10)), "raise Idempotency"),
    ],
)
def test_a_group_refuses_what_cannot_work_when_it_is_built(build: Any, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        build()


def test_groups_are_frozen_and_normalised() -> None:
    billing = Billing(statuses=[200, 201, 201], hold_timeout=60)
    assert billing.statuses == frozenset({200, 201})
    assert billing.hold_timeout == 60.0 and isinstance(billing.hold_timeout, float)
    assert billing.billable(201) and not billing.billable(500)
    with pytest.raises(AttributeError):
        billing.hold_timeout = 1  # type: ignore[misc]
    assert Idempotency(max_stored_body=4096.0).max_stored_body == 4096  # type: ignore[arg-type]
    assert Billing() == Billing(statuses=range(200, 300))


def test_the_leases_follow_the_hold_timeout_unless_a_lease_is_given() -> None:
    assert Config().leases == (30.0, 300.0)
    assert Config(billing=Billing(hold_timeout=10)).leases == (30.0, 30.0)
    held = Config(billing=Billing(hold_timeout=600), idempotency=Idempotency(lease=45))
    assert held.leases == (45.0, 45.0)
    assert Config(timeout=2.5).backend_timeout == 1.0
    assert Config(timeout=0.25).backend_timeout == 0.25
