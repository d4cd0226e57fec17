"""Tests for gateway.sip.session_timer: RFC 4028 negotiation and deadlines."""

from __future__ import annotations

import pytest

from gateway.sip.message import Request, Response, make_response, parse
from gateway.sip.session_timer import (
    IntervalTooSmall,
    Refresher,
    SessionEvent,
    SessionExpires,
    SessionTimer,
    SessionTimerError,
    parse_min_se,
    parse_session_expires,
)


def invite(*headers: tuple[str, str]) -> Request:
    lines = [
        "INVITE sip:bob@example.com SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKst1",
        "Max-Forwards: 70",
        "From: <sip:alice@example.com>;tag=a",
        "To: <sip:bob@example.com>",
        "Call-ID: st-1@example.com",
        "CSeq: 1 INVITE",
        "Contact: <sip:alice@198.51.100.7>",
        *(f"{name}: {value}" for name, value in headers),
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def reply(status: int, *headers: tuple[str, str]) -> Response:
    resp = make_response(invite(), status, to_tag="b")
    for name, value in headers:
        resp.headers.add(name, value)
    return resp


def header(pairs: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in pairs if key == name]
    assert len(values) <= 1
    return values[0] if values else None


# -- header parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1800", SessionExpires(1800)),
        ("1800;refresher=uac", SessionExpires(1800, Refresher.UAC)),
        (" 90 ; Refresher = UAS ; foo=bar", SessionExpires(90, Refresher.UAS)),
        ("4000;x-vendor", SessionExpires(4000)),
    ],
)
def test_parse_session_expires(text: str, expected: SessionExpires) -> None:
    assert parse_session_expires(text) == expected


def test_session_expires_serializes() -> None:
    assert str(SessionExpires(1800)) == "1800"
    assert str(SessionExpires(90, Refresher.UAS)) == "90;refresher=uas"
    assert parse_session_expires(str(SessionExpires(600, Refresher.UAC))).interval == 600


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a number"),
        ("abc", "not a number"),
        ("-5", "not a number"),
        ("1.5", "not a number"),
        ("\u0661\u0662", "not a number"),  # non-ASCII digits
        ("0", "positive"),
        ("12345678901", "too large"),
        ("1800;refresher=me", "refresher must be uac or uas"),
    ],
)
def test_parse_session_expires_errors(text: str, message: str) -> None:
    with pytest.raises(SessionTimerError, match=message):
        parse_session_expires(text)


def test_parse_min_se() -> None:
    assert parse_min_se("90") == 90
    assert parse_min_se(" 120 ;x=y") == 120
    with pytest.raises(SessionTimerError, match="Bad Min-SE"):
        parse_min_se("soon")


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="min_se"):
        SessionTimer(interval=60, min_se=90)
    with pytest.raises(ValueError, match="min_se"):
        SessionTimer(interval=10, min_se=0)
    small = SessionTimer(interval=4, min_se=2)  # tests may run below the RFC floor
    assert small.interval == 4


# -- UAC side ---------------------------------------------------------------------


def test_uac_initial_request_headers() -> None:
    timer = SessionTimer()
    headers = timer.request_headers()
    assert header(headers, "Supported") == "timer"
    assert header(headers, "Session-Expires") == "1800;refresher=uac"
    assert header(headers, "Min-SE") == "90"
    passive = SessionTimer(prefer_refresh=False)
    assert header(passive.request_headers(), "Session-Expires") == "1800"
    assert not timer.active


def test_uac_2xx_names_the_uas_as_refresher() -> None:
    timer = SessionTimer(prefer_refresh=False)
    timer.on_response(reply(200, ("Session-Expires", "900;refresher=uas"), ("Require", "timer")))
    assert timer.active and timer.we_refresh is False
    assert timer.interval == 900
    # A refresh we send keeps the UAS (the peer) as refresher.
    assert header(timer.request_headers(), "Session-Expires") == "900;refresher=uas"


