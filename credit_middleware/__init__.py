"""credit-middleware: trial credits exactly once, rate limits and exact billing for ASGI apps."""

from __future__ import annotations

import logging

from ._redis import close_redis, redis_from_url
from .abuse import IP_TRIAL_LIMIT, TrialIpCap
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
from .identity import (
    ApiKeyResolver,
    ChainResolver,
    HeaderResolver,
    Identity,
    InvalidCredentials,
    ScopeUserResolver,
    TrustedProxies,
)
from .jwt_auth import JWTResolver
from .ledger import Account, Balance, Entry, Grant, Hold, Ledger, Receipt, VerifyReport
from .locks import LocalLocks, RedisLocks
from .middleware import FINAL_COST_STATE, CreditMiddleware
from .policy import TrialDecision, TrialPolicy
from .pricing import PricedRoute, Pricing
from .provisioning import Provisioner, ProvisionResult
from .ratelimit import RateLimiter
from .report import Report, build_report, render_text
from .signup import SignupProvisioning, provision, provision_credits

__version__ = "0.1.0"

# Silent unless the application configures logging; account ids are logged only at DEBUG.
logging.getLogger("credit_middleware").addHandler(logging.NullHandler())

__all__ = [
    "FINAL_COST_STATE",
    "IP_TRIAL_LIMIT",
    "Account",
    "AccountNotFound",
    "ApiKeyResolver",
    "BackendUnavailable",
    "Balance",
    "ChainResolver",
    "ConfigurationError",
    "CreditError",
    "CreditMiddleware",
    "Entry",
    "Grant",
    "HeaderResolver",
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
    "LocalLocks",
    "Observer",
    "PricedRoute",
    "Pricing",
    "ProvisionResult",
    "Provisioner",
    "RateLimited",
    "RateLimiter",
    "Receipt",
    "RedisLocks",
    "Report",
    "ScopeUserResolver",
    "SignupProvisioning",
    "TrialDecision",
    "TrialIpCap",
    "TrialPolicy",
    "TrustedProxies",
    "VerifyReport",
    "build_report",
    "close_redis",
    "provision",
    "provision_credits",
    "redis_from_url",
    "render_text",
]
