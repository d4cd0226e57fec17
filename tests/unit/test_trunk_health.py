"""Trunk health from OPTIONS results: the sans-IO state, the request, the monitor's view."""

from __future__ import annotations

import pytest

from gateway.calls.trunk_health import (
    PingResult,
    TrunkHealth,
    TrunkMonitor,
    TrunkState,
    UnknownTrunkError,
    options_request,
    trunk_uri,
)
from gateway.config import DnsConfig, TrunkConfig
from gateway.sip.message import Request, Response, parse
from gateway.sip.transaction import Timers
from gateway.transport.dns import Resolver, Target
from gateway.transport.endpoint import ServerHandle, SipEndpoint
from gateway.transport.flow import Flow

TARGET = Target("udp", "203.0.113.9", 5060)
OK = PingResult(status=200, rtt=0.012, target=TARGET)
TIMEOUT = PingResult(error="timeout", target=TARGET)
BUSY = PingResult(status=503, rtt=0.02, target=TARGET)


def health(failures: int = 3) -> TrunkHealth:
    return TrunkHealth("carrier", failures)


def test_first_answer_marks_up() -> None:
    state = health()
    assert state.state is TrunkState.UNKNOWN and state.is_up
    assert state.record(OK, now=1000.0) is TrunkState.UP
    assert state.changed_at == 1000.0
    assert state.last_rtt == 0.012 and state.last_status == 200
    assert state.record(OK, now=1030.0) is None  # no change
    assert state.changed_at == 1000.0


def test_n_timeouts_in_a_row_mark_down() -> None:
    state = health(3)
    state.record(OK, now=0.0)
    assert state.record(TIMEOUT, now=30.0) is None
    assert state.record(TIMEOUT, now=60.0) is None
    assert state.is_up and state.failures == 2
    assert state.record(TIMEOUT, now=90.0) is TrunkState.DOWN
    assert not state.is_up and state.changed_at == 90.0
    assert state.last_error == "timeout" and state.last_status is None
    assert state.record(TIMEOUT, now=120.0) is None and state.failures == 4


def test_503_counts_as_failure_and_mixes_with_timeouts() -> None:
    state = health(2)
    state.record(BUSY, now=0.0)
    assert state.record(TIMEOUT, now=1.0) is TrunkState.DOWN
    assert state.last_rtt == 0.02  # the 503's round trip is still a measurement


def test_an_answer_in_between_resets_the_count() -> None:
    state = health(2)
    state.record(TIMEOUT, now=0.0)
    state.record(OK, now=1.0)
    state.record(TIMEOUT, now=2.0)
    assert state.is_up and state.failures == 1


@pytest.mark.parametrize("status", [200, 404, 405, 481, 501, 603])
def test_any_final_answer_but_503_is_alive(status: int) -> None:
    state = health(1)
    state.record(TIMEOUT, now=0.0)
    assert not state.is_up
    assert state.record(PingResult(status=status, rtt=0.001), now=1.0) is TrunkState.UP
    assert state.last_status == status and state.last_error is None


def test_never_answering_trunk_goes_down_from_unknown() -> None:
    state = health(1)
    assert state.record(PingResult(error="dns: carrier.test: no such domain"), 5.0) is (
        TrunkState.DOWN
    )
    assert state.last_error == "dns: carrier.test: no such domain"


def test_snapshot_shows_the_state() -> None:
    state = health(2)
    state.record(OK, now=10.0)
    assert state.snapshot() == {
        "name": "carrier",
        "monitored": True,
        "state": "up",
        "up": True,
        "failures": 0,
        "last_status": 200,
        "last_rtt_ms": 12.0,
        "last_error": None,
        "last_ping_at": 10.0,
        "changed_at": 10.0,
        "pings": 1,
    }


def test_failures_to_down_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TrunkHealth("carrier", 0)


