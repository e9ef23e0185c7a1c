"""What the library reports about itself: an :class:`Observer` with no-op methods.

Every component takes an optional ``observer``; the Prometheus metrics (``metrics.py``) are one
implementation, tests can record events with another. Labels passed here are always bounded
(layers, outcomes, reasons, backends), never an account id.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["NULL_OBSERVER", "GuardedObserver", "Observer", "guarded"]

log = logging.getLogger("credit_middleware.events")


class Observer:
    """Receives events; subclass and override what you need. Must never raise."""

    def provisioned(self, layer: str, outcome: str) -> None:
        """A provisioning attempt: outcome is ``created`` (account + trial grant), ``denied``
        (account without trial, see the policy), ``late_grant`` (a denied trial granted once the
        refusal no longer held, e.g. the e-mail got verified), ``existing`` (nothing to do), or
        ``failed``.
        The signup decorator adds ``timeout`` (over its budget, finishing in the background),
        ``retry``, ``abandoned`` (retries exhausted), ``deferred`` and ``skipped`` (left to the
        first request, e.g. an e-mail not verified yet)."""

    def ledger_op(self, kind: str, outcome: str) -> None:
        """A money operation (``debit``, ``hold``, ``capture``, ``release``, ``refund``,
        ``expire``): outcome ``ok``, ``replayed``, ``insufficient`` or ``error``."""

    def unknown_outcome(self, operation: str, resolution: str) -> None:
        """A money operation whose outcome was not known when its answer was due (a timeout,
        a lost connection): ``resolving``, then ``stood`` (it applied: served),
        ``not_applied`` (fenced: the client got a 503), ``reversal_pending`` /
        ``retry_pending`` (left to the background) and finally ``settled_later``."""

    def refused(self, status: int, reason: str) -> None:
        """A request the middleware refused: 401/402/429/503 with a stable reason."""

    def degraded(self, backend: str, degraded: bool) -> None:
        """A backend (``redis``, ``database``, ``trial_cap``) entered (True) or left (False)
        degraded mode."""

    def request_overhead(self, seconds: float) -> None:
        """Time the middleware itself added to one request."""


NULL_OBSERVER = Observer()


class GuardedObserver(Observer):
    """Wraps an observer so that an exception it raises is logged (once per hook) and
    swallowed: a metrics bug must never turn a 401 into a 500 or fail a signup. Other
    attributes (``recent_refusals``, ...) are the wrapped observer's."""

    def __init__(self, inner: Observer) -> None:
        self.inner = inner
        self._failed: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "_failed"):  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _call(self, hook: str, *args: Any) -> None:
        try:
            getattr(self.inner, hook)(*args)
        except Exception:
            if hook not in self._failed:
                self._failed.add(hook)
                log.exception("observer %s.%s raised; ignored", type(self.inner).__name__, hook)
            else:
                log.debug("observer %s raised again", hook, exc_info=True)


def _forward(hook: str) -> Any:
    def forward(self: GuardedObserver, *args: Any) -> None:
        self._call(hook, *args)

    forward.__name__ = forward.__qualname__ = hook
    return forward


# Every hook of Observer, present and future, goes through _call (none is silently dropped).
for _hook in [n for n, v in vars(Observer).items() if callable(v) and not n.startswith("_")]:
    setattr(GuardedObserver, _hook, _forward(_hook))


def guarded(observer: Observer | None) -> Observer:
    """An observer that never raises: the null one, or ``observer`` wrapped (once)."""
    if observer is None or observer is NULL_OBSERVER:
        return NULL_OBSERVER
    if isinstance(observer, GuardedObserver):
        return observer
    return GuardedObserver(observer)
