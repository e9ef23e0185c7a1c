"""Prometheus metrics: an :class:`~credit_middleware.events.Observer` that counts what happens.

Needs the ``prometheus`` extra (``prometheus-client``), imported only when an observer is built.
Each :class:`PrometheusObserver` registers its metrics in a ``CollectorRegistry`` of its own
unless given one, so two instances in one process never collide. Labels are bounded (layers,
outcomes, kinds, reasons, backends); an account id never becomes a label.

``metrics_app(observer)`` is the ASGI app to serve at ``/metrics``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .._extras import optional
from ..errors import ConfigurationError
from ..events import Observer

__all__ = ["MetricsApp", "PrometheusObserver", "RecentRefusals", "Refusal", "metrics_app"]

log = logging.getLogger("credit_middleware.metrics")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The middleware adds well under a millisecond on its hot path; buckets resolve 50 µs to 1 s.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0,
)  # fmt: skip
_MAX_LABEL = 64


def _bounded(value: object) -> str:
    """Labels come from the library's own vocabularies; still, never let one grow unbounded."""
    text = str(value)
    return text if len(text) <= _MAX_LABEL else text[:_MAX_LABEL]


def _prometheus() -> Any:
    return optional("prometheus_client", "metrics need prometheus-client", "prometheus")


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused request, as the dashboard lists it (no account id: the observer has none)."""

    at: float
    status: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "status": self.status, "reason": self.reason}


class RecentRefusals(Observer):
    """A bounded ring of the latest refusals, for the dashboard; everything else is a no-op."""

    def __init__(self, size: int = 100, *, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(size, int) or not 0 < size <= 100_000:
            raise ConfigurationError("the refusal ring size must be between 1 and 100,000")
        self._ring: deque[Refusal] = deque(maxlen=size)
        self._clock = clock

    def refused(self, status: int, reason: str) -> None:
        self._ring.append(Refusal(self._clock(), int(status), _bounded(reason)))

    def recent_refusals(self) -> list[Refusal]:
        """Newest first."""
        return list(reversed(self._ring))


class PrometheusObserver(RecentRefusals):
    """Counts provisioning, ledger operations, refusals, degraded backends and the middleware's
    own latency as Prometheus metrics (and keeps the latest refusals for the dashboard)."""

    def __init__(
        self,
        registry: Any = None,
        *,
        namespace: str = "credit",
        recent_refusals: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(recent_refusals, clock=clock)
        prom = _prometheus()
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        self._content_type: str = prom.CONTENT_TYPE_LATEST
        self._generate: Callable[[Any], bytes] = prom.generate_latest
        ns = namespace
        self.provisioning = prom.Counter(
            f"{ns}_provisioning",
            "Provisioning attempts by layer and outcome (created, denied, late_grant, existing,"
            " failed, ...).",
            ["layer", "outcome"],
            registry=self.registry,
        )
        self.ledger_ops = prom.Counter(
            f"{ns}_ledger_operations",
            "Ledger operations by kind (debit, hold, capture, release, refund, expire), outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.refusals = prom.Counter(
            f"{ns}_refusals",
            "Requests the middleware refused, by HTTP status and reason.",
            ["status", "reason"],
            registry=self.registry,
        )
        self.unknown_outcomes = prom.Counter(
            f"{ns}_unknown_outcomes",
            "Money operations whose outcome was unknown when their answer was due, by"
            " operation and how it was resolved (stood, not_applied, settled_later, ...).",
            ["operation", "resolution"],
            registry=self.registry,
        )
        self.degraded_backends = prom.Gauge(
            f"{ns}_backend_degraded",
            "1 while a backend (redis, database) is in degraded mode, else 0.",
            ["backend"],
            registry=self.registry,
        )
        self.overhead = prom.Histogram(
            f"{ns}_middleware_overhead_seconds",
            "Time the credit middleware itself added to a request.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    # Observer hooks must never raise into the request path: log and carry on.

    def provisioned(self, layer: str, outcome: str) -> None:
        try:
            self.provisioning.labels(_bounded(layer), _bounded(outcome)).inc()
        except Exception:  # pragma: no cover - defensive
            log.exception("could not record a provisioning event")

    def ledger_op(self, kind: str, outcome: str) -> None:
        try:
            self.ledger_ops.labels(_bounded(kind), _bounded(outcome)).inc()
        except Exception:  # pragma: no cover - defensive
            log.exception("could not record a ledger operation")

    def refused(self, status: int, reason: str) -> None:
        try:
            super().refused(status, reason)
            self.refusals.labels(str(int(status)), _bounded(reason)).inc()
        except Exception:  # pragma: no cover - defensive
            log.exception("could not record a refusal")

    def unknown_outcome(self, operation: str, resolution: str) -> None:
        try:
            self.unknown_outcomes.labels(_bounded(operation), _bounded(resolution)).inc()
        except Exception:  # pragma: no cover - defensive
            log.exception("could not record an unknown outcome")

    def degraded(self, backend: str, degraded: bool) -> None:
        try:
            self.degraded_backends.labels(_bounded(backend)).set(1 if degraded else 0)
        except Exception:  # pragma: no cover - defensive
            log.exception("could not record a degraded backend")

    def request_overhead(self, seconds: float) -> None:
        try:
            self.overhead.observe(max(0.0, float(seconds)))
        except Exception:  # pragma: no cover - defensive
            log.exception("could not record the request overhead")

    def exposition(self) -> tuple[bytes, str]:
        """The current metrics in the text exposition format, and its content type."""
        return self._generate(self.registry), self._content_type


class MetricsApp:
    """A small ASGI app serving one observer's registry (GET/HEAD; lifespan answered).

    An instance, not a function, so Starlette's ``Route("/metrics", metrics_app(obs))`` serves
    it as an ASGI app at exactly ``/metrics`` (a ``Mount`` would redirect to ``/metrics/``).
    """

    def __init__(self, observer: PrometheusObserver) -> None:
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own: nothing to start or stop
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        method = scope.get("method", "GET")
        headers = [(b"cache-control", b"no-store")]
        if method not in ("GET", "HEAD"):
            status, body, ctype = 405, b"method not allowed\n", "text/plain; charset=utf-8"
            headers.append((b"allow", b"GET, HEAD"))
        else:
            status, (body, ctype) = 200, self.observer.exposition()
        headers += [
            (b"content-type", ctype.encode("latin-1")),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def metrics_app(observer: PrometheusObserver) -> MetricsApp:
    """The ASGI app to route at ``/metrics``: ``Route("/metrics", metrics_app(observer))``."""
    return MetricsApp(observer)