def test_ping_result_alive_and_dict() -> None:
    assert OK.alive and not BUSY.alive and not TIMEOUT.alive
    assert OK.as_dict() == {
        "status": 200,
        "rtt_ms": 12.0,
        "error": None,
        "target": "udp:203.0.113.9:5060",
    }


# ---- the request -----------------------------------------------------------------------------


def trunk(**fields: object) -> TrunkConfig:
    base: dict[str, object] = {"name": "carrier", "host": "203.0.113.9", "port": 5080}
    base.update(fields)
    return TrunkConfig(**base)  # type: ignore[arg-type]


def test_trunk_uris() -> None:
    assert trunk_uri(trunk()) == "sip:203.0.113.9:5080"
    assert trunk_uri(trunk(transport="tcp"), "u") == "sip:u@203.0.113.9:5080;transport=tcp"
    assert trunk_uri(trunk(), "u", with_port=False) == "sip:u@203.0.113.9"
    assert trunk_uri(trunk(host="carrier.test", resolve="rfc3263")) == "sip:carrier.test"
    assert trunk_uri(trunk(host="2001:db8::5")) == "sip:[2001:db8::5]:5080"


def test_options_request_parses_back() -> None:
    request = options_request(trunk(), "127.0.0.1:5060", "sip:127.0.0.1:5060", seq=7)
    request.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKtest")
    again = parse(request.to_bytes())
    assert isinstance(again, Request)
    assert again.method == "OPTIONS" and again.uri == "sip:203.0.113.9:5080"
    assert str(again.cseq) == "7 OPTIONS"
    assert again.from_.tag and again.to.tag is None
    assert again.headers.get("Max-Forwards") == "70"
    assert again.headers.get("Contact") == "<sip:127.0.0.1:5060>"
    assert again.headers.get("Accept") == "application/sdp"
    other = options_request(trunk(), "127.0.0.1:5060", "sip:127.0.0.1:5060")
    assert other.call_id != request.call_id


# ---- the monitor's view ----------------------------------------------------------------------


class NoRequests:
    """The endpoint's request handler; these tests send nothing that could be answered."""

    def on_request(self, request: Request, server: ServerHandle | None, flow: Flow) -> None:
        raise AssertionError(f"unexpected {request.method}")

    def on_stray_response(self, response: Response, flow: Flow) -> None:
        raise AssertionError(f"unexpected {response.status}")


def monitor(trunks: list[TrunkConfig], ping_timeout: float | None = None) -> TrunkMonitor:
    endpoint = SipEndpoint(
        udp=[("127.0.0.1", 0)],
        tcp=[],
        timers=Timers(t1=0.2),
        tcp_idle_timeout=60,
        handler=NoRequests(),
    )
    return TrunkMonitor(trunks, endpoint, Resolver(DnsConfig()), ping_timeout=ping_timeout)


def test_unmonitored_trunks_are_always_up() -> None:
    watcher = monitor([trunk(name="a"), trunk(name="b", options_ping=True, options_failures=1)])
    assert watcher.is_up("a") and watcher.is_up("b") and watcher.is_up("not-a-trunk")
    watcher.health["b"].record(TIMEOUT, now=1.0)
    assert watcher.is_up("a") and not watcher.is_up("b")
    rows = watcher.snapshot()
    assert rows[0] == {"name": "a", "monitored": False, "state": "up", "up": True}
    assert rows[1]["state"] == "down" and rows[1]["failures"] == 1


def test_ping_deadline_is_short_and_within_the_interval() -> None:
    watcher = monitor([])
    assert watcher.ping_timeout(trunk(options_interval=30.0)) == pytest.approx(2.0)  # 10*T1
    assert watcher.ping_timeout(trunk(options_interval=0.5)) == 0.5
    fixed = monitor([], ping_timeout=1.5)
    assert fixed.ping_timeout(trunk(options_interval=30.0)) == 1.5


async def test_ping_of_an_unknown_trunk_is_refused() -> None:
    with pytest.raises(UnknownTrunkError, match="no trunk named 'nope'"):
        await monitor([trunk()]).ping("nope")