def test_uac_2xx_with_uac_refresher_and_compact_form() -> None:
    timer = SessionTimer()
    timer.on_response(reply(200, ("x", "1200;refresher=uac")))
    assert timer.we_refresh is True and timer.interval == 1200
    assert header(timer.request_headers(), "Session-Expires") == "1200;refresher=uac"


def test_uac_2xx_without_session_expires_means_we_refresh() -> None:
    timer = SessionTimer(interval=600)
    timer.on_response(reply(200))
    # 7.2: a UAS without timer support; we refresh with the interval we asked for.
    assert timer.we_refresh is True and timer.interval == 600


def test_uac_rejects_non_2xx_and_bad_header() -> None:
    timer = SessionTimer()
    with pytest.raises(SessionTimerError, match="Expected a 2xx"):
        timer.on_response(reply(486))
    with pytest.raises(SessionTimerError, match="Session-Expires"):
        timer.on_response(reply(200, ("Session-Expires", "later")))


def test_uac_422_raises_interval_to_min_se() -> None:
    timer = SessionTimer(interval=300, min_se=90)
    timer.on_422(reply(422, ("Min-SE", "1000")))
    assert timer.interval == 1000 and timer.min_se == 1000
    headers = timer.request_headers()
    assert header(headers, "Session-Expires") == "1000;refresher=uac"
    assert header(headers, "Min-SE") == "1000"
    # A second 422 asking for no more than we already send would loop: refuse.
    with pytest.raises(SessionTimerError, match="not above"):
        timer.on_422(reply(422, ("Min-SE", "1000")))


def test_uac_422_errors() -> None:
    timer = SessionTimer()
    with pytest.raises(SessionTimerError, match="no Min-SE"):
        timer.on_422(reply(422))
    with pytest.raises(SessionTimerError, match="Expected a 422"):
        timer.on_422(reply(500, ("Min-SE", "3600")))
    with pytest.raises(SessionTimerError, match="Bad Min-SE"):
        timer.on_422(reply(422, ("Min-SE", "x")))


# -- UAS side ---------------------------------------------------------------------


def test_uas_rejects_too_small_interval_with_422() -> None:
    timer = SessionTimer(min_se=120)
    request = invite(("Supported", "timer"), ("Session-Expires", "100"))
    with pytest.raises(IntervalTooSmall) as info:
        timer.on_request(request)
    assert info.value.min_se == 120 and info.value.requested == 100
    assert info.value.headers() == [("Min-SE", "120")]
    assert not timer.active


def test_uas_does_not_422_a_uac_without_timer_support() -> None:
    timer = SessionTimer(min_se=120)
    timer.on_request(invite(("Session-Expires", "100")))  # inserted by a proxy
    assert timer.interval == 100 and timer.we_refresh is True
    assert timer.response_headers() == [("Session-Expires", "100;refresher=uas")]


@pytest.mark.parametrize(
    ("supports", "param", "prefer", "expected"),
    [
        (False, "", True, "uas"),
        (False, "", False, "uas"),
        (False, ";refresher=uac", False, "uas"),  # the UAC cannot refresh
        (True, "", True, "uas"),
        (True, "", False, "uac"),
        (True, ";refresher=uac", True, "uac"),
        (True, ";refresher=uas", False, "uas"),
    ],
)
def test_uas_refresher_choice_rfc4028_9(
    supports: bool, param: str, prefer: bool, expected: str
) -> None:
    headers = [("Session-Expires", f"1800{param}")]
    if supports:
        headers.append(("Supported", "100rel, timer"))
    timer = SessionTimer(prefer_refresh=prefer)
    timer.on_request(invite(*headers))
    response = timer.response_headers()
    assert header(response, "Session-Expires") == f"1800;refresher={expected}"
    assert timer.we_refresh is (expected == "uas")
    # Require: timer whenever the UAC supports it, and never when it does not.
    assert (header(response, "Require") == "timer") is supports


