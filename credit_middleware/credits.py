"""One configuration, built once and shared: the middleware, signup, the LiteLLM hook, the
admin app and the CLI all work from the same :class:`Credits`.

::

    credits = Credits.from_env(meter="/v1/*")           # CREDIT_DATABASE_URL, CREDIT_REDIS_URL, ...
    app = FastAPI(lifespan=credits.lifespan)
    app.add_middleware(CreditMiddleware, credits=credits)
    await credits.provision(user_id, email=email)        # e.g. in fastapi-users' on_after_register

The options almost everyone sets are keywords; the rest come grouped (``faults=Faults(...)``,
see :mod:`credit_middleware.config`), and all of them are resolved into one ``credits.config``
that every part reads. Everything is checked when it is built (each group by itself, the rest
here): conflicting options, non-positive timeouts, short JWT secrets and unusable URLs raise
:class:`ConfigurationError` saying what to change, before the app serves anything. Nothing
connects until first use, and a database that is down at startup delays nothing: the schema is
migrated on first use, retried until it works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from ._checks import check_identity, check_objects, conflict
from ._env import from_env
from ._redis import close_redis, redis_from_url
from .config import DEFAULT_LIMITS, FIXED_LEASE, Config
from .config.groups import Billing, Faults, Headers, Idempotency, Lifecycle, Limits
from .config.legacy import fold
from .errors import BackendUnavailable
from .events import Observer, guarded
from .identity import ApiKeyLookup, Identity, IdentityResolver, TrustedProxies, default_resolver
from .ledger import Ledger
from .limits.ratelimit import DEFAULT_TIERS, RateLimiter
from .ops.maintenance import Maintenance
from .pricing.priced import EXEMPT_ATTRIBUTE, Pricing
from .trials.locks import LocalLocks, ProvisionLocks, RedisLocks
from .trials.policy import TrialPolicy
from .trials.provisioning import Provisioner, ProvisionResult
from .trials.signup import SignupProvisioning, identity_for

__all__ = ["DEFAULT_LIMITS", "FIXED_LEASE", "Credits"]

log = logging.getLogger("credit_middleware.credits")


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background migration's failure as seen (the next ``ready`` retries it)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("migration failed: %r", task.exception())


def _pricing(
    given: Pricing | None, meter: str | Sequence[str] | None, cost: Decimal | int | str | None
) -> Pricing:
    if given is None:
        return Pricing(meter=meter or (), default_cost=Decimal("0.001") if cost is None else cost)
    if meter is not None or cost is not None:
        raise conflict("pricing= already says what is metered: give meter/cost to Pricing")
    return given


class Credits:
    """The library's configuration and the objects built from it, shared by every layer.

    The options almost everyone sets are keywords: give URLs (``database_url``, ``redis_url``
    and its ``key_prefix``; none → a SQLite file and in-memory limits) or built objects
    (``ledger``, ``provisioner``, ``rate_limiter``, ``redis``), not both for the same thing.
    ``meter`` names what is billed (``"/v1/*"``; see :class:`Pricing` for ``pricing=``),
    ``cost`` what a call costs; ``tiers`` the rate limits per tier; ``policy`` the trial.
    Identity: ``jwt_secret`` (HS256, at least 32 bytes) or ``jwks_url``, with
    ``jwt_issuer``/``jwt_audience``; or ``resolver``. ``timeout`` bounds every backend wait.
    ``signup`` holds :class:`SignupProvisioning` options (``budget``, ``attempts``, ...).
    The rest comes in groups from :mod:`credit_middleware.config` (``limits=Limits(...)``,
    ``faults=``, ``billing=``, ``idempotency=``, ``headers=``, ``lifecycle=``), all of it
    resolved in :attr:`config`, which every part built here reads.

    Owns what it builds: ``async with credits:`` or ``FastAPI(lifespan=credits.lifespan)``
    migrates (without failing when the database is down), keeps the ledger up every
    ``Lifecycle.maintenance_interval`` seconds (purges expired idempotency records, rolls up
    the report's figures) and closes at the end; the middleware does the same through the
    app's lifespan, so either is enough.
    """

    def __init__(
        self,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        key_prefix: str = "credit:",
        meter: str | Sequence[str] | None = None,
        cost: Decimal | int | str | None = None,
        pricing: Pricing | None = None,
        tiers: Mapping[str, str] | None = None,
        policy: TrialPolicy | None = None,
        jwt_secret: str | None = None,
        jwks_url: str | None = None,
        jwt_issuer: str | None = None,
        jwt_audience: str | None = None,
        api_key_lookup: ApiKeyLookup | None = None,
        trusted_proxies: Iterable[str] = (),
        user_header: str | None = None,
        resolver: IdentityResolver | None = None,
        timeout: float = 3.0,
        limits: Limits | None = None,
        faults: Faults | None = None,
        billing: Billing | None = None,
        idempotency: Idempotency | None = None,
        headers: Headers | None = None,
        lifecycle: Lifecycle | None = None,
        signup: Mapping[str, Any] | None = None,
        observer: Observer | None = None,
        ledger: Ledger | None = None,
        database: Any = None,
        provisioner: Provisioner | None = None,
        rate_limiter: RateLimiter | None = None,
        redis: Any = None,
        **deprecated: Any,
    ) -> None:
        groups = fold(
            {
                "limits": limits,
                "faults": faults,
                "billing": billing,
                "idempotency": idempotency,
                "headers": headers,
                "lifecycle": lifecycle,
            },
            deprecated,
            stacklevel=2,
        )
        #: every option, resolved: what each part built or handed out here reads
        self.config = config = Config(
            timeout=timeout,
            key_prefix=key_prefix,
            tiers=tuple(DEFAULT_TIERS if tiers is None else tiers),
            **{name: group for name, group in groups.items() if group is not None},
        )
        #: The observer as given (what the admin dashboard reads); components get it guarded.
        self.observer_source = observer
        self.observer = guarded(observer)
        check_objects(database_url, database, ledger, provisioner, policy)
        self.redis = self._redis(redis_url, redis)
        self.owns_ledger = ledger is None and provisioner is None
        self.provisioner = self._provisioner(provisioner, ledger, database_url, database, policy)
        self.ledger = self.provisioner.ledger
        self.policy = self.provisioner.policy
        limits_given = tiers is not None or groups["limits"] is not None
        self.limiter = self._limiter(rate_limiter, tiers, limits_given)
        self.pricing = _pricing(pricing, meter, cost)
        self.proxies = TrustedProxies(trusted_proxies)
        self.resolver = self._resolver(
            resolver,
            jwt_secret=jwt_secret,
            jwks_url=jwks_url,
            jwt_issuer=jwt_issuer,
            jwt_audience=jwt_audience,
            api_key_lookup=api_key_lookup,
            user_header=user_header,
        )
        self.signup = SignupProvisioning(
            self.provisioner, prepare=self.ready, proxies=self.proxies, **dict(signup or {})
        )
        interval = config.lifecycle.maintenance_interval
        self.maintenance = Maintenance(self.ledger, interval) if interval is not None else None
        self._users = 0
        self._migrated = not config.lifecycle.auto_migrate
        self._migration: asyncio.Future[Any] | None = None

    def _provisioner(
        self,
        given: Provisioner | None,
        ledger: Ledger | None,
        database_url: str | None,
        database: Any,
        policy: TrialPolicy | None,
    ) -> Provisioner:
        if given is not None:
            given.observer = guarded(given.observer)  # an observer never raises
            return given
        if ledger is None:
            ledger = Ledger(database_url, database=database, timeout=self.config.timeout)
        locks: ProvisionLocks = (
            RedisLocks(self.redis, prefix=self.config.key_prefix + "lock:")
            if self.redis
            else LocalLocks()
        )
        return Provisioner(ledger, policy, locks=locks, observer=self.observer)

    def _redis(self, redis_url: str | None, given: Any) -> Any:
        if given is not None and redis_url:
            raise conflict("give redis_url or redis (a client), not both")
        self._owns_redis = given is None and bool(redis_url)
        if not redis_url:
            return given
        return redis_from_url(redis_url, timeout=self.config.backend_timeout)

    def _limiter(
        self, given: RateLimiter | None, tiers: Mapping[str, str] | None, limits_given: bool
    ) -> RateLimiter:
        config = self.config
        if given is not None:
            if limits_given or config.faults.on_redis_error != "local":
                raise conflict(
                    "rate_limiter= is already configured: give tiers, limits and on_redis_error"
                    " to RateLimiter(...), or drop rate_limiter="
                )
            return given
        return RateLimiter(
            tiers=DEFAULT_TIERS if tiers is None else tiers,
            default=config.limits.default,
            strategy=config.limits.strategy,
            redis=self.redis,
            key_prefix=config.key_prefix + "rl",
            on_redis_error=config.faults.on_redis_error,
            timeout=config.backend_timeout,
            observer=self.observer,
        )

    def _resolver(self, given: IdentityResolver | None, **identity: Any) -> IdentityResolver:
        check_identity(identity, given)
        if given is not None:
            return given
        return default_resolver(
            jwt_secret=identity["jwt_secret"],
            jwks_url=identity["jwks_url"],
            issuer=identity["jwt_issuer"],
            audience=identity["jwt_audience"],
            api_key_lookup=identity["api_key_lookup"],
            proxies=self.proxies,
            user_header=identity["user_header"],
        )

    @property
    def timeout(self) -> float:
        """Every backend call's bound, in seconds (``config.timeout``)."""
        return self.config.timeout

    @property
    def tier_names(self) -> tuple[str, ...]:
        """The tiers rate limits are configured for (what an operator may choose)."""
        return self.config.tiers

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
        options.setdefault("tiers", self.config.tiers)  # the tiers an operator may choose
        options.setdefault("prepare", self.ready)  # migrated before it serves, lifespan or not
        app = admin_app(self.ledger, **options)
        setattr(app, EXEMPT_ATTRIBUTE, True)
        return app

    def proxy_hook(self, **options: Any) -> Any:
        """A LiteLLM proxy callback (``CreditProxyHook``) on this configuration: its ledger,
        provisioning, hold timeout, balance header and migration; ``options`` add to them."""
        from .integrations.litellm.proxy import CreditProxyHook

        return CreditProxyHook(self.provisioner, **{**self.config.proxy_hook_options(), **options})

    def llm(self, **options: Any) -> Any:
        """A ``CreditedLLM`` (the failsafe layer for LLM calls) on this configuration: its
        ledger, provisioning and hold timeout; ``options`` add to them."""
        from .integrations.litellm.llm import CreditedLLM

        return CreditedLLM(self.provisioner, **{**self.config.llm_options(), **options})
