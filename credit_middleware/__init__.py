"""credit-middleware: trial credits exactly once, rate limits and exact billing for ASGI apps."""

from __future__ import annotations

import logging

# What an application needs is in __all__; the other names stay importable from here (they
# were public before) but live in their modules (credit_middleware.locks, ...).
from ._redis import close_redis as close_redis
from ._redis import redis_from_url as redis_from_url
from .abuse import IP_TRIAL_LIMIT, TrialIpCap
from .credits import Credits
from .errors import (
    AccountNotFound,
    BackendUnavailable,
    ConfigurationError,
    CreditError,
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAccountId,
    InvalidAmount,
    LedgerError,
    RateLimited,
)
from .events import Observer
from .identity import ApiKeyResolver as ApiKeyResolver
from .identity import ChainResolver as ChainResolver
from .identity import HeaderResolver as HeaderResolver
from .identity import Identity, InvalidCredentials
from .identity import ScopeUserResolver as ScopeUserResolver
from .identity import TrustedProxies as TrustedProxies
from .jwt_auth import JWTResolver
from .ledger import Account, Balance, Entry, Grant, Hold, Ledger, Receipt, VerifyReport
from .locks import LocalLocks as LocalLocks
from .locks import RedisLocks as RedisLocks
from .middleware import FINAL_COST_STATE, CreditMiddleware
from .policy import TrialDecision as TrialDecision
from .policy import TrialPolicy
from .pricing import DEFAULT_EXEMPT, PricedRoute, Pricing, priced
from .provisioning import Provisioner, ProvisionResult
from .ratelimit import RateLimiter as RateLimiter
from .report import Report as Report
from .report import build_report as build_report
from .report import render_text as render_text
from .signup import SignupProvisioning as SignupProvisioning
from .signup import provision as provision
from .signup import provision_credits

__version__ = "0.1.0"

# Silent unless the application configures logging; account ids are logged only at DEBUG.
logging.getLogger("credit_middleware").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_EXEMPT",
    "FINAL_COST_STATE",
    "IP_TRIAL_LIMIT",
    "Account",
    "AccountNotFound",
    "BackendUnavailable",
    "Balance",
    "ConfigurationError",
    "CreditError",
    "CreditMiddleware",
    "Credits",
    "Entry",
    "Grant",
    "Hold",
    "HoldNotActive",
    "HoldNotFound",
    "IdempotencyConflict",
    "Identity",
    "InsufficientCredits",
    "InvalidAccountId",
    "InvalidAmount",
    "InvalidCredentials",
    "JWTResolver",
    "Ledger",
    "LedgerError",
    "Observer",
    "PricedRoute",
    "Pricing",
    "ProvisionResult",
    "Provisioner",
    "RateLimited",
    "Receipt",
    "TrialIpCap",
    "TrialPolicy",
    "VerifyReport",
    "priced",
    "provision_credits",
]
