"""One configuration, built once and shared: the middleware, signup, the LiteLLM hook, the
admin app and the CLI all work from the same :class:`Credits`.

::

    credits = Credits.from_env(meter="/v1/*")           # CREDIT_DATABASE_URL, CREDIT_REDIS_URL, ...
    app = FastAPI(lifespan=credits.lifespan)
    app.add_middleware(CreditMiddleware, credits=credits)
    await credits.provision(user_id, email=email)        # e.g. in fastapi-users' on_after_register

Everything is checked here, when it is built: conflicting options, non-positive timeouts, short
JWT secrets and unusable URLs raise :class:`ConfigurationError` saying what to change, before
the app serves anything. Nothing connects until first use, and a database that is down at
startup delays nothing: the schema is migrated on first use, retried until it works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, Literal

from ._checks import check_objects, conflict, positive
from ._env import from_env
from ._redis import close_redis, redis_from_url
from .errors import BackendUnavailable, ConfigurationError
from .events import Observer, guarded
from .identity import ApiKeyLookup, Identity, IdentityResolver, TrustedProxies, default_resolver
from .ledger import Ledger
from .limits.ratelimit import DEFAULT_TIERS, RateLimiter, Strategy
from .ops.maintenance import Maintenance
from .pricing.priced import EXEMPT_ATTRIBUTE, Pricing
from .trials.locks import LocalLocks, ProvisionLocks, RedisLocks
from .trials.policy import TrialPolicy
from .trials.provisioning import Provisioner, ProvisionResult
from .trials.signup import SignupProvisioning, identity_for

__all__ = ["DEFAULT_LIMITS", "Credits"]

log = logging.getLogger("credit_middleware.credits")

DEFAULT_LIMITS = "60/minute;1000/day"
#: How long a fixed-price request's attempt owns its Idempotency-Key before a retry may take over
#: its charge, unless renewed while it runs (a held or handler-billed one: ``hold_timeout``).
FIXED_LEASE = 30.0


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background migration's failure as seen (the next ``ready`` retries it)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("migration failed: %r", task.exception())


class Credits:
    """The library's configuration and the objects built from it, shared by every layer.

    Give URLs (``database_url``, ``redis_url``; none → a SQLite file and in-memory limits) or
    built objects (``ledger``, ``provisioner``, ``rate_limiter``, ``redis``), not both for the
    same thing. ``meter`` names what is billed (``"/v1/*"``; see :class:`Pricing` for
    ``pricing=``), ``cost`` what a call costs. Identity: ``jwt_secret`` (HS256, at least 32
    bytes) or ``jwks_url``, with ``jwt_issuer``/``jwt_audience``; or ``resolver``.
    ``signup`` holds :class:`SignupProvisioning` options (``budget``, ``attempts``, ...).

    Owns what it builds: ``async with credits:`` or ``FastAPI(lifespan=credits.lifespan)``
    migrates (without failing when the database is down), keeps the ledger up every
    ``maintenance_interval`` seconds (purges expired idempotency records, rolls up the
    report's figures) and closes at the end; the middleware does the same through the app's
    lifespan, so either is enough.
    """

    def __init__(
        self,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        policy: TrialPolicy | None = None,
        tiers: Mapping[str, str] | None = None,
        default_limits: str | None = DEFAULT_LIMITS,
        pricing: Pricing | None = None,
        meter: str | Sequence[str] | None = None,
        cost: Decimal | int | str | None = None,
        jwt_secret: str | None = None,
        jwks_url: str | None = None,
        jwt_issuer: str | None = None,
        jwt_audience: str | None = None,
        api_key_lookup: ApiKeyLookup | None = None,
        trusted_proxies: Iterable[str] = (),
        user_header: str | None = None,
        resolver: IdentityResolver | None = None,
        strategy: Strategy = "moving-window",
        on_redis_error: Literal["local", "refuse"] = "local",
        on_ledger_error: Literal["refuse", "allow"] = "refuse",
        refund_on_error: bool = True,
        billable_statuses: Iterable[int] | None = None,
        idempotency_ttl: float = 86400.0,
        idempotency_lease: float | None = None,
        max_stored_body: int = 1 << 20,
        max_request_body: int = 10 << 20,
        legacy_headers: bool = False,
        balance_header: str = "Credit-Balance",
        key_prefix: str = "credit:",
        timeout: float = 3.0,
        hold_timeout: float = 300.0,
        auto_migrate: bool = True,
        maintenance_interval: float | None = 300.0,
        observer: Observer | None = None,
        ledger: Ledger | None = None,
        database: Any = None,
        provisioner: Provisioner | None = None,
        rate_limiter: RateLimiter | None = None,
        redis: Any = None,
        signup: Mapping[str, Any] | None = None,
    ) -> None:
        self.timeout = positive("timeout", timeout)
        self.hold_timeout = positive("hold_timeout", hold_timeout)
        if on_ledger_error not in ("refuse", "allow"):
            raise ConfigurationError("on_ledger_error must be 'refuse' or 'allow'")
        self.on_ledger_error = on_ledger_error
        self.refund_on_error = refund_on_error
        # Only what was served is billed: 2xx by default (not the app's 4xx, redirects, 5xx)
        statuses = range(200, 300) if billable_statuses is None else billable_statuses
        self.billable_statuses = frozenset(int(s) for s in statuses)
        if not self.billable_statuses or not all(100 <= s <= 599 for s in self.billable_statuses):
            raise ConfigurationError("billable_statuses must be HTTP statuses (100-599)")
        self.idempotency_ttl = positive("idempotency_ttl", idempotency_ttl)
        # how long an attempt may take before a retry with its key may take over its charge
        #: None: 30 s for a fixed-price call, ``hold_timeout`` for a held or handler-billed one
        self.idempotency_lease = (
            None if idempotency_lease is None else positive("idempotency_lease", idempotency_lease)
        )
        #: the leases a fixed-price and a held (or handler-billed) call's attempt gets
        self.leases = (
            self.idempotency_lease or FIXED_LEASE,
            self.idempotency_lease or max(self.hold_timeout, FIXED_LEASE),
        )
        if self.idempotency_ttl < max(self.leases):
            raise ConfigurationError(
                f"idempotency_ttl ({self.idempotency_ttl:g}s) is shorter than the idempotency"
                f" lease ({max(self.leases):g}s, from idempotency_lease or hold_timeout): a key"
                " forgotten while its first attempt may still run would bill its retry again;"
                " raise idempotency_ttl"
            )
        self.max_stored_body = int(positive("max_stored_body", max_stored_body, "bytes"))
        self.max_request_body = int(positive("max_request_body", max_request_body, "bytes"))
        self.legacy_headers = legacy_headers
        self.balance_header = balance_header
        self.auto_migrate = auto_migrate
        if maintenance_interval is not None:
            maintenance_interval = positive("maintenance_interval", maintenance_interval)
        #: seconds between rounds of upkeep in the lifespan (None: none; see ``Maintenance``)
        self.maintenance_interval = maintenance_interval
        #: The observer as given (what the admin dashboard reads); components get it guarded.
        self.observer_source = observer
        self.observer = guarded(observer)
        check_objects(database_url, database, ledger, provisioner, policy)

        if redis is not None and redis_url:
            raise conflict("give redis_url or redis (a client), not both")
        self._owns_redis = redis is None and bool(redis_url)
        self.redis = redis_from_url(redis_url, timeout=min(timeout, 1.0)) if redis_url else redis

        self.owns_ledger = ledger is None and provisioner is None
        if ledger is None:
            ledger = (
                provisioner.ledger
                if provisioner is not None
                else Ledger(database_url, database=database, timeout=timeout)
            )
        self.ledger = ledger
        if provisioner is None:
            locks: ProvisionLocks = (
                RedisLocks(self.redis, prefix=key_prefix + "lock:") if self.redis else LocalLocks()
            )
            provisioner = Provisioner(ledger, policy, locks=locks, observer=self.observer)
        else:
            provisioner.observer = guarded(provisioner.observer)  # an observer never raises
        self.provisioner = provisioner
        self.policy = provisioner.policy

        limits_given = (
            tiers is not None
            or default_limits != DEFAULT_LIMITS
            or strategy != "moving-window"
            or on_redis_error != "local"
        )
        if rate_limiter is not None and limits_given:
            raise conflict(
                "rate_limiter= is already configured: give tiers, default_limits, strategy and"
                " on_redis_error to RateLimiter(...), or drop rate_limiter="
            )
        #: The tiers rate limits are configured for (what an operator may choose).
        self.tier_names = tuple(DEFAULT_TIERS if tiers is None else tiers)
        self.limiter = rate_limiter or RateLimiter(
            tiers=DEFAULT_TIERS if tiers is None else tiers,
            default=default_limits,
            strategy=strategy,
            redis=self.redis,
            key_prefix=key_prefix + "rl",
            on_redis_error=on_redis_error,
            timeout=min(timeout, 1.0),
            observer=self.observer,
        )

        if pricing is not None and (meter is not None or cost is not None):
            raise conflict("pricing= already says what is metered: give meter/cost to Pricing")
        self.pricing = pricing or Pricing(
            meter=meter or (), default_cost=Decimal("0.001") if cost is None else cost
        )
        self.proxies = TrustedProxies(trusted_proxies)
        identity_options = {
            "jwt_secret": jwt_secret,
            "jwks_url": jwks_url,
            "jwt_issuer": jwt_issuer,
            "jwt_audience": jwt_audience,
            "api_key_lookup": api_key_lookup,
            "user_header": user_header,
        }
        given = sorted(k for k, v in identity_options.items() if v is not None)
        if resolver is not None and given:
            raise conflict(f"resolver= decides the identity: drop {given}, or drop resolver=")
        if (jwt_issuer or jwt_audience) and not (jwt_secret or jwks_url):
            raise conflict("jwt_issuer/jwt_audience need jwt_secret or jwks_url")
        self.resolver = resolver or default_resolver(
            jwt_secret=jwt_secret,
            jwks_url=jwks_url,
            issuer=jwt_issuer,
            audience=jwt_audience,
            api_key_lookup=api_key_lookup,
            proxies=self.proxies,
            user_header=user_header,
        )
        self.signup = SignupProvisioning(
            self.provisioner, prepare=self.ready, proxies=self.proxies, **dict(signup or {})
        )
        self.maintenance = (
            Maintenance(ledger, maintenance_interval) if maintenance_interval is not None else None
        )
        self._users = 0
        self._migrated = not auto_migrate
        self._migration: asyncio.Future[Any] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Credits:
        """Built from the ``CREDIT_*`` environment variables (see ``_env.VARIABLES``);
        keyword arguments win over the environment."""
        return cls(**from_env(environ, overrides))

    # ------------------------------------------------------------------ lifespan

    @property
    def migrated(self) -> bool:
        """Whether the schema is known to be up to date."""
        return self._migrated

    async def ready(self) -> None:
        """Migrate the schema once (nothing to do afterwards). Waits at most ``timeout``: a
        migration still running then goes on by itself, and this raises
        :class:`BackendUnavailable`; a failed one is tried again on the next call."""
        if self._migrated:
            return
        if self._migration is None or (self._migration.done() and not self._migrated):
            self._migration = asyncio.ensure_future(self._migrate())
            self._migration.add_done_callback(_retrieve)
        done, _ = await asyncio.wait((self._migration,), timeout=self.timeout)
        if not done:
            raise BackendUnavailable("database", f"migration did not finish in {self.timeout}s")
        self._migration.result()

    async def _migrate(self) -> None:
        await self.ledger.migrate()
        self._migrated = True

    async def start(self) -> None:
        """Begin a use (an app's lifespan): reopen what a previous use closed and migrate,
        logging, not failing, when the database is unreachable (first use migrates then)."""
        self._users += 1
        if self._users == 1 and self.owns_ledger:
            self.ledger.reopen()
        if self._users == 1 and self.maintenance is not None:
            self.maintenance.start()
        try:
            await self.ready()
        except Exception as exc:  # a database down at startup must not stop the app
            log.warning("credit ledger not ready at startup (%r); migrating on first use", exc)

    async def stop(self) -> None:
        """End a use; the last one closes what this object built."""
        self._users = max(0, self._users - 1)
        if self._users == 0:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop background signup retries and close what this object built (never objects
        passed in). A later :meth:`start` opens them again."""
        await self.signup.aclose()
        if self.maintenance is not None:
            await self.maintenance.stop()
        if self._migration is not None and not self._migration.done():
            self._migration.cancel()
        self._migration = None
        closers: list[Any] = []
        if self.owns_ledger:
            closers.append(self.ledger.close())
        if self._owns_redis and self.redis is not None:
            closers.append(close_redis(self.redis))
        for close in closers:
            try:
                await close
            except Exception:  # closing is best effort
                log.debug("error while closing", exc_info=True)

    async def __aenter__(self) -> Credits:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """For ``Starlette(lifespan=credits.lifespan)`` / ``FastAPI(lifespan=...)``."""
        async with self:
            yield

    # ------------------------------------------------------------------ layers

    async def provision(
        self,
        user: Identity | str | int | Any,
        *,
        email: str | None = None,
        email_verified: bool | None = None,
        tier: str | None = None,
        request: Any = None,
        client_ip: str | None = None,
    ) -> ProvisionResult | None:
        """Provision a new user eagerly (signup), within the signup budget and retried in
        the background; never raises. ``user`` is an id (``str``, ``int``, ``UUID``) or an
        :class:`Identity`; ``request`` gives the client address (through the trusted
        proxies) for the per-IP trial cap. None when it finished later, failed or was left to
        a later layer (the middleware catches such users on their first request)."""
        try:
            ident = identity_for(
                user,
                email=email,
                email_verified=email_verified,
                tier=tier,
                client_ip=client_ip,
                request=request,
                proxies=self.proxies,
            )
        except Exception:  # the app's user is odd: its registration must not fail for it
            log.exception("credits.provision: unusable user %r; left to the first request", user)
            return None
        return await self.signup.provision(ident)

    def admin(self, **options: Any) -> Any:
        """The admin app on this ledger (``token=`` or ``authorize=``, as ``admin_app``; its
        tier choices are this configuration's tiers), exempt from billing wherever it is
        mounted: ``app.mount("/admin", credits.admin(token=ADMIN_TOKEN))``."""
        from .admin import admin_app

        refusals = (
            self.observer_source if hasattr(self.observer_source, "recent_refusals") else None
        )
        options.setdefault("refusals", refusals)
        options.setdefault("prepare", self.ready)  # migrated before it serves, lifespan or not
        app = admin_app(self.ledger, **options)
        setattr(app, EXEMPT_ATTRIBUTE, True)
        return app

    def proxy_hook(self, **options: Any) -> Any:
        """A LiteLLM proxy callback (``CreditProxyHook``) on this configuration."""
        from .integrations.litellm.proxy import CreditProxyHook

        return CreditProxyHook(self.provisioner, **options)

    def llm(self, **options: Any) -> Any:
        """A ``CreditedLLM`` (the failsafe layer for LLM calls) on this configuration."""
        from .integrations.litellm.llm import CreditedLLM

        return CreditedLLM(self.provisioner, **options)
