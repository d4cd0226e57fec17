"""Tests for gateway.sip.reason: the RFC 3326 Reason header and the RFC 3398 cause mappings."""

from __future__ import annotations

import pytest

from gateway.sip.message import Headers, Request, Response, parse
from gateway.sip.reason import (
    Q850,
    SIP,
    Reason,
    ReasonError,
    cause_text,
    format_reasons,
    message_reasons,
    parse_reason,
    q850_reason,
    q850_to_sip,
    sip_reason,
    sip_to_q850,
)


def bye(*reasons: str) -> Request:
    lines = [
        "BYE sip:gw@198.51.100.1 SIP/2.0",
        "Via: SIP/2.0/UDP 203.0.113.9;branch=z9hG4bKbye1",
        "From: <sip:+8613800138000@203.0.113.9>;tag=carrier",
        "To: <sip:+8613900139001@198.51.100.1>;tag=gw",
        "Call-ID: reason-1",
        "CSeq: 2 BYE",
        *(f"Reason: {value}" for value in reasons),
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


# ---- parsing ----------------------------------------------------------------------------------


def test_parse_q850_with_text() -> None:
    (reason,) = parse_reason('Q.850;cause=16;text="Normal call clearing"')
    assert reason == Reason(Q850, 16, "Normal call clearing")


def test_parse_sip_reason_and_several_values_in_one_header() -> None:
    reasons = parse_reason('SIP;cause=200;text="Call completed elsewhere", Q.850;cause=26')
    assert reasons == [Reason(SIP, 200, "Call completed elsewhere"), Reason(Q850, 26)]


def test_protocol_spelling_is_folded_and_extra_params_kept() -> None:
    (reason,) = parse_reason("q.850 ; cause=17 ; location=LN ; flag")
    assert reason.protocol == Q850
    assert reason.cause == 17
    assert reason.params == (("location", "LN"), ("flag", None))
    assert reason.param("location") == "LN"
    assert str(reason) == "Q.850;cause=17;location=LN;flag"


def test_other_protocols_are_kept_as_written() -> None:
    (reason,) = parse_reason("preemption;cause=1")
    assert reason == Reason("preemption", 1)


def test_quoted_text_with_escapes_and_commas() -> None:
    (reason,) = parse_reason(r'Q.850;cause=21;text="said \"no\", twice \\ end"')
    assert reason.text == 'said "no", twice \\ end'
    assert parse_reason(str(reason)) == [reason]


def test_message_reasons_reads_every_header() -> None:
    message = bye("SIP;cause=480", 'Q.850;cause=19;text="No answer"')
    assert [r.protocol for r in message_reasons(message)] == [SIP, Q850]
    assert message_reasons(bye()) == []


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ("Q.850;cause=abc", "not a decimal number"),
        ("Q.850;cause=", "not a decimal number"),
        ("Q.850;cause=-1", "not a decimal number"),
        ("Q.850;cause=12345678901", "not a decimal number"),
        ("Q.850;cause=128", "outside 0-127"),
        ("SIP;cause=99", "not a status code"),
        ("SIP;cause=700", "not a status code"),
        ("Q.850;cause=16;text=unquoted", "quoted string"),
        ('Q.850;cause=16;text="a""b"', "unescaped quote"),
        ('Q.850;cause=16;text="open', "Bad Reason"),
        ("Q.850;cause=16;cause=17", "Duplicate parameter"),
        ("Q 850;cause=16", "Bad Reason protocol"),
        ("", "Empty Reason"),
        (";cause=16", "Bad Reason protocol"),
        ("Q.850;location=", "bad value"),
    ],
)
def test_malformed_values_get_reason_error(value: str, fault: str) -> None:
    with pytest.raises(ReasonError, match=fault):
        parse_reason(value)


def test_two_values_of_one_protocol_are_refused() -> None:
    with pytest.raises(ReasonError, match=r"Two Reason values for protocol Q\.850"):
        message_reasons(bye("Q.850;cause=16", "q.850;cause=17"))
    with pytest.raises(ReasonError, match="Two Reason values"):
        format_reasons([q850_reason(16), q850_reason(17)])


# ---- building -------------------------------------------------------------------------------


def test_q850_reason_defaults_to_the_cause_name() -> None:
    assert str(q850_reason(17)) == 'Q.850;cause=17;text="User busy"'
    assert str(q850_reason(16, "bye")) == 'Q.850;cause=16;text="bye"'


def test_format_several_reasons_for_one_header() -> None:
    value = format_reasons([sip_reason(486), q850_reason(17)])
    assert value == 'SIP;cause=486, Q.850;cause=17;text="User busy"'
    headers = Headers([("Reason", value)])
    assert parse_reason(headers.get("Reason") or "") == [Reason(SIP, 486), q850_reason(17)]


