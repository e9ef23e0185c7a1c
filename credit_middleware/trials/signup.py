"""Eager provisioning at signup: ``@provision_credits`` on the registration handler.

Registration never fails, and never waits longer than a small budget, because of credits: the
first attempt runs inside the budget; if it fails or is too slow it goes on (with a bounded
number of retries and backoff) in a background task, and the lazy layer of the middleware stays
the safety net for a user that every attempt missed.

    @app.post("/auth/register", status_code=201)
    @provision_credits(credits)                  # below the route decorator
    async def register(body: Signup) -> dict[str, str]:
        user = await users.create(body)
        return {"id": user.sub, "email": user.email}

A plain ``def`` handler (FastAPI's full-stack template writes them so) is decorated the same
way; it runs in a worker thread.

For a route you don't write (fastapi-users' generated router), call ``await
credits.provision(user.id, email=user.email, request=request)`` from its hook instead.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ..errors import ConfigurationError
from ..events import Observer
from ..identity.resolvers import Identity, TrustedProxies
from .newuser import AccountIdGetter, _identity, _payload, default_account_id, identity_for
from .provisioning import Provisioner, ProvisionResult

__all__ = [
    "SignupProvisioning",
    "default_account_id",
    "identity_for",
    "provision",
    "provision_credits",
]

log = logging.getLogger("credit_middleware.signup")

F = TypeVar("F", bound=Callable[..., Any])

_REQUEST_PARAM = "credit_signup_request__"
_MAX_RUNNERS = 16


class SignupProvisioning:
    """Budgeted, retried eager provisioning; owns its background retries.

    ``budget`` (seconds) is the most a caller waits; ``attempts`` bounds the tries (the first
    included), spaced by ``backoff`` doubling with jitter; each try is cut at
    ``attempt_timeout``. With ``defer_unverified`` an identity that the policy would refuse
    only for an unverified e-mail is left to a later layer (which may see it verified) instead
    of being given a trial-less account for good. ``prepare`` runs before each try (the
    shared :class:`~credit_middleware.Credits` migrates there); ``proxies`` (or
    ``trusted_proxies``) say whose forwarded address is the client's.
    """

    def __init__(
        self,
        provisioner: Provisioner,
        *,
        layer: str = "signup",
        budget: float = 0.2,
        attempts: int = 4,
        backoff: float = 0.5,
        attempt_timeout: float = 5.0,
        defer_unverified: bool = True,
        observer: Observer | None = None,
        prepare: Callable[[], Awaitable[None]] | None = None,
        proxies: TrustedProxies | None = None,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        if proxies is not None and trusted_proxies:
            raise ConfigurationError("give proxies or trusted_proxies, not both")
        if budget <= 0 or attempt_timeout <= 0 or backoff < 0:
            raise ConfigurationError("budget and attempt_timeout must be positive, backoff >= 0")
        if attempts < 1:
            raise ConfigurationError("attempts must be at least 1")
        if layer not in ("signup", "webhook", "admin", "cli"):
            raise ConfigurationError("layer must be 'signup', 'webhook', 'admin' or 'cli'")
        self.provisioner = provisioner
        self.layer: Any = layer
        self.budget = budget
        self.attempts = attempts
        self.backoff = backoff
        self.attempt_timeout = attempt_timeout
        self.defer_unverified = defer_unverified
        self.observer = observer or provisioner.observer
        self.prepare = prepare
        self.proxies = proxies or TrustedProxies(trusted_proxies)
        self._tasks: set[asyncio.Task[ProvisionResult | None]] = set()

    @property
    def pending(self) -> int:
        """Background provisioning tasks still running."""
        return len(self._tasks)

    def deferred(self, identity: Identity) -> bool:
        policy = self.provisioner.policy
        return (
            self.defer_unverified
            and policy.require_verified_email
            and identity.email_verified is not True
        )

    async def provision(self, identity: Identity | str) -> ProvisionResult | None:
        """Provision within the budget; None if it did not finish in time (it goes on in the
        background), failed (a retry is scheduled) or was deferred."""
        ident = Identity.of(identity)
        if self.deferred(ident):
            self._count("deferred")
            return None
        first: asyncio.Future[ProvisionResult | None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._run(ident, first))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        done, _ = await asyncio.wait((first,), timeout=self.budget)  # never cancels `first`
        if done:
            return first.result()
        self._count("timeout")
        log.warning(
            "signup provisioning exceeded its %.3fs budget; continuing in background", self.budget
        )
        return None

    async def _run(
        self, ident: Identity, first: asyncio.Future[ProvisionResult | None]
    ) -> ProvisionResult | None:
        try:
            for attempt in range(1, self.attempts + 1):
                try:
                    result = await asyncio.wait_for(self._attempt(ident), self.attempt_timeout)
                except Exception as exc:  # the lazy layer is the safety net: log, retry, go on
                    if not first.done():
                        first.set_result(None)
                    # A refusal (bad input, bad configuration) will not get better by waiting.
                    final = isinstance(exc, (ConfigurationError, ValueError))
                    if attempt == self.attempts or final:
                        self._count("abandoned")
                        log.error("signup provisioning gave up after %d attempts: %r", attempt, exc)
                        return None
                    delay = self.backoff * 2 ** (attempt - 1) * (0.5 + random.random())
                    self._count("retry")
                    log.warning(
                        "signup provisioning attempt %d failed (%r); retrying in %.2fs",
                        attempt,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                if not first.done():
                    first.set_result(result)
                return result
            return None  # pragma: no cover - the loop always returns
        finally:
            if not first.done():  # cancelled (aclose) before the first answer: unblock
                first.set_result(None)

    async def _attempt(self, ident: Identity) -> ProvisionResult:
        if self.prepare is not None:
            await self.prepare()
        return await self.provisioner.ensure_account(ident, layer=self.layer)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the background retries (at shutdown, or in tests)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def aclose(self) -> None:
        """Cancel the background retries (the lazy layer will catch those users)."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _count(self, outcome: str) -> None:
        try:
            self.observer.provisioned(self.layer, outcome)
        except Exception:  # an observer must never break a signup
            log.exception("observer failed")


