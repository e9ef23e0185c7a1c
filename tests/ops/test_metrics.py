"""Prometheus metrics: names, labels, isolation between instances, and the /metrics app."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from credit_middleware import ConfigurationError
from credit_middleware.events import Observer
from credit_middleware.ops.metrics import PrometheusObserver, RecentRefusals, metrics_app

pytestmark = pytest.mark.anyio


def _client(observer: PrometheusObserver) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=metrics_app(observer))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


def test_every_observer_hook_is_counted() -> None:
    obs = PrometheusObserver()
    assert isinstance(obs, Observer)
    obs.provisioned("signup", "created")
    obs.provisioned("signup", "created")
    obs.provisioned("request", "failed")
    obs.ledger_op("debit", "ok")
    obs.ledger_op("hold", "insufficient")
    obs.ledger_op("expire", "ok")
    obs.refused(402, "insufficient_credits")
    obs.refused(429, "rate_limited")
    obs.refused(429, "rate_limited")
    obs.degraded("redis", True)
    obs.degraded("database", True)
    obs.degraded("database", False)
    obs.request_overhead(0.0004)
    obs.request_overhead(0.003)

    v = obs.registry.get_sample_value
    assert v("credit_provisioning_total", {"layer": "signup", "outcome": "created"}) == 2
    assert v("credit_provisioning_total", {"layer": "request", "outcome": "failed"}) == 1
    assert v("credit_ledger_operations_total", {"kind": "debit", "outcome": "ok"}) == 1
    assert v("credit_ledger_operations_total", {"kind": "hold", "outcome": "insufficient"}) == 1
    assert v("credit_ledger_operations_total", {"kind": "expire", "outcome": "ok"}) == 1
    assert v("credit_refusals_total", {"status": "429", "reason": "rate_limited"}) == 2
    assert v("credit_refusals_total", {"status": "402", "reason": "insufficient_credits"}) == 1
    assert v("credit_backend_degraded", {"backend": "redis"}) == 1
    assert v("credit_backend_degraded", {"backend": "database"}) == 0
    assert v("credit_middleware_overhead_seconds_count", {}) == 2
    assert v("credit_middleware_overhead_seconds_sum", {}) == pytest.approx(0.0034)
    assert v("credit_middleware_overhead_seconds_bucket", {"le": "0.0005"}) == 1
    assert v("credit_middleware_overhead_seconds_bucket", {"le": "+Inf"}) == 2
    assert [(r.status, r.reason) for r in obs.recent_refusals()] == [
        (429, "rate_limited"),
        (429, "rate_limited"),
        (402, "insufficient_credits"),
    ]


def test_two_instances_do_not_interfere() -> None:
    a, b = PrometheusObserver(), PrometheusObserver()
    a.provisioned("signup", "created")
    assert a.registry is not b.registry
    assert (
        a.registry.get_sample_value(
            "credit_provisioning_total", {"layer": "signup", "outcome": "created"}
        )
        == 1
    )
    assert (
        b.registry.get_sample_value(
            "credit_provisioning_total", {"layer": "signup", "outcome": "created"}
        )
        is None
    )
    # A caller's registry and a namespace of its own are honoured too.
    shared = CollectorRegistry()
    c = PrometheusObserver(shared, namespace="app_credit")
    c.ledger_op("debit", "ok")
    assert (
        shared.get_sample_value(
            "app_credit_ledger_operations_total", {"kind": "debit", "outcome": "ok"}
        )
        == 1
    )


def test_labels_stay_bounded() -> None:
    obs = PrometheusObserver()
    obs.refused(402, "x" * 10_000)
    (family,) = [
        f for f in text_string_to_metric_families(obs.exposition()[0].decode())
        if f.name == "credit_refusals"
    ]  # fmt: skip
    (sample,) = [s for s in family.samples if s.name.endswith("_total")]
    assert len(sample.labels["reason"]) == 64


def test_the_refusal_ring_is_bounded_and_newest_first() -> None:
    ring = RecentRefusals(3, clock=iter(range(100)).__next__)
    for i in range(5):
        ring.refused(429, f"r{i}")
    assert [(r.at, r.reason) for r in ring.recent_refusals()] == [(4, "r4"), (3, "r3"), (2, "r2")]
    with pytest.raises(ConfigurationError):
        RecentRefusals(0)


async def test_the_metrics_app_serves_the_exposition_format() -> None:
    obs = PrometheusObserver()
    obs.provisioned("webhook", "created")
    obs.request_overhead(0.001)
    async with _client(obs) as client:
        r = await client.get("/")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        assert families["credit_provisioning"].type == "counter"
        assert families["credit_middleware_overhead_seconds"].type == "histogram"
        assert families["credit_backend_degraded"].type == "gauge"
        assert 'credit_provisioning_total{layer="webhook",outcome="created"} 1.0' in r.text

        head = await client.head("/")
        assert head.status_code == 200
        assert head.content == b""
        post = await client.post("/")
        assert post.status_code == 405
        assert post.headers["allow"] == "GET, HEAD"


async def test_the_metrics_app_answers_lifespan_on_its_own() -> None:
    app = metrics_app(PrometheusObserver())
    messages: Iterator[dict[str, object]] = iter(
        [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    )
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)  # type: ignore[arg-type]
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


def test_a_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"credit-middleware\[prometheus\]"):
        PrometheusObserver()
    RecentRefusals()  # needs nothing


async def test_the_metrics_app_routes_at_exactly_metrics() -> None:
    obs = PrometheusObserver()
    obs.refused(429, "rate_limited")
    app = Starlette(routes=[Route("/metrics", metrics_app(obs))])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert 'credit_refusals_total{reason="rate_limited",status="429"} 1.0' in r.text
