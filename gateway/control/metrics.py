"""Prometheus metrics of the gateway, served at ``GET /metrics`` by the HTTP API.

Counts that already live in the call logic (the core's call counters, the partner
service's click-to-call and callback counters) are read when Prometheus scrapes, through
custom collectors, rather than copied into metric objects on every event: the call path
stays free of metric code. The HTTP API counts its own requests by route template and
status (a route, not a path, so call ids do not become label values).

What only a finished call knows (its disposition, the trunks it seized, its packet
counters and MOS) is added up by :class:`CallOutcomes`, which the call core tells of
every CDR; live calls' packet counters are added at scrape time, so the packet and
drop counters move during a call and never go back when it ends. Names (Prometheus
adds ``_total`` to counters):

* ``edgegw_calls_active``, ``edgegw_calls_started``, ``edgegw_calls_refused``,
  ``edgegw_call_refusals{reason}`` (admission and routing refusals),
  ``edgegw_calls_ended{disposition,end_reason}``;
* ``edgegw_trunk_seizures{trunk}``, ``edgegw_trunk_answers{trunk}``,
  ``edgegw_trunk_answer_seizure_ratio{trunk}``, ``edgegw_trunk_call_seconds{trunk}``,
  ``edgegw_trunk_average_call_duration_seconds{trunk}``;
* ``edgegw_media_packets{direction}``, ``edgegw_media_drops{reason}``,
  ``edgegw_srtp_auth_failures``, ``edgegw_calls_transcoding``;
* ``edgegw_call_mos{leg}`` (histogram of the E-model MOS of each leg at call end);
* ``edgegw_event_loop_lag_seconds`` (mean lateness of a 100 ms timer, last 5 s).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.calls.b2bua import Call
from gateway.calls.core import CallCore
from gateway.calls.partners import PartnerService
from gateway.media.latching import DropReason
from gateway.store.model import Cdr

__all__ = [
    "MOS_BUCKETS",
    "CallCounts",
    "CallCountsCollector",
    "CallOutcomes",
    "CallOutcomesCollector",
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


# MOS-CQE runs 1 to 4.5 (G.107 Annex B); finer steps where good calls differ.
MOS_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.3, 4.4, 4.5)


@dataclass
class TrunkTally:
    seizures: int = 0
    answers: int = 0
    seconds: float = 0.0


@dataclass
class MediaTally:
    packets_in: int = 0
    packets_out: int = 0
    drops: Tally[str] = field(default_factory=Tally)

    def add(self, stats: dict[str, Any]) -> None:
        for leg in ("a", "b"):
            self.packets_in += int(stats[leg]["packets_in"])
            self.packets_out += int(stats[leg]["packets_out"])
            self.drops.update({r: int(n) for r, n in stats[leg]["drops"].items()})


class CallOutcomes:
    """What finished calls leave behind, added up as each one's CDR is written.

    ``observe`` is a call core observer: it runs synchronously in ``CallCore.record``
    before its first await, right after the call left ``core.calls``, so a scrape sees
    a call's packets either among the live calls or here, never in neither.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ended: Tally[tuple[str, str]] = Tally()
        self.trunks: dict[str, TrunkTally] = {}
        self.media = MediaTally()
        self.mos = Histogram(
            "edgegw_call_mos",
            "E-model MOS-CQE (ITU-T G.107) of each call leg at call end",
            ["leg"],
            buckets=MOS_BUCKETS,
            registry=registry,
        )

    def observe(self, call: Call, cdr: Cdr) -> None:
        self.ended[(cdr.disposition, cdr.end_reason)] += 1
        record = call.record
        seized = [t for t in record.trunks_tried if t not in record.trunk_skips]
        if cdr.trunk is not None and not seized:
            seized = [cdr.trunk]
        for name in seized:
            self.trunks.setdefault(name, TrunkTally()).seizures += 1
        if cdr.trunk is not None and cdr.disposition == "answered":
            tally = self.trunks.setdefault(cdr.trunk, TrunkTally())
            tally.answers += 1
            tally.seconds += cdr.duration
        self.media.add(call.media.stats())
        for leg, mos in (("a", cdr.mos_a), ("b", cdr.mos_b)):
            if mos is not None:
                self.mos.labels(leg).observe(mos)


