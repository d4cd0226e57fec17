"""Tests for gateway.sip.message: parsing, serializing, stream framing, building responses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.headers import CSeq, HeaderError, Via
from gateway.sip.message import (
    MAX_HEADER_LENGTH,
    MAX_HEADERS,
    MAX_MESSAGE,
    Headers,
    KeepAlive,
    ParseError,
    Request,
    Response,
    StreamFramer,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse,
)
from gateway.sip.uri import SipUri, UriError

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
)
CL = f"Content-Length: {len(SDP)}".encode()


def request_bytes(
    *,
    method: str = "INVITE",
    extra: str = "",
    body: bytes = SDP,
    length: int | None = None,
    cseq: str | None = None,
) -> bytes:
    head = (
        f"{method} sip:1002@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-1;rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:1001@127.0.0.1>;tag=a1\r\n'
        "To: <sip:1002@127.0.0.1>\r\n"
        "Call-ID: call-1@198.51.100.7\r\n"
        f"CSeq: {cseq or '1 ' + method}\r\n"
        "Contact: <sip:1001@198.51.100.7:5062>\r\n"
        f"{extra}"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    return head.encode() + body


def parse_request(data: bytes) -> Request:
    message = parse(data)
    assert isinstance(message, Request)
    return message


def parse_response(data: bytes) -> Response:
    message = parse(data)
    assert isinstance(message, Response)
    return message


def reason_of(data: bytes) -> str:
    with pytest.raises(ParseError) as info:
        parse(data)
    return str(info.value)


# ---- parsing -----------------------------------------------------------------------------------


def test_parse_request() -> None:
    request = parse_request(request_bytes())
    assert request.method == "INVITE"
    assert request.uri == "sip:1002@127.0.0.1"
    assert request.body == SDP
    assert request.call_id == "call-1@198.51.100.7"
    assert request.cseq == CSeq(1, "INVITE")
    assert request.top_via == Via(
        "UDP", "198.51.100.7", 5062, {"branch": "z9hG4bK-1", "rport": None}
    )
    assert request.from_.display == "Alice"
    assert request.from_.tag == "a1"
    assert request.to.tag is None
    assert request.parsed_uri == SipUri(user="1002", host="127.0.0.1")
    assert request.headers.get("max-forwards") == "70"


def test_parse_response() -> None:
    data = (
        b"SIP/2.0 183 Session Progress\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-2\r\n"
        b"From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 5 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    response = parse_response(data)
    assert (response.status, response.reason) == (183, "Session Progress")
    assert response.to.tag == "2"
    assert response.cseq == CSeq(5, "INVITE")
    assert response.body == b""


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        (b"SIP/2.0 200 OK", 200, "OK"),
        (b"SIP/2.0 200", 200, ""),
        (b"SIP/2.0 486 Busy  Here, try later", 486, "Busy  Here, try later"),
        ("SIP/2.0 603 Abgelehnt \u2013 Nein".encode(), 603, "Abgelehnt \u2013 Nein"),
        (b"sip/2.0 699 Whatever\tit is", 699, "Whatever\tit is"),
    ],
)
def test_status_line_variants(line: bytes, status: int, reason: str) -> None:
    data = line + b"\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@h>\r\nTo: <sip:b@h>\r\nCall-ID: c\r\n"
    response = parse_response(data + b"CSeq: 1 BYE\r\n\r\n")
    assert (response.status, response.reason) == (status, reason)


def test_compact_forms_map_to_canonical_names() -> None:
    data = (
        b"OPTIONS sip:h SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-3\r\n"
        b"f: <sip:a@h>;tag=1\r\nt: <sip:b@h>\r\ni: compact-call\r\nCSeq: 1 OPTIONS\r\n"
        b"m: <sip:a@10.0.0.1>\r\nk: path, outbound\r\nc: text/plain\r\ne: gzip\r\ns: hi\r\n"
        b"o: presence\r\nu: dialog\r\nx: 1800\r\nr: <sip:c@h>\r\nb: <sip:d@h>\r\ny: abc\r\n"
        b"l: 0\r\n\r\n"
    )
    request = parse_request(data)
    assert [name for name, _value in request.headers] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Supported", "Content-Type",
        "Content-Encoding", "Subject", "Event", "Allow-Events", "Session-Expires", "Refer-To",
        "Referred-By", "Identity", "Content-Length",
    ]  # fmt: skip
    assert request.call_id == "compact-call"
    assert request.headers.get("i") == "compact-call"
    assert request.headers.get_list("Supported") == ["path", "outbound"]
    out = request.to_bytes()
    assert b"\r\nCall-ID: compact-call\r\n" in out
    assert b"\r\ni:" not in out


def test_header_names_are_case_insensitive_and_canonical() -> None:
    data = (
        b"BYE sip:h SIP/2.0\r\nVIA: SIP/2.0/UDP h;branch=z9hG4bK-4\r\nfrom: <sip:a@h>;tag=1\r\n"
        b"tO: <sip:b@h>;tag=2\r\ncall-id: x\r\ncseq: 2 BYE\r\nmax-forwards: 70\r\n"
        b'www-authenticate: Digest realm="x"\r\nX-Custom-HEADER: kept\r\ncontent-length: 0\r\n\r\n'
    )
    request = parse_request(data)
    assert [name for name, _value in request.headers] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards", "WWW-Authenticate",
        "X-Custom-HEADER", "Content-Length",
    ]  # fmt: skip
    assert request.headers.get("x-custom-header") == "kept"
    assert "X-CUSTOM-header" in request.headers


def test_folded_headers_are_unfolded() -> None:
    extra = "Subject: I know you're there,\r\n   pick up the phone\r\n\t and talk to me!\r\n"
    request = parse_request(request_bytes(extra=extra))
    assert request.headers.get("Subject") == (
        "I know you're there, pick up the phone and talk to me!"
    )


def test_folded_empty_first_line() -> None:
    request = parse_request(request_bytes(extra="Subject:\r\n  folded\r\n"))
    assert request.headers.get("Subject") == "folded"


def test_leading_crlfs_are_skipped() -> None:
    assert parse_request(b"\r\n\r\n\r\n" + request_bytes()).method == "INVITE"


def test_bare_lf_line_ends_are_accepted() -> None:
    data = request_bytes(body=b"hello").replace(b"\r\n", b"\n")
    request = parse_request(data)
    assert request.call_id == "call-1@198.51.100.7"
    assert request.body == b"hello"


def test_bare_cr_inside_header_is_refused() -> None:
    assert reason_of(request_bytes(extra="Subject: a\rb\r\n")) == "Bad line ending"


def test_repeated_and_comma_joined_headers() -> None:
    extra = "Route: <sip:p1@h;lr>, <sip:p2@h;lr>\r\nRoute: <sip:p3@h;lr>\r\n"
    request = parse_request(request_bytes(extra=extra))
    assert request.headers.get("Route") == "<sip:p1@h;lr>, <sip:p2@h;lr>"
    assert request.headers.get_all("Route") == ["<sip:p1@h;lr>, <sip:p2@h;lr>", "<sip:p3@h;lr>"]
    assert request.headers.get_list("Route") == ["<sip:p1@h;lr>", "<sip:p2@h;lr>", "<sip:p3@h;lr>"]


def test_vias_split_and_ordered() -> None:
    data = request_bytes().replace(
        b"Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-1;rport\r\n",
        b"Via: SIP/2.0/UDP a.example;branch=z9hG4bK-a, SIP/2.0/TCP b.example;branch=z9hG4bK-b\r\n"
        b"Via: SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bK-c\r\n",
    )
    request = parse_request(data)
    assert [v.branch for v in request.vias] == ["z9hG4bK-a", "z9hG4bK-b", "z9hG4bK-c"]
    assert request.top_via.host == "a.example"
    assert request.vias[2].host == "2001:db8::1"


def test_udp_bytes_after_body_are_ignored() -> None:
    request = parse_request(request_bytes() + b"garbage after the body")
    assert request.body == SDP


def test_udp_without_content_length_takes_the_rest() -> None:
    data = request_bytes().replace(f"Content-Length: {len(SDP)}\r\n".encode(), b"")
    request = parse_request(data)
    assert request.body == SDP
    assert "Content-Length" not in request.headers


def test_headers_without_final_empty_line_on_udp() -> None:
    data = (
        b"OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK-5\r\nFrom: <sip:a@h>;tag=1\r\n"
    )
    data += b"To: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
    request = parse_request(data)
    assert request.body == b""
    assert request.call_id == "c"


def test_content_length_zero_with_trailing_bytes() -> None:
    assert parse_request(request_bytes(body=b"", length=0) + b"\r\n").body == b""


def test_repeated_equal_content_length_is_fine() -> None:
    extra = f"Content-Length: {len(SDP)}\r\n"
    assert parse_request(request_bytes(extra=extra)).body == SDP


def test_content_length_with_leading_zeros() -> None:
    data = request_bytes(body=b"abc", length=0).replace(
        b"Content-Length: 0", b"Content-Length: 0003"
    )
    assert parse_request(data).body == b"abc"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (request_bytes(length=len(SDP) + 1), "Content-Length larger than body"),
        (request_bytes(length=10**30), "Content-Length larger than body"),
        (request_bytes(length=-1), "Bad Content-Length"),
        (request_bytes(extra="Content-Length: 5\r\n"), "Bad Content-Length"),
        (request_bytes().replace(CL, b"Content-Length: 12x"), "Bad Content-Length"),
        (request_bytes().replace(CL, b"Content-Length: \xd9\xa1"), "Bad Content-Length"),
        (request_bytes(cseq="1 BYE"), "CSeq method mismatch"),
        (request_bytes(cseq="x INVITE"), "Bad CSeq"),
        (
            request_bytes().replace(b"Call-ID: call-1@198.51.100.7\r\n", b""),
            "Missing header: Call-ID",
        ),
        (request_bytes().replace(b"Call-ID: call-1@198.51.100.7", b"Call-ID:"), "Bad Call-ID"),
        (request_bytes().replace(b"Max-Forwards: 70", b"Max-Forwards: many"), "Bad Max-Forwards"),
        (request_bytes().replace(b"SIP/2.0\r\n", b"SIP/2.1\r\n", 1), "Unsupported SIP version"),
        (b"INVITE sip:h\r\n\r\n", "Malformed request line"),
        (b"\r\n\r\n", "Empty message"),
        (request_bytes(extra="NoColonHere\r\n"), "Header without colon"),
        (request_bytes(extra="Bad Name: x\r\n"), "Bad header name"),
        (request_bytes(extra="Subject: a\x00b\r\n"), "NUL byte in header"),
    ],
)
def test_refused_messages(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


def test_parse_error_partial_lets_caller_answer_400() -> None:
    with pytest.raises(ParseError) as info:
        parse(request_bytes(length=len(SDP) + 50))
    partial = info.value.partial
    assert partial is not None
    assert partial.method == "INVITE"
    assert partial.call_id == "call-1@198.51.100.7"
    assert [name for name, _v in partial.headers] == ["Via", "From", "To", "Call-ID", "CSeq"]
    response = make_response(partial, 400, str(info.value))
    assert response.to_bytes().startswith(b"SIP/2.0 400 Content-Length larger than body\r\n")


def test_parse_error_partial_for_cseq_mismatch_and_version() -> None:
    with pytest.raises(ParseError) as info:
        parse(request_bytes(cseq="1 BYE"))
    assert info.value.partial is not None
    assert info.value.partial.cseq == CSeq(1, "BYE")
    with pytest.raises(ParseError) as info:
        parse(request_bytes().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1))
    assert info.value.partial is not None


def test_parse_error_partial_survives_a_bad_header_line() -> None:
    with pytest.raises(ParseError) as info:
        parse(request_bytes(extra="this line is broken\r\n"))
    assert info.value.partial is not None
    assert info.value.partial.to.uri == SipUri(user="1002", host="127.0.0.1")


def test_parse_error_partial_keeps_what_parses_when_the_via_does() -> None:
    """A 400 needs only the Via to be addressed and matched (RFC 3261 18.2.2, 17.1.3)."""
    missing = request_bytes().replace(b"Call-ID: call-1@198.51.100.7\r\n", b"")
    broken = request_bytes(length=999).replace(b"From: ", b"From: <broken")
    for data, absent in ((missing, "Call-ID"), (broken, "From")):
        with pytest.raises(ParseError) as info:
            parse(data)
        partial = info.value.partial
        assert partial is not None
        assert partial.top_via.branch == "z9hG4bK-1"
        assert absent not in partial.headers


@pytest.mark.parametrize(
    "data",
    [
        request_bytes(length=999).replace(b"SIP/2.0/UDP 198", b"SIP/2.0/UDP x y 198"),
        request_bytes().replace(
            b"Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-1;rport\r\n", b""
        ),
        b"GARBAGE\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nContent-Length: 3\r\n\r\n",
        b"x" * (MAX_MESSAGE + 1),
    ],
)
def test_parse_error_without_partial(data: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse(data)
    assert info.value.partial is None


def test_non_utf8_header_bytes_round_trip_identically() -> None:
    data = request_bytes(extra="Subject: caf\xe9 \xff\xfe\r\n".encode("latin-1").decode("latin-1"))
    data = data.replace("caf\u00e9 \u00ff\u00fe".encode(), b"caf\xe9 \xff\xfe")
    request = parse_request(data)
    assert request.headers.get("Subject") is not None
    assert request.to_bytes() == data


def test_utf8_header_values_decode() -> None:
    data = request_bytes(extra="Subject: \u4f60\u597d\r\n")
    assert parse_request(data).headers.get("Subject") == "\u4f60\u597d"


# ---- limits ------------------------------------------------------------------------------------


def test_message_size_limit() -> None:
    small = request_bytes(body=b"x" * (MAX_MESSAGE - len(request_bytes(body=b"")) - 10))
    assert len(small) <= MAX_MESSAGE
    parse_request(small)
    assert reason_of(request_bytes(body=b"x" * MAX_MESSAGE)) == "Message too large"


def test_header_count_limit() -> None:
    fixed = 8  # headers request_bytes always writes
    ok = "".join(f"X-H{i}: {i}\r\n" for i in range(MAX_HEADERS - fixed))
    assert len(parse_request(request_bytes(extra=ok)).headers) == MAX_HEADERS
    assert reason_of(request_bytes(extra=ok + "X-One-Too-Many: 1\r\n")) == "Too many headers"


def test_header_length_limit() -> None:
    ok = "Subject: " + "a" * (MAX_HEADER_LENGTH - len("Subject: ")) + "\r\n"
    parse_request(request_bytes(extra=ok))
    assert reason_of(request_bytes(extra=ok.replace("a", "aa", 1))) == "Header too long"


def test_header_length_limit_applies_after_unfolding() -> None:
    folded = "Subject: x" + "\r\n " + ("a" * 8000) + "\r\n " + ("b" * 8400) + "\r\n"
    assert reason_of(request_bytes(extra=folded)) == "Header too long"


def test_real_traffic_sizes_parse() -> None:
    vias = "".join(
        f"Via: SIP/2.0/UDP proxy{i}.example:5060;branch=z9hG4bK-{i}\r\n" for i in range(40)
    )
    routes = "Record-Route: " + ", ".join(f"<sip:p{i}.example;lr>" for i in range(60)) + "\r\n"
    request = parse_request(request_bytes(extra=vias + routes + "X-Big: " + "b" * 8000 + "\r\n"))
    assert len(request.vias) == 41
    assert len(request.headers.get_list("Record-Route")) == 60


# ---- Headers -----------------------------------------------------------------------------------


def test_headers_methods() -> None:
    headers = Headers([("Via", "v1"), ("From", "f"), ("Via", "v2"), ("x-a", "1")])
    assert headers.get("via") == "v1"
    assert headers.get("v") == "v1"
    assert headers.get("Nope") is None
    assert headers.get_all("VIA") == ["v1", "v2"]
    headers.prepend("Via", "v0")
    assert list(headers) == [
        ("Via", "v0"),
        ("Via", "v1"),
        ("From", "f"),
        ("Via", "v2"),
        ("x-a", "1"),
    ]
    headers.prepend("Route", "r")
    assert next(iter(headers)) == ("Route", "r")
    headers.set("via", "only")
    assert list(headers) == [("Route", "r"), ("Via", "only"), ("From", "f"), ("x-a", "1")]
    headers.set("X-New", "n")
    assert list(headers)[-1] == ("X-New", "n")
    headers.add("i", "cid")
    assert list(headers)[-1] == ("Call-ID", "cid")
    headers.remove("VIA")
    assert "Via" not in headers
    assert "x-A" in headers
    assert 42 not in headers
    assert len(headers) == 5


def test_headers_copy_is_independent() -> None:
    headers = Headers([("To", "t")])
    other = headers.copy()
    other.add("From", "f")
    assert list(headers) == [("To", "t")]
    assert other != headers
    assert Headers([("To", "t")]) == headers


@pytest.mark.parametrize("value", ["a\r\nInjected: yes", "a\nb", "a\rb", "a\x00b"])
def test_headers_refuse_values_that_would_smuggle_lines(value: str) -> None:
    headers = Headers()
    for method in (headers.add, headers.set, headers.prepend):
        with pytest.raises(HeaderError):
            method("Subject", value)


def test_headers_refuse_bad_names() -> None:
    with pytest.raises(HeaderError):
        Headers().add("Bad Name", "x")
    with pytest.raises(HeaderError):
        Headers().add("", "x")


# ---- properties and caching --------------------------------------------------------------------


def test_structured_properties_are_cached() -> None:
    request = parse_request(request_bytes())
    assert request.top_via is request.top_via
    assert request.from_ is request.from_
    assert request.parsed_uri is request.parsed_uri


def test_cached_values_follow_header_changes() -> None:
    request = parse_request(request_bytes())
    top = request.top_via
    top.params["received"] = "203.0.113.1"
    request.headers.set("Via", str(top))
    assert request.top_via.params["received"] == "203.0.113.1"
    assert request.vias[0].params["received"] == "203.0.113.1"
    request.headers.set("To", "<sip:1002@127.0.0.1>;tag=z")
    assert request.to.tag == "z"
    request.headers.set("CSeq", "7 INVITE")
    assert request.cseq.seq == 7
    request.uri = "sip:other@h"
    assert isinstance(request.parsed_uri, SipUri)
    assert request.parsed_uri.user == "other"


def test_vias_returns_a_copy_of_the_list() -> None:
    request = parse_request(request_bytes())
    request.vias.clear()
    assert len(request.vias) == 1


def test_missing_or_bad_headers_raise_header_error_from_properties() -> None:
    request = Request("OPTIONS", "sip:h", Headers([("To", "<broken")]))
    for name in ("call_id", "cseq", "top_via", "vias", "from_"):
        if name == "vias":
            assert request.vias == []
            continue
        with pytest.raises(HeaderError):
            getattr(request, name)
    with pytest.raises(HeaderError):
        _ = request.to
    request.uri = "sip:bad host"
    with pytest.raises(UriError):
        _ = request.parsed_uri


def test_equality_ignores_caches() -> None:
    a = parse_request(request_bytes())
    b = parse_request(request_bytes())
    _ = a.top_via, a.to
    assert a == b


# ---- serializing -------------------------------------------------------------------------------


def test_to_bytes_sets_content_length() -> None:
    request = Request(
        "MESSAGE", "sip:h", Headers([("Content-Length", "999"), ("Subject", "s")]), b"hello"
    )
    assert request.to_bytes() == (
        b"MESSAGE sip:h SIP/2.0\r\nContent-Length: 5\r\nSubject: s\r\n\r\nhello"
    )
    response = Response(200, "OK", Headers([("l", "1"), ("Content-Length", "2")]))
    assert response.to_bytes() == b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert Response(100, "Trying", Headers()).to_bytes() == (
        b"SIP/2.0 100 Trying\r\nContent-Length: 0\r\n\r\n"
    )


def test_serialize_then_parse_gives_equal_message() -> None:
    original = parse_request(request_bytes(extra="Subject: x\r\n  y\r\n"))
    assert parse(original.to_bytes()) == original


# ---- make_response and identifiers -------------------------------------------------------------


def test_make_response_copies_dialog_headers() -> None:
    data = request_bytes().replace(
        b"Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-1;rport\r\n",
        b"Via: SIP/2.0/UDP a;branch=z9hG4bK-a\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK-b\r\n",
    )
    request = parse_request(data)
    response = make_response(request, 180, to_tag="t1")
    assert (response.status, response.reason) == (180, "Ringing")
    assert list(response.headers) == [
        ("Via", "SIP/2.0/UDP a;branch=z9hG4bK-a"),
        ("Via", "SIP/2.0/UDP b;branch=z9hG4bK-b"),
        ("From", '"Alice" <sip:1001@127.0.0.1>;tag=a1'),
        ("To", "<sip:1002@127.0.0.1>;tag=t1"),
        ("Call-ID", "call-1@198.51.100.7"),
        ("CSeq", "1 INVITE"),
    ]
    assert response.to.tag == "t1"
    assert response.body == b""


def test_make_response_keeps_existing_to_tag() -> None:
    request = parse_request(
        request_bytes().replace(b"To: <sip:1002@127.0.0.1>", b"To: sip:1002@h;tag=x")
    )
    response = make_response(request, 200, to_tag="y")
    assert response.headers.get("To") == "sip:1002@h;tag=x"


def test_make_response_bare_to_gets_header_tag() -> None:
    request = parse_request(request_bytes().replace(b"To: <sip:1002@127.0.0.1>", b"To: sip:1002@h"))
    response = make_response(request, 486, to_tag="q")
    assert response.reason == "Busy Here"
    assert response.to.tag == "q"
    assert response.to.uri == SipUri(user="1002", host="h")


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (100, "Trying"),
        (200, "OK"),
        (401, "Unauthorized"),
        (407, "Proxy Authentication Required"),
        (481, "Call/Transaction Does Not Exist"),
        (513, "Message Too Large"),
        (603, "Decline"),
        (299, "Success"),
        (499, "Client Error"),
    ],
)
def test_default_reason_phrases(status: int, reason: str) -> None:
    assert make_response(parse_request(request_bytes()), status).reason == reason


def test_make_response_refuses_bad_status_and_reason() -> None:
    request = parse_request(request_bytes())
    with pytest.raises(ValueError):
        make_response(request, 99)
    with pytest.raises(ValueError):
        make_response(request, 700)
    with pytest.raises(ValueError):
        make_response(request, 400, "Bad\r\nX: y")


def test_identifiers() -> None:
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100
    assert all(b.startswith("z9hG4bK") and len(b) > 16 for b in branches)
    assert len({new_tag() for _ in range(100)}) == 100
    assert len({new_call_id() for _ in range(100)}) == 100
    assert new_tag().isalnum() and new_call_id().isalnum()


# ---- stream framing ----------------------------------------------------------------------------


def drain(framer: StreamFramer) -> list[bytes | KeepAlive]:
    out: list[bytes | KeepAlive] = []
    while (item := framer.next_message()) is not None:
        out.append(item)
    return out


def test_framer_whole_and_pipelined_messages() -> None:
    one, two = request_bytes(), request_bytes(method="BYE", body=b"")
    framer = StreamFramer()
    framer.feed(one + two + one[:10])
    assert drain(framer) == [one, two]
    framer.feed(one[10:])
    assert drain(framer) == [one]
    assert parse_request(one).body == SDP


def test_framer_byte_by_byte() -> None:
    stream = b"\r\n\r\n" + request_bytes() + b"\r\n" + request_bytes(method="BYE", body=b"")
    framer = StreamFramer()
    out: list[bytes | KeepAlive] = []
    for i in range(len(stream)):
        framer.feed(stream[i : i + 1])
        out += drain(framer)
    assert out == [KeepAlive(pong=True), request_bytes(), request_bytes(method="BYE", body=b"")]


def test_framer_keepalives() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n\r\n\r\n")
    assert drain(framer) == [KeepAlive(pong=True), KeepAlive(pong=True)]
    framer.feed(b"\r\n")
    assert drain(framer) == []  # may still become a ping
    framer.feed(request_bytes(body=b""))
    assert drain(framer) == [request_bytes(body=b"")]  # it was a lone CRLF: skipped


def test_framer_bare_lf_header_end() -> None:
    message = request_bytes(body=b"ab").replace(b"\r\n", b"\n")
    framer = StreamFramer()
    framer.feed(message + message)
    assert drain(framer) == [message, message]


def test_framer_folded_content_length() -> None:
    message = request_bytes(body=b"abc").replace(b"Content-Length: 3", b"Content-Length:\r\n 3")
    framer = StreamFramer()
    framer.feed(message)
    assert drain(framer) == [message]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (request_bytes().replace(CL + b"\r\n", b""), "Missing Content-Length on stream"),
        (request_bytes(length=-5), "Bad Content-Length"),
        (request_bytes(extra="l: 4\r\n"), "Bad Content-Length"),
        (request_bytes(length=MAX_MESSAGE), "Message too large"),
        (request_bytes(length=10**40), "Message too large"),
    ],
)
def test_framer_errors(data: bytes, reason: str) -> None:
    framer = StreamFramer()
    framer.feed(data)
    with pytest.raises(ParseError) as info:
        framer.next_message()
    assert str(info.value) == reason
    with pytest.raises(ParseError):
        framer.next_message()  # the error sticks: the connection is to be closed


def test_framer_endless_headers_do_not_grow_memory() -> None:
    framer = StreamFramer()
    chunk = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    framer.feed(b"INVITE sip:h SIP/2.0\r\n")
    with pytest.raises(ParseError) as info:
        for _ in range(1000):
            framer.feed(chunk)
            assert len(framer._buffer) <= MAX_MESSAGE + len(chunk)
            assert framer.next_message() is None
    assert str(info.value) == "Message too large"
    framer.feed(chunk)
    assert len(framer._buffer) == 0


def test_framer_bounds_memory_even_without_next_message() -> None:
    framer = StreamFramer()
    for _ in range(200):
        framer.feed(b"Y" * 4096)
    assert len(framer._buffer) <= MAX_MESSAGE + 4096
    with pytest.raises(ParseError, match="Message too large"):
        framer.next_message()


# ---- properties --------------------------------------------------------------------------------

_token = st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{1,12}", fullmatch=True)
_value = st.text(
    st.characters(exclude_categories=["Cs", "Cc"]) | st.sampled_from(["\t", " "]), max_size=40
).map(lambda s: s.strip(" \t"))
_KNOWN_LOWER = {
    "via", "from", "to", "call-id", "cseq", "content-length", "contact", "route", "subject",
    "max-forwards", "content-type", "supported", "event", "identity", "refer-to", "allow",
}  # fmt: skip


def _is_extension_name(name: str) -> bool:
    return len(name) > 1 and name.lower() not in _KNOWN_LOWER


_extra_name = _token.filter(_is_extension_name)


@st.composite
def messages(draw: st.DrawFn) -> Request | Response:
    method = draw(_token)
    headers = Headers(
        [
            ("Via", f"SIP/2.0/UDP h{draw(st.integers(0, 9))}.example;branch=z9hG4bK{draw(_token)}"),
            ("From", f"<sip:a@h>;tag={draw(_token)}"),
            ("To", "<sip:b@h>"),
            ("Call-ID", draw(_token)),
        ]
    )
    for name, value in draw(st.lists(st.tuples(_extra_name, _value), max_size=8)):
        headers.add(name, value)
    body = draw(st.binary(max_size=200))
    headers.add("Content-Length", str(len(body)))
    if draw(st.booleans()):
        headers.add("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}")
        return Request(method, f"sip:{draw(_token)}@h", headers, body)
    headers.add("CSeq", f"1 {method}")
    return Response(draw(st.integers(100, 699)), draw(_value), headers, body)


@given(messages())
def test_property_serialize_parse_round_trip(message: Request | Response) -> None:
    assert parse(message.to_bytes()) == message


@settings(max_examples=50)
@given(st.lists(messages(), min_size=1, max_size=4), st.data())
def test_property_framer_any_split(batch: list[Request | Response], data: st.DataObject) -> None:
    stream = b"".join(m.to_bytes() for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    framer = StreamFramer()
    out: list[bytes | KeepAlive] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        framer.feed(stream[start:end])
        out += drain(framer)
    assert [parse(item) for item in out if isinstance(item, bytes)] == batch


@given(st.binary(max_size=300))
def test_property_hostile_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        message = parse(data)
    except ParseError:
        return
    message.to_bytes()


@given(
    st.lists(
        st.sampled_from(
            [
                b"\r\n",
                b"INVITE ",
                b"sip:h ",
                b"SIP/2.0",
                b"Via: x",
                b":",
                b" ",
                b"Content-Length: 3",
                b"l: 1",
                b"\n",
                b"abc",
            ]
        ),
        max_size=30,
    )
)
def test_property_hostile_streams_raise_only_parse_error(pieces: list[bytes]) -> None:
    framer = StreamFramer()
    try:
        for piece in pieces:
            framer.feed(piece)
            drain(framer)
    except ParseError:
        pass