def _runner(target: Any, options: dict[str, Any]) -> SignupProvisioning:
    shared = getattr(target, "signup", None)  # a Credits: its runner, migrating, its proxies
    if isinstance(shared, SignupProvisioning) and not isinstance(target, SignupProvisioning):
        if options:
            raise ConfigurationError("give signup options to Credits(signup={...}), not here")
        return shared
    if isinstance(target, SignupProvisioning):
        if options:
            raise ConfigurationError("pass options to SignupProvisioning, not here")
        return target
    if not isinstance(target, Provisioner):
        raise ConfigurationError(
            f"expected Credits, a Provisioner or a SignupProvisioning, not {type(target).__name__}"
        )
    return SignupProvisioning(target, **options)


class HasSignup(Protocol):
    """What signup needs of a :class:`~credit_middleware.Credits`: its shared runner (which
    migrates and knows the trusted proxies). Only the shape: trials know nothing above them."""

    signup: SignupProvisioning


Target = Provisioner | SignupProvisioning


def _signature(handler: Callable[..., Any]) -> inspect.Signature:
    """The handler's signature with its annotations evaluated where the handler lives: under
    ``from __future__ import annotations`` they are strings, which a framework resolving them
    in the wrapper's module (FastAPI before 0.11x does) could not find."""
    try:
        return inspect.signature(handler, eval_str=True)
    except Exception:  # a name defined later in its module: left for the framework to resolve
        return inspect.signature(handler)


