"""One resolved configuration: what :class:`~credit_middleware.Credits` was given, with every
default filled in and checked across groups, read by every part it builds or hands out (the
middleware, signup, the LiteLLM proxy hook, ``CreditedLLM``, the admin app, the upkeep), so no
option is dropped on the way to one of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from .groups import Billing, Faults, Headers, Idempotency, Lifecycle, Limits, positive

__all__ = ["FIXED_LEASE", "Config"]

#: How long a fixed-price request's attempt owns its Idempotency-Key before a retry may take over
#: its charge, unless renewed while it runs (a held or handler-billed one: ``hold_timeout``).
FIXED_LEASE = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    """Every option of a :class:`~credit_middleware.Credits`, resolved (``credits.config``).

    ``timeout`` bounds every backend call's wait (seconds); ``key_prefix`` starts every Redis
    key; ``tiers`` names the tiers rate limits are configured for (what an operator may
    choose); the groups hold the rest.
    """

    timeout: float = 3.0
    key_prefix: str = "credit:"
    tiers: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    faults: Faults = field(default_factory=Faults)
    billing: Billing = field(default_factory=Billing)
    idempotency: Idempotency = field(default_factory=Idempotency)
    headers: Headers = field(default_factory=Headers)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeout", positive("timeout", self.timeout))
        if not isinstance(self.key_prefix, str):
            raise ConfigurationError(f"key_prefix must be text, not {self.key_prefix!r}")
        longest = max(self.leases)
        if self.idempotency.ttl < longest:
            raise ConfigurationError(
                f"idempotency_ttl ({self.idempotency.ttl:g}s) is shorter than the idempotency"
                f" lease ({longest:g}s, from idempotency_lease or hold_timeout): a key"
                " forgotten while its first attempt may still run would bill its retry again;"
                " raise Idempotency(ttl=...)"
            )

    @property
    def leases(self) -> tuple[float, float]:
        """The leases a fixed-price and a held (or handler-billed) call's attempt get."""
        lease = self.idempotency.lease
        return (lease or FIXED_LEASE, lease or max(self.billing.hold_timeout, FIXED_LEASE))

    @property
    def backend_timeout(self) -> float:
        """The bound on a Redis round trip (rate limits, locks): at most a second."""
        return min(self.timeout, 1.0)

    def llm_options(self) -> dict[str, Any]:
        """The options of a ``CreditedLLM`` built on this configuration."""
        return {"hold_timeout": self.billing.hold_timeout}

    def proxy_hook_options(self) -> dict[str, Any]:
        """The options of a LiteLLM ``CreditProxyHook`` built on this configuration."""
        return {
            **self.llm_options(),
            "balance_header": self.headers.balance,
            "auto_migrate": self.lifecycle.auto_migrate,
        }