def test_header_injection_in_text_is_refused() -> None:
    with pytest.raises(ReasonError, match="control character"):
        q850_reason(16, "ok\r\nX-Injected: 1")
    with pytest.raises(ReasonError, match="control character"):
        Reason(SIP, 480, "a\x00b")


def test_quotes_in_text_are_escaped_on_output() -> None:
    reason = Reason(Q850, 21, 'he said "bye" \\')
    assert str(reason) == r'Q.850;cause=21;text="he said \"bye\" \\"'
    assert parse_reason(str(reason)) == [reason]


def test_bad_values_when_building() -> None:
    with pytest.raises(ReasonError, match="not a token"):
        Reason("Q.850 x", 16)
    with pytest.raises(ReasonError, match="outside 0-127"):
        q850_reason(200)
    with pytest.raises(ReasonError, match="lower-case token"):
        Reason(Q850, 16, params=(("Location", "U"),))
    with pytest.raises(ReasonError, match="No reason to format"):
        format_reasons([])


def test_reason_on_a_response_round_trips_through_the_parser() -> None:
    response = Response(503, "Service Unavailable", Headers())
    response.headers.add("Reason", format_reasons([q850_reason(34)]))
    assert message_reasons(response) == [Reason(Q850, 34, "No circuit/channel available")]


# ---- RFC 3398 mappings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "status"),
    [
        (1, 404), (2, 404), (3, 404), (17, 486), (18, 408), (19, 480), (20, 480),
        (21, 403), (22, 410), (23, 410), (26, 404), (27, 502), (28, 484), (29, 501),
        (31, 480), (34, 503), (38, 503), (41, 503), (42, 503), (47, 503), (55, 403),
        (57, 403), (58, 503), (65, 488), (70, 488), (79, 501), (87, 403), (88, 503),
        (102, 504), (111, 500), (127, 500),
    ],
)  # fmt: skip
def test_q850_to_sip_follows_rfc3398_7_2_4_1(cause: int, status: int) -> None:
    assert q850_to_sip(cause) == status


def test_unlisted_causes_fall_back_to_their_class() -> None:
    assert q850_to_sip(44) == 503  # resource unavailable class -> 47
    assert q850_to_sip(25) == 480  # normal class -> 31
    assert q850_to_sip(69) == 501  # not implemented class -> 79
    assert q850_to_sip(100) == 500  # invalid message class -> 95 (no row) -> 500
    assert q850_to_sip(16) == 500  # normal clearing ends calls with BYE, not a response


def test_call_rejected_by_the_user_may_be_603() -> None:
    assert q850_to_sip(21, user_location=True) == 603
    assert q850_to_sip(17, user_location=True) == 486


@pytest.mark.parametrize(
    ("status", "cause"),
    [
        (400, 41), (401, 21), (402, 21), (403, 21), (404, 1), (405, 63), (406, 79),
        (407, 21), (408, 102), (410, 22), (413, 127), (414, 127), (415, 79), (416, 127),
        (420, 127), (421, 127), (423, 127), (480, 18), (481, 41), (482, 25), (483, 25),
        (484, 28), (485, 1), (486, 17), (500, 41), (501, 79), (502, 38), (503, 41),
        (504, 102), (505, 127), (513, 127), (600, 17), (603, 21), (604, 1),
    ],
)  # fmt: skip
def test_sip_to_q850_follows_rfc3398_8_2_6_1(status: int, cause: int) -> None:
    assert sip_to_q850(status) == cause


def test_sip_to_q850_without_a_row() -> None:
    assert sip_to_q850(487) is None
    assert sip_to_q850(488) == 127
    assert sip_to_q850(606) == 127
    assert sip_to_q850(302) == 127


@pytest.mark.parametrize("bad", [-1, 128, 1000])
def test_mapping_refuses_causes_outside_q850(bad: int) -> None:
    with pytest.raises(ReasonError, match="outside 0-127"):
        q850_to_sip(bad)
    with pytest.raises(ReasonError, match="outside 0-127"):
        cause_text(bad)


@pytest.mark.parametrize("bad", [100, 200, 299, 700])
def test_sip_to_q850_refuses_non_failures(bad: int) -> None:
    with pytest.raises(ReasonError, match="not a failure response"):
        sip_to_q850(bad)


def test_cause_texts_for_cdrs() -> None:
    assert cause_text(16) == "Normal call clearing"
    assert cause_text(17) == "User busy"
    assert cause_text(19) == "No answer from user (user alerted)"
    assert cause_text(34) == "No circuit/channel available"
    assert cause_text(127) == "Interworking, unspecified"
    assert cause_text(12) == "Unassigned Q.850 cause 12"