def provision_credits(
    target: HasSignup | Target | Callable[[Any], HasSignup | Target],
    *,
    account_id: AccountIdGetter = default_account_id,
    **options: Any,
) -> Callable[[F], F]:
    """Decorate a registration handler to provision the new user once it succeeded.

    Works on Starlette endpoints, FastAPI path operations (the signature is kept, so body
    models and ``Depends`` still resolve; a ``Request`` parameter is added for FastAPI to fill
    if the handler has none) and any function, ``async def`` or plain ``def``: the decorated
    handler is async either way, and a plain one runs in a worker thread, as the framework
    would have run it. ``account_id(result, request)`` finds the
    user; ``options`` go to :class:`SignupProvisioning` (``budget``, ``attempts``, ...).

    ``target`` may also be a callable that finds the provisioner at call time, given the
    handler's first positional argument (``self`` of a method, the request of a Starlette
    endpoint, else the request): ``@provision_credits(lambda self: self.provisioner)``.
    A fixed runner is exposed as ``handler.credit_provisioning``; every runner in use (to
    ``drain`` or ``aclose`` at shutdown) as ``handler.credit_runners()``.
    """
    fixed = None if callable(target) and not isinstance(target, Target) else target
    runners: OrderedDict[int, tuple[Any, SignupProvisioning]] = OrderedDict()

    def runner_for(first: Any) -> SignupProvisioning:
        found = target(first) if fixed is None else fixed  # type: ignore[operator]
        known = runners.get(id(found))
        if known is None or known[0] is not found:
            known = (found, _runner(found, dict(options)))
            runners[id(found)] = known
            while len(runners) > _MAX_RUNNERS:  # provisioners come and go (tests, reloads)
                _, (_, old) = runners.popitem(last=False)
                _adopt(old)
        return known[1]

    runner = runner_for(None) if fixed is not None else None

    def decorate(handler: F) -> F:
        if not callable(handler):
            raise ConfigurationError("@provision_credits decorates a handler (a function)")
        call = handler if inspect.iscoroutinefunction(handler) else _in_thread(handler)
        sig = _signature(handler)
        request_name = next(
            (n for n, p in sig.parameters.items() if _is_request(p.annotation)), None
        )
        warned: list[bool] = []

        @functools.wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.pop(_REQUEST_PARAM, None)
            result = await call(*args, **kwargs)
            if request is None:
                candidates = [*args, kwargs.get(request_name) if request_name else None]
                request = next((a for a in candidates if isinstance(a, Request)), None)
            try:
                active = runner or runner_for(args[0] if args else request)
                ident = _identity(account_id, result, request, active.proxies)
            except Exception:  # a bad id or lookup must not turn a good signup into a 500
                log.exception("could not find the new user or the provisioner after signup")
                if runner is not None:
                    runner._count("skipped")
                return result
            if ident is not None:
                await active.provision(ident)
            elif _payload(result) is not None:  # a success, but whose?
                _no_user(handler, warned)
                active._count("skipped")
            return result

        if request_name is None:
            extra = inspect.Parameter(
                _REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Request
            )
            params = list(sig.parameters.values())
            at = next(
                (i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD),
                len(params),
            )
            params.insert(at, extra)
            sig = sig.replace(parameters=params)
        wrapper.__signature__ = sig  # type: ignore[attr-defined]
        if runner is not None:
            wrapper.credit_provisioning = runner  # type: ignore[attr-defined]
        wrapper.credit_runners = lambda: [r for _, r in runners.values()]  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _in_thread(handler: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """A plain ``def`` handler, run in a worker thread as FastAPI and Starlette run one (its
    blocking database calls never stall the event loop); an awaitable it returns is awaited."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        result = await run_in_threadpool(handler, *args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    return call


def _no_user(handler: Callable[..., Any], warned: list[bool]) -> None:
    name = getattr(handler, "__qualname__", repr(handler))
    level = logging.DEBUG if warned else logging.WARNING
    warned.append(True)
    log.log(
        level,
        "@provision_credits on %s: the handler's result has no 'user_id' or 'id', so nobody was"
        " provisioned at signup (the middleware will, on the first request); return one, or"
        " pass account_id=lambda result, request: ...",
        name,
    )


def _is_request(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == "Request"
    return isinstance(annotation, type) and issubclass(annotation, Request)


async def provision(
    target: HasSignup | Provisioner | SignupProvisioning,
    identity: Identity | str,
    **options: Any,
) -> ProvisionResult | None:
    """Provision one user eagerly, outside a handler, with the same budget and retries.

    Pass a :class:`SignupProvisioning` to keep (and :meth:`~SignupProvisioning.drain`) the
    background retries yourself; with a bare :class:`Provisioner` they are kept alive here.
    """
    runner = _runner(target, options)
    result = await runner.provision(identity)
    if runner is not target and runner is not getattr(target, "signup", None):
        _adopt(runner)
    return result


def _adopt(runner: SignupProvisioning) -> None:
    """Keep a dropped runner's background tasks referenced until they finish."""
    for task in runner._tasks:
        _ORPHANS.add(task)
        task.add_done_callback(_ORPHANS.discard)


# Background retries started through a throwaway runner, referenced until they finish (the
# event loop itself only keeps weak references to tasks). Tasks only, never configuration.
_ORPHANS: set[asyncio.Task[Any]] = set()
