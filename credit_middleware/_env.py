"""``Credits.from_env()``: the ``CREDIT_*`` environment variables as :class:`Credits` options,
flat ones (``timeout``) or fields of the option groups (``faults.on_ledger_error``).

The environment is read only here, when an application asks for it (an edge, like the CLI);
a value that cannot be used raises :class:`ConfigurationError` naming the variable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from .config.legacy import GROUPS, RENAMED
from .errors import ConfigurationError
from .trials.policy import TrialPolicy

__all__ = ["VARIABLES", "from_env"]


def _text(value: str) -> str:
    return value


def _list(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def _number(value: str) -> float:
    return float(value)


def _decimal(value: str) -> Decimal:
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None


def _tiers(value: str) -> dict[str, str]:
    data = json.loads(value)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError('use a JSON object of tier -> limits, e.g. {"trial": "60/minute"}')
    return data


def _interval(value: str) -> float | None:
    if value.strip().lower() in ("off", "none", "never"):
        return None
    return float(value)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("use true or false")


#: variable -> (Credits option, or ``group.field`` of an option group; parser).
#: ``CREDIT_TRIAL_AMOUNT`` builds ``policy``.
VARIABLES: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    "CREDIT_DATABASE_URL": ("database_url", _text),
    "CREDIT_REDIS_URL": ("redis_url", _text),
    "CREDIT_JWT_SECRET": ("jwt_secret", _text),
    "CREDIT_JWKS_URL": ("jwks_url", _text),
    "CREDIT_JWT_ISSUER": ("jwt_issuer", _text),
    "CREDIT_JWT_AUDIENCE": ("jwt_audience", _text),
    "CREDIT_METER": ("meter", _list),
    "CREDIT_CALL_COST": ("cost", _decimal),
    "CREDIT_RATE_LIMIT": ("limits.default", _text),
    "CREDIT_TIERS": ("tiers", _tiers),
    "CREDIT_TRUSTED_PROXIES": ("trusted_proxies", _list),
    "CREDIT_TIMEOUT": ("timeout", _number),
    "CREDIT_HOLD_TIMEOUT": ("billing.hold_timeout", _number),
    "CREDIT_ON_LEDGER_ERROR": ("faults.on_ledger_error", _text),
    "CREDIT_ON_REDIS_ERROR": ("faults.on_redis_error", _text),
    "CREDIT_KEY_PREFIX": ("key_prefix", _text),
    "CREDIT_AUTO_MIGRATE": ("lifecycle.auto_migrate", _bool),
    "CREDIT_MAINTENANCE_INTERVAL": ("lifecycle.maintenance_interval", _interval),
    "CREDIT_TRIAL_AMOUNT": ("trial_amount", _decimal),
}


def _read(env: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """option -> (variable, value) for every variable set (an empty one counts as unset)."""
    read: dict[str, tuple[str, Any]] = {}
    for name, (option, parse) in VARIABLES.items():
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            read[option] = (name, parse(raw))
        except ValueError as exc:
            raise ConfigurationError(f"{name}={raw!r} cannot be used: {exc}") from None
    return read


def _groups(read: Mapping[str, tuple[str, Any]], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The option groups the variables fill in; a group given as an argument wins as a whole,
    a deprecated flat argument over its own field."""
    overridden = {RENAMED[k] for k in overrides if k in RENAMED}
    fields: dict[str, dict[str, tuple[str, Any]]] = {}
    for option, found in read.items():
        group, _, field = option.partition(".")
        if field and group not in overrides and (group, field) not in overridden:
            fields.setdefault(group, {})[field] = found
    built: dict[str, Any] = {}
    for group, values in fields.items():
        try:
            built[group] = GROUPS[group](**{f: value for f, (_, value) in values.items()})
        except ConfigurationError as exc:
            raise ConfigurationError(f"{sorted(v for v, _ in values.values())}: {exc}") from None
    return built


def from_env(environ: Mapping[str, str] | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Options from ``environ`` (default ``os.environ``); ``overrides`` win."""
    read = _read(os.environ if environ is None else environ)
    options = {option: value for option, (_, value) in read.items() if "." not in option}
    amount = options.pop("trial_amount", None)
    if amount is not None and "policy" not in overrides:
        options["policy"] = TrialPolicy(amount=amount)
    rate = read.get("limits.default")
    if rate is not None and "tiers" not in options and "tiers" not in overrides:
        options["tiers"] = {"trial": rate[1]}  # the trial tier follows CREDIT_RATE_LIMIT
    options.update(_groups(read, overrides))
    options.update(overrides)
    return options
