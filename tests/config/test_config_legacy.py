"""The flat keywords ``Credits`` took before its options were grouped: each still works for one
release, warns with its new spelling (pointing at the caller's line), and has the same effect
as that spelling (the same resolved configuration, which is all any part reads)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from credit_middleware import ConfigurationError, Credits
from credit_middleware.config import Billing, Faults, Headers, Idempotency, Lifecycle, Limits
from credit_middleware.config.legacy import RENAMED

SERVED_AND_5XX = [*range(200, 300), *range(500, 600)]

#: deprecated keyword -> (its value, the new spelling with the same effect)
CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "default_limits": ("5/minute", {"limits": Limits(default="5/minute")}),
    "strategy": ("fixed-window", {"limits": Limits(strategy="fixed-window")}),
    "on_ledger_error": ("allow", {"faults": Faults(on_ledger_error="allow")}),
    "on_redis_error": ("refuse", {"faults": Faults(on_redis_error="refuse")}),
    "billable_statuses": ([200, 422], {"billing": Billing(statuses=[200, 422])}),
    "refund_on_error": (False, {"billing": Billing(statuses=SERVED_AND_5XX)}),
    "hold_timeout": (600.0, {"billing": Billing(hold_timeout=600.0)}),
    "idempotency_ttl": (3600.0, {"idempotency": Idempotency(ttl=3600.0)}),
    "idempotency_lease": (60.0, {"idempotency": Idempotency(lease=60.0)}),
    "max_stored_body": (4096, {"idempotency": Idempotency(max_stored_body=4096)}),
    "max_request_body": (8192, {"idempotency": Idempotency(max_request_body=8192)}),
    "balance_header": ("X-Left", {"headers": Headers(balance="X-Left")}),
    "legacy_headers": (True, {"headers": Headers(legacy_rate_limit=True)}),
    "auto_migrate": (False, {"lifecycle": Lifecycle(auto_migrate=False)}),
    "maintenance_interval": (None, {"lifecycle": Lifecycle(maintenance_interval=None)}),
}


def test_every_renamed_keyword_has_its_case() -> None:
    assert set(CASES) == {*RENAMED, "refund_on_error"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_deprecated_keyword_warns_and_does_what_its_new_spelling_does(name: str) -> None:
    value, new = CASES[name]
    with pytest.warns(DeprecationWarning, match=f"Credits\\({name}=...\\) is deprecated") as seen:
        old = Credits(**{name: value})
    assert len(seen) == 1
    assert seen[0].filename == __file__  # the warning points at the caller's line
    group = next(iter(new))
    assert type(new[group]).__name__ in str(seen[0].message)  # it names the new spelling
    assert old.config == Credits(**new).config


def test_refund_on_error_true_is_the_default_and_false_adds_to_given_statuses() -> None:
    with pytest.warns(DeprecationWarning, match="refund_on_error"):
        assert Credits(refund_on_error=True).config == Credits().config
    with pytest.warns(DeprecationWarning, match="is deprecated") as seen:
        both = Credits(billable_statuses=[200], refund_on_error=False)
    assert len(seen) == 2
    assert both.config.billing.statuses == frozenset({200, *range(500, 600)})


def test_a_flat_keyword_next_to_its_own_group_is_a_conflict() -> None:
    with (
        pytest.warns(DeprecationWarning, match="is deprecated"),
        pytest.raises(ConfigurationError, match=r"faults= is given: put \['on_ledger_error'\]"),
    ):
        Credits(faults=Faults(on_redis_error="refuse"), on_ledger_error="allow")


def test_an_unknown_keyword_is_refused_and_warns_of_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigurationError, match="unexpected keyword argument 'hold_timout'"):
            Credits(hold_timout=60)


def test_two_deprecated_keywords_of_one_group_build_one_group() -> None:
    with pytest.warns(DeprecationWarning, match="is deprecated"):
        credits = Credits(idempotency_ttl=7200, idempotency_lease=90)
    assert credits.config.idempotency == Idempotency(ttl=7200, lease=90)
