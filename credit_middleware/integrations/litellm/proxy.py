"""A LiteLLM proxy callback that bills every proxied call to a credit account.

In the proxy's ``config.yaml``::

    litellm_settings:
      callbacks: credit_hooks.credits   # credits = CreditProxyHook.from_url(...)

Deny by default: before each call (``async_pre_call_hook``) the call type must be one this
hook meters (chat, text, embeddings, responses, Anthropic messages, images, transcription,
speech, rerank, moderation) or one the operator listed in ``free_call_types``; anything else,
a type LiteLLM adds later included, is refused. A metered call's worst case is priced from
LiteLLM's price data (or the deployment's own prices) for every deployment the router may send
it to, its fallbacks' included, and the dearest is held; a caller who can't cover it gets a 402
before any provider call, and a deployment nothing prices is refused (400), never served free.
After it, ``async_log_success_event`` captures the cost of the deployment that answered, and
the hold is released when the request fails; a stream that ends early is charged for what it
generated. Captures and releases the ledger cannot take now are kept and land later; a hold the
proxy never settles (a crash) is released by its timeout. Ledger faults answer 503 with
``Retry-After``, never a 500.
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from ...errors import BackendUnavailable, ConfigurationError, CreditError, InsufficientCredits
from ...identity.resolvers import Identity
from ...ledger import Ledger
from ...ledger.schema import migrations
from ...trials.policy import TrialPolicy
from ...trials.provisioning import Provisioner
from .gate import dearest, gate, twins
from .meter import Meter
from .refusals import CreditRefusal, Identify, end_user, in_proxy, key_owner
from .routes import proxy_router
from .settle import ProxySettlement

__all__ = ["CreditProxyHook", "CreditRefusal", "end_user", "key_owner"]

log = logging.getLogger("credit_middleware.litellm")


class CreditProxyHook(ProxySettlement):
    """Ensure + hold before each proxied call, capture or release after it; refuse the rest.

    Options as for :class:`~credit_middleware.integrations.litellm.CreditedLLM`, plus
    ``identify(user_api_key_dict, data)`` choosing the payer (default :func:`key_owner`);
    ``router``, the ``litellm.Router`` whose deployments and fallbacks price a call (default:
    the proxy's);
    ``unowned_account``, the account billed for keys that name no user (master key included),
    which are refused with 401 without it; ``free_call_types``, call types served without
    billing (e.g. ``{"afile_list"}``); ``unknown_call_types`` (``"refuse"``, or ``"free"`` to
    serve call types this library does not know unbilled); ``max_audio_seconds``, the audio
    length a transcription hold covers when the file's own length cannot be read, and the
    most a speech hold assumes; ``auto_migrate`` (create the ledger's schema
    on first use instead of refusing with 503); ``retry_after`` (seconds, on a 503) and
    ``balance_header`` (the remaining-credit response header).
    """

    def __init__(
        self,
        provisioner: Provisioner,
        *,
        identify: Identify = key_owner,
        router: Any = None,
        unowned_account: str | None = None,
        free_call_types: Iterable[str] = (),
        unknown_call_types: Literal["refuse", "free"] = "refuse",
        max_audio_seconds: int = 3600,
        auto_migrate: bool = False,
        retry_after: int = 5,
        price_multipliers: Mapping[str, Decimal] | None = None,
        default_max_tokens: int = 4096,
        hold_timeout: float = 600.0,
        unknown_model_price: Decimal | None = None,
        credits_per_usd: Decimal = Decimal(1),
        balance_header: str = "Credit-Balance",
    ) -> None:
        super().__init__()  # the settlement's state: the open holds by call id
        if unknown_call_types not in ("refuse", "free"):
            raise ConfigurationError("unknown_call_types must be 'refuse' or 'free'")
        if isinstance(free_call_types, str):
            raise ConfigurationError("free_call_types must be a collection of call types")
        if not isinstance(max_audio_seconds, int) or not 0 < max_audio_seconds <= 86400:
            raise ConfigurationError("max_audio_seconds must be an int between 1 and 86400")
        if not isinstance(retry_after, int) or not 0 < retry_after <= 3600:
            raise ConfigurationError("retry_after must be an int between 1 and 3600 seconds")
        self.meter = Meter(
            provisioner,
            price_multipliers=price_multipliers,
            default_max_tokens=default_max_tokens,
            hold_timeout=hold_timeout,
            unknown_model_price=unknown_model_price,
            credits_per_usd=credits_per_usd,
        )
        self.identify = identify
        self.router = router
        self.unowned_account = unowned_account
        self.free_call_types = twins(free_call_types)
        self.unknown_call_types = unknown_call_types
        self.max_audio_seconds = max_audio_seconds
        self.auto_migrate = auto_migrate
        self.retry_after = retry_after
        self.balance_header = balance_header
        self._schema_ok = False
        self._owned: tuple[Ledger | None, Any] = (None, None)  # what from_url() built
        self._warned_outside = False

    @classmethod
    def from_url(
        cls,
        database_url: str,
        *,
        redis_url: str | None = None,
        key_prefix: str = "credit:",
        policy: TrialPolicy | None = None,
        **options: Any,
    ) -> CreditProxyHook:
        """A hook on its own ledger; with ``redis_url``, first calls of a new user from many
        proxy workers provision under one Redis lock (as the middleware's ``redis_url``)."""
        from ...trials.locks import RedisLocks

        locks, client = None, None
        if redis_url:
            from ..._redis import redis_from_url

            client = redis_from_url(redis_url)
            locks = RedisLocks(client, prefix=key_prefix + "lock:")
        hook = cls(Provisioner(Ledger(database_url), policy, locks=locks), **options)
        hook._owned = (hook.meter.ledger, client)
        return hook

    # ------------------------------------------------------------------ before the call

    def _unavailable(self, message: str) -> CreditRefusal:
        headers = {"Retry-After": str(self.retry_after)}
        return CreditRefusal(503, "credits_unavailable", message, headers=headers)

    async def _ensure_schema(self) -> None:
        if self._schema_ok:
            return
        ledger = self.meter.ledger
        dialect: Literal["postgresql", "sqlite"] = (
            "postgresql" if ledger.dialect == "postgresql" else "sqlite"
        )
        latest = max(v for v, _, _ in migrations(dialect))
        try:
            if await ledger.schema_version() < latest:
                if not self.auto_migrate:
                    log.error("the credit ledger is not migrated: run `credit-middleware migrate`")
                    raise self._unavailable(
                        "the credit ledger is not set up (its schema is missing or old);"
                        " the operator must run `credit-middleware migrate`"
                    )
                await ledger.migrate()
        except BackendUnavailable as exc:
            raise self._unavailable(f"credit ledger unavailable: {exc.detail}") from None
        self._schema_ok = True

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any] | None:
        name = str(getattr(call_type, "value", call_type))  # a CallTypes or a str
        try:
            return await self._hold(user_api_key_dict, data, name)
        except CreditRefusal as refusal:
            raise refusal.for_route(name) from None

    async def _hold(
        self, user_api_key_dict: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any] | None:
        kind = gate(call_type, data, free=self.free_call_types, unknown=self.unknown_call_types)
        if kind is None:
            return data
        await self._ensure_schema()
        try:
            who = self.identify(user_api_key_dict, data)
        except CreditError as exc:
            raise CreditRefusal(400, "invalid_account", str(exc)) from None
        if who is None and self.unowned_account is not None:
            who = Identity(self.unowned_account, source="litellm")
        if who is None:
            raise CreditRefusal(401, "no_credit_account", "this key names no user to bill")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise CreditRefusal(400, "invalid_request", "a billed call needs a model")
        request_id = data.get("litellm_call_id")
        if not isinstance(request_id, str) or not request_id:
            request_id = data["litellm_call_id"] = str(uuid.uuid4())
        if self._open(request_id):
            raise CreditRefusal(
                409,
                "call_id_in_use",
                f"a call with id {request_id!r} (x-litellm-call-id) is already in flight",
            )
        worst, priced = dearest(  # refuses what nothing prices
            self.meter,
            self.router or proxy_router(),
            kind,
            model,
            data,
            max_audio_seconds=self.max_audio_seconds,
        )
        try:
            call = await self.meter.begin(
                who,
                model=priced.model,
                prompt_tokens=worst.prompt_tokens,
                max_tokens=worst.max_tokens,
                request_id=request_id,
                pricing=priced.pricing,
                estimate=(worst.usd, worst.source),
                kind=kind,
                basis=worst.basis,
            )
        except InsufficientCredits as exc:
            raise CreditRefusal(
                402,
                "insufficient_credits",
                f"not enough credits for this call: {exc.required} needed, {exc.available}"
                " available",
                required=exc.required,
                available=exc.available,
                tier=exc.tier,
            ) from None
        except BackendUnavailable as exc:
            raise self._unavailable(f"credit ledger unavailable: {exc.detail}") from None
        except CreditError as exc:
            raise CreditRefusal(400, "invalid_account", str(exc)) from None
        except Exception as exc:  # a fault of the ledger's database: never a 500
            log.exception("holding credits for proxied call %s failed", request_id)
            raise self._unavailable(f"credit ledger failed: {type(exc).__name__}") from None
        self._remember(request_id, call)
        for field in ("metadata", "litellm_metadata"):
            metadata = data.get(field)
            if isinstance(metadata, dict):
                metadata["credit_account_id"] = call.account_id
                metadata["credit_hold_id"] = call.hold_id
        return data

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: dict[str, Any]) -> None:
        """Outside the proxy nothing calls the pre-call hook, so nothing would be billed: say
        so loudly instead (in code, use ``CreditedLLM``)."""
        call_id = kwargs.get("litellm_call_id")
        if in_proxy() or (isinstance(call_id, str) and call_id in self._calls):
            return
        if not self._warned_outside:
            self._warned_outside = True
            message = (
                "CreditProxyHook bills only calls made through the LiteLLM proxy; this call"
                " (litellm.callbacks outside the proxy) is NOT billed: use CreditedLLM in code"
            )
            log.error(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    async def drain(self) -> None:
        """Wait for settlements still running in the background."""
        await self.meter.drain()

    async def aclose(self) -> None:
        """Finish settlements, then close the ledger and Redis client ``from_url()`` built."""
        await self.drain()
        await self.meter.outbox.close()
        ledger, client = self._owned
        if ledger is not None:
            await ledger.close()
        if client is not None:
            from ..._redis import close_redis

            await close_redis(client)
