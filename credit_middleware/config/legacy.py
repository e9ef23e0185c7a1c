"""The flat keywords ``Credits`` took before its options were grouped: still accepted for one
release, each with a :class:`DeprecationWarning` naming its new spelling, folded into the same
group objects (so the effect is the same as the new spelling's)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigurationError
from .groups import Billing, Faults, Headers, Idempotency, Lifecycle, Limits

__all__ = ["GROUPS", "RENAMED", "fold"]

#: ``Credits`` keyword -> the group it takes.
GROUPS: Mapping[str, type] = {
    "limits": Limits,
    "faults": Faults,
    "billing": Billing,
    "idempotency": Idempotency,
    "headers": Headers,
    "lifecycle": Lifecycle,
}

#: deprecated flat keyword -> (``Credits`` group keyword, the group's field).
RENAMED: Mapping[str, tuple[str, str]] = {
    "default_limits": ("limits", "default"),
    "strategy": ("limits", "strategy"),
    "on_ledger_error": ("faults", "on_ledger_error"),
    "on_redis_error": ("faults", "on_redis_error"),
    "billable_statuses": ("billing", "statuses"),
    "hold_timeout": ("billing", "hold_timeout"),
    "idempotency_ttl": ("idempotency", "ttl"),
    "idempotency_lease": ("idempotency", "lease"),
    "max_stored_body": ("idempotency", "max_stored_body"),
    "max_request_body": ("idempotency", "max_request_body"),
    "balance_header": ("headers", "balance"),
    "legacy_headers": ("headers", "legacy_rate_limit"),
    "auto_migrate": ("lifecycle", "auto_migrate"),
    "maintenance_interval": ("lifecycle", "maintenance_interval"),
}

#: the 5xx statuses ``refund_on_error=False`` billed
_SERVER_ERRORS = range(500, 600)


def _spelling(group: str, fields: Mapping[str, Any]) -> str:
    given = ", ".join(f"{name}={value!r}" for name, value in fields.items())
    return f"{group}={GROUPS[group].__name__}({given})"


def _warn(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(
        f"Credits({old}=...) is deprecated and goes in the next release: use {new}",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


def _refund_on_error(refund: Any, fields: dict[str, dict[str, Any]], stacklevel: int) -> None:
    """``refund_on_error=False`` billed the app's 5xx: the same as listing them as billed."""
    billing = fields.setdefault("billing", {})
    if not refund:
        statuses = billing.get("statuses", Billing().statuses)
        billing["statuses"] = frozenset(statuses) | frozenset(_SERVER_ERRORS)
    _warn(
        "refund_on_error",
        "billing=Billing(statuses=...) (the billed statuses; add range(500, 600) to bill the"
        " app's 5xx)",
        stacklevel + 1,
    )


def fold(groups: Mapping[str, Any], flat: Mapping[str, Any], stacklevel: int = 2) -> dict[str, Any]:
    """``groups`` (keyword -> group or None) with the deprecated ``flat`` keywords folded in,
    one warning each. A flat keyword next to its own group is a conflict; an unknown keyword
    is refused as Python would refuse it."""
    fields: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        if name == "refund_on_error":
            continue
        if name not in RENAMED:
            raise ConfigurationError(f"Credits() got an unexpected keyword argument {name!r}")
        group, field = RENAMED[name]
        fields.setdefault(group, {})[field] = value
        _warn(name, _spelling(group, {field: value}), stacklevel + 1)
    if "refund_on_error" in flat:
        _refund_on_error(flat["refund_on_error"], fields, stacklevel + 1)
    folded = dict(groups)
    for group, values in fields.items():
        if folded.get(group) is not None:
            raise ConfigurationError(
                f"{group}= is given: put {sorted(values)} in {GROUPS[group].__name__}(...)"
            )
        folded[group] = GROUPS[group](**values)
    return folded
