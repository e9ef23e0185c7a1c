"""``Credits``' options beyond the handful almost everyone sets, grouped: :class:`Limits`,
:class:`Faults`, :class:`Billing`, :class:`Idempotency`, :class:`Headers`, :class:`Lifecycle`;
and :class:`Config`, all of them resolved (``credits.config``), which every part reads."""

from .groups import DEFAULT_LIMITS, Billing, Faults, Headers, Idempotency, Lifecycle, Limits
from .resolved import FIXED_LEASE, Config

__all__ = [
    "DEFAULT_LIMITS",
    "FIXED_LEASE",
    "Billing",
    "Config",
    "Faults",
    "Headers",
    "Idempotency",
    "Lifecycle",
    "Limits",
]