class CallOutcomesCollector(Collector):
    """Call ends, trunk ASR/ACD, media packets and drops, transcoding load, loop lag."""

    def __init__(self, core: CallCore, outcomes: CallOutcomes) -> None:
        self._core = core
        self._outcomes = outcomes

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        core, outcomes = self._core, self._outcomes
        refusals = CounterMetricFamily(
            "edgegw_call_refusals", "INVITEs refused before routing, by reason", labels=["reason"]
        )
        for reason, count in sorted(core.stats.refusals.items()):
            refusals.add_metric([reason], count)
        yield refusals
        ended = CounterMetricFamily(
            "edgegw_calls_ended",
            "Finished calls by disposition and end reason",
            labels=["disposition", "end_reason"],
        )
        for (disposition, reason), count in sorted(outcomes.ended.items()):
            ended.add_metric([disposition, reason], count)
        yield ended
        yield from _trunk_families(outcomes.trunks)
        yield from _media_families(outcomes.media, core.calls.values())
        lag = core.admission.load.lag()
        yield GaugeMetricFamily(
            "edgegw_event_loop_lag_seconds",
            "Mean lateness of the event loop's 100 ms sampling timer over the last 5 s",
            value=0.0 if lag is None else lag,
        )


def _trunk_families(trunks: dict[str, TrunkTally]) -> Iterator[Any]:
    names = sorted(trunks)
    seizures = CounterMetricFamily(
        "edgegw_trunk_seizures", "Calls put on a trunk", labels=["trunk"]
    )
    answers = CounterMetricFamily(
        "edgegw_trunk_answers", "Calls a trunk answered", labels=["trunk"]
    )
    seconds = CounterMetricFamily(
        "edgegw_trunk_call_seconds", "Talk time of answered calls on a trunk", labels=["trunk"]
    )
    asr = GaugeMetricFamily(
        "edgegw_trunk_answer_seizure_ratio", "Answers per seizure since start", labels=["trunk"]
    )
    acd = GaugeMetricFamily(
        "edgegw_trunk_average_call_duration_seconds",
        "Mean talk time of answered calls since start",
        labels=["trunk"],
    )
    for name in names:
        tally = trunks[name]
        seizures.add_metric([name], tally.seizures)
        answers.add_metric([name], tally.answers)
        seconds.add_metric([name], tally.seconds)
        asr.add_metric([name], tally.answers / tally.seizures if tally.seizures else 0.0)
        acd.add_metric([name], tally.seconds / tally.answers if tally.answers else 0.0)
    yield from (seizures, answers, seconds, asr, acd)


def _media_families(finished: MediaTally, live: Iterable[Call]) -> Iterator[Any]:
    total = MediaTally(finished.packets_in, finished.packets_out, Tally(finished.drops))
    transcoding = 0
    for call in live:
        total.add(call.media.stats())
        transcoding += call.media.transcoding
    packets = CounterMetricFamily(
        "edgegw_media_packets",
        "RTP/RTCP packets relayed in from peers and sent out to them",
        labels=["direction"],
    )
    packets.add_metric(["in"], total.packets_in)
    packets.add_metric(["out"], total.packets_out)
    yield packets
    drops = CounterMetricFamily(
        "edgegw_media_drops", "Media packets dropped, by reason", labels=["reason"]
    )
    for reason in DropReason:  # every reason, zeros too: alerts need the series to exist
        drops.add_metric([reason.value], total.drops.get(reason.value, 0))
    yield drops
    yield CounterMetricFamily(
        "edgegw_srtp_auth_failures",
        "SRTP/SRTCP packets that failed authentication (dropped)",
        value=total.drops.get(DropReason.SRTP_AUTH.value, 0),
    )
    yield GaugeMetricFamily(
        "edgegw_calls_transcoding", "Calls in progress that are transcoded", value=transcoding
    )


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
    outcomes = CallOutcomes(registry)
    core.call_observers.append(outcomes.observe)
    registry.register(CallOutcomesCollector(core, outcomes))
    return registry
