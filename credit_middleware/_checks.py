"""Checks :class:`~credit_middleware.Credits` runs when it is built: each failure is a
:class:`ConfigurationError` that says what to change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config.groups import positive
from .errors import ConfigurationError
from .ledger import Ledger
from .trials.policy import TrialPolicy
from .trials.provisioning import Provisioner

__all__ = ["check_identity", "check_objects", "conflict", "positive"]


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


def check_identity(options: Mapping[str, object], resolver: object) -> None:
    """The identity options (``jwt_secret``, ...) against each other and ``resolver``."""
    given = sorted(k for k, v in options.items() if v is not None)
    if resolver is not None and given:
        raise conflict(f"resolver= decides the identity: drop {given}, or drop resolver=")
    if (options.get("jwt_issuer") or options.get("jwt_audience")) and not (
        options.get("jwt_secret") or options.get("jwks_url")
    ):
        raise conflict("jwt_issuer/jwt_audience need jwt_secret or jwks_url")
