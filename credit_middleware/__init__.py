"""credit-middleware: trial credits exactly once, rate limits and exact billing for ASGI apps."""

from __future__ import annotations

import logging

# What an application needs is in __all__; the other names stay importable from here (they
# were public before) but live in their modules (credit_middleware.locks, ...).
from ._redis import close_redis as close_redis
from ._redis import redis_from_url as redis_from_url
from ._version import __version__ as __version__
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
from .http.middleware import FINAL_COST_STATE, CreditMiddleware
from .identity.jwt import JWTResolver
from .identity.resolvers import ApiKeyResolver as ApiKeyResolver
from .identity.resolvers import ChainResolver as ChainResolver
from .identity.resolvers import HeaderResolver as HeaderResolver
from .identity.resolvers import Identity, InvalidCredentials
from .identity.resolvers import ScopeUserResolver as ScopeUserResolver
from .identity.resolvers import TrustedProxies as TrustedProxies
from .ledger import Account, Balance, Entry, Grant, Hold, Ledger, Receipt, VerifyReport
from .limits.ratelimit import RateLimiter as RateLimiter
from .ops.report import Report as Report
from .ops.report import build_report as build_report
from .ops.report import render_text as render_text
from .pricing.priced import DEFAULT_EXEMPT, PricedRoute, Pricing, priced
from .trials.abuse import IP_TRIAL_LIMIT, TrialIpCap
from .trials.locks import LocalLocks as LocalLocks
from .trials.locks import RedisLocks as RedisLocks
from .trials.policy import TrialDecision as TrialDecision
from .trials.policy import TrialPolicy
from .trials.provisioning import Provisioner, ProvisionResult
from .trials.signup import SignupProvisioning as SignupProvisioning
from .trials.signup import provision as provision
from .trials.signup import provision_credits

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
