"""Prometheus metrics of the gateway, served at ``GET /metrics`` by the HTTP API.

Counts that already live in the call logic (the core's call counters, the partner
service's click-to-call and callback counters) are read when Prometheus scrapes, through
custom collectors, rather than copied into metric objects on every event: the call path
stays free of metric code. The HTTP API counts its own requests by route template and
status (a route, not a path, so call ids do not become label values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.calls.core import CallCore
from gateway.calls.partners import PartnerService

__all__ = [
    "CallCounts",
    "CallCountsCollector",
    "HttpMetrics",
    "PartnerCollector",
    "gateway_registry",
]


@dataclass(frozen=True)
class CallCounts:
    active: int
    started: int
    refused: int


class CallCountsCollector(Collector):
    """The gateway's calls: in progress, started and refused since start."""

    def __init__(self, read: Callable[[], CallCounts]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        counts = self._read()
        yield GaugeMetricFamily("edgegw_calls_active", "Calls in progress", value=counts.active)
        yield CounterMetricFamily(
            "edgegw_calls_started", "Calls accepted for routing", value=counts.started
        )
        yield CounterMetricFamily(
            "edgegw_calls_refused", "Calls refused before routing", value=counts.refused
        )


class PartnerCollector(Collector):
    """Click-to-call calls, masked-number bindings and callback deliveries."""

    def __init__(self, service: PartnerService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        service = self._service
        stats, callbacks = service.stats, service.callbacks.stats
        yield GaugeMetricFamily(
            "edgegw_click_to_call_active",
            "Click-to-call calls not ended",
            value=service.active_calls,
        )
        yield CounterMetricFamily(
            "edgegw_click_to_call_started",
            "Click-to-call calls placed",
            value=stats.calls_started,
        )
        yield _by_status(
            "edgegw_click_to_call_refused", "Click-to-call requests refused", stats.calls_refused
        )
        yield CounterMetricFamily(
            "edgegw_bindings_created", "Masked-number bindings made", value=stats.bindings_created
        )
        yield _by_status(
            "edgegw_bindings_refused", "Binding requests refused", stats.bindings_refused
        )
        outcomes = CounterMetricFamily(
            "edgegw_callbacks", "Callback deliveries by outcome", labels=["outcome"]
        )
        for outcome in ("delivered", "retried", "rejected", "abandoned"):
            outcomes.add_metric([outcome], getattr(callbacks, outcome))
        yield outcomes
        yield GaugeMetricFamily(
            "edgegw_callbacks_queued",
            "Callback deliveries not finished",
            value=service.callbacks.queued,
        )


def _by_status(name: str, documentation: str, counts: dict[int, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["status"])
    for status, count in sorted(counts.items()):
        family.add_metric([str(status)], count)
    return family


class HttpMetrics:
    """Requests the HTTP API answered, by method, route template and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "edgegw_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "edgegw_http_request_seconds",
            "Time to answer an HTTP request",
            ["route"],
            registry=registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.seconds.labels(route).observe(seconds)


def gateway_registry(core: CallCore) -> CollectorRegistry:
    """A registry with the call core's counters; the HTTP API adds its own."""
    registry = CollectorRegistry()
    registry.register(
        CallCountsCollector(
            lambda: CallCounts(
                active=len(core.calls),
                started=core.stats.calls_started,
                refused=core.stats.calls_refused,
            )
        )
    )
    return registry