def test_uas_may_lower_but_not_raise_or_go_below_request_min_se() -> None:
    timer = SessionTimer(interval=600)
    timer.on_request(invite(("Supported", "timer"), ("Session-Expires", "1800")))
    assert timer.interval == 600
    timer = SessionTimer(interval=600)
    timer.on_request(invite(("Supported", "timer"), ("Session-Expires", "1800"), ("Min-SE", "900")))
    assert timer.interval == 900
    timer = SessionTimer(interval=1800)
    timer.on_request(invite(("Supported", "timer"), ("Session-Expires", "300")))
    assert timer.interval == 300
    # A later refresh asking for more gets our preference again, not the old 300.
    timer.on_request(invite(("Supported", "timer"), ("Session-Expires", "3600")))
    assert timer.interval == 1800


def test_uas_asks_for_a_timer_when_request_has_none() -> None:
    timer = SessionTimer(interval=1200, prefer_refresh=False)
    timer.on_request(invite(("Supported", "timer"), ("Min-SE", "1500")))
    assert timer.interval == 1500
    assert timer.response_headers() == [
        ("Session-Expires", "1500;refresher=uac"),
        ("Require", "timer"),
    ]
    legacy = SessionTimer(prefer_refresh=False)
    legacy.on_request(invite())
    assert legacy.response_headers() == [("Session-Expires", "1800;refresher=uas")]


def test_uas_rejects_malformed_headers() -> None:
    with pytest.raises(SessionTimerError, match="Bad Session-Expires"):
        SessionTimer().on_request(invite(("Session-Expires", "1800;refresher=both")))
    with pytest.raises(SessionTimerError, match="Bad Min-SE"):
        SessionTimer().on_request(invite(("Session-Expires", "1800"), ("Min-SE", "")))


def test_inactive_timer_has_no_headers_or_deadlines() -> None:
    timer = SessionTimer()
    assert timer.response_headers() == []
    assert timer.refresh_deadline(10.0) is None
    assert timer.expiry_deadline(10.0) is None
    timer.refreshed(10.0)
    assert timer.deadline is None and timer.on_timer(1e9) is None


# -- deadlines (RFC 4028 10) ------------------------------------------------------


def test_refresher_deadlines() -> None:
    timer = SessionTimer()
    timer.on_response(reply(200, ("Session-Expires", "1800;refresher=uac")))
    assert timer.refresh_deadline(100.0) == 1000.0  # half the interval
    assert timer.expiry_deadline(100.0) == 1900.0  # the full interval
    timer.refreshed(100.0)
    assert timer.deadline == 1000.0
    assert timer.on_timer(999.0) is None
    assert timer.on_timer(1000.0) is SessionEvent.REFRESH
    assert timer.on_timer(1000.0) is None  # fires once
    assert timer.deadline == 1900.0
    # The refresh succeeded at 1001: deadlines move.
    timer.refreshed(1001.0)
    assert timer.deadline == 1901.0
    # This time the refresh gets no answer: the session expires.
    assert timer.on_timer(1901.0) is SessionEvent.REFRESH
    assert timer.on_timer(2801.0) is SessionEvent.EXPIRED
    assert timer.deadline is None


@pytest.mark.parametrize(("interval", "expiry"), [(1800, 1768.0), (90, 60.0), (60, 40.0)])
def test_non_refresher_expiry_is_interval_minus_min_32_third(interval: int, expiry: float) -> None:
    timer = SessionTimer(interval=interval, min_se=min(interval, 90), prefer_refresh=False)
    timer.on_request(invite(("Supported", "timer"), ("Session-Expires", str(interval))))
    assert timer.we_refresh is False
    assert timer.refresh_deadline(0.0) is None
    assert timer.expiry_deadline(0.0) == pytest.approx(expiry)
    timer.refreshed(0.0)
    assert timer.deadline == pytest.approx(expiry)
    assert timer.on_timer(expiry - 0.001) is None
    assert timer.on_timer(expiry) is SessionEvent.EXPIRED


def test_expiry_wins_when_both_are_due_and_stop_clears() -> None:
    timer = SessionTimer()
    timer.on_response(reply(200))
    timer.refreshed(0.0)
    assert timer.on_timer(5000.0) is SessionEvent.EXPIRED
    timer.refreshed(6000.0)
    timer.stop()
    assert not timer.active and timer.deadline is None
