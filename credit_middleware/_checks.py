"""Checks :class:`~credit_middleware.Credits` runs when it is built: each failure is a
:class:`ConfigurationError` that says what to change."""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigurationError
from .ledger import Ledger
from .trials.policy import TrialPolicy
from .trials.provisioning import Provisioner

__all__ = ["check_objects", "conflict", "positive"]


def positive(name: str, value: object, unit: str = "seconds") -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a positive number of {unit}, not {value!r}")
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive ({unit}), not {value!r}")
    return float(value)


def conflict(message: str) -> ConfigurationError:
    return ConfigurationError(message)


def check_objects(
    database_url: str | None,
    database: Any,
    ledger: Ledger | None,
    provisioner: Provisioner | None,
    policy: TrialPolicy | None,
) -> None:
    if ledger is not None and (database_url or database is not None):
        raise conflict("give database_url (or database) or ledger, not both")
    if provisioner is not None:
        if database_url or database is not None:
            raise conflict(
                "provisioner= already has a ledger: drop database_url, or drop provisioner="
            )
        if ledger is not None and provisioner.ledger is not ledger:
            raise conflict(
                "ledger= and provisioner= work on different ledgers (accounts would be"
                " provisioned in one and debited in the other): give only provisioner=,"
                " or Provisioner(ledger)"
            )
        if policy is not None and provisioner.policy != policy:
            raise conflict(
                "policy= differs from provisioner.policy: give Provisioner(ledger, policy),"
                " or drop provisioner="
            )
    if ledger is not None and not isinstance(ledger, Ledger):
        raise ConfigurationError(f"ledger must be a Ledger, not {type(ledger).__name__}")
