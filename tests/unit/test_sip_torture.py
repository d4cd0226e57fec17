"""Torture messages for the SIP parser, in the spirit of RFC 4475 (our own messages).

Valid-but-odd messages must parse to the expected values; invalid ones must raise ParseError
with the expected reason (the reason phrase of the 400 the gateway sends back).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.sip.headers import CSeq, HeaderError
from gateway.sip.message import MAX_HEADER_LENGTH, MAX_MESSAGE, ParseError, Request, Response, parse
from gateway.sip.uri import SipUri, TelUri


def msg(*lines: str, body: bytes = b"") -> bytes:
    """Lines joined with CRLF, an empty line, then the body."""
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


BASE = [
    "Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-t0rture",
    "From: <sip:caller@example.net>;tag=f1",
    "To: <sip:callee@example.com>",
    "Call-ID: torture-1@198.51.100.20",
]


def options(*extra: str, cseq: str = "CSeq: 1 OPTIONS", body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}"
    return msg("OPTIONS sip:callee@example.com SIP/2.0", *BASE, cseq, *extra, length, body=body)


def req(data: bytes) -> Request:
    message = parse(data)
    assert isinstance(message, Request)
    return message


def resp(data: bytes) -> Response:
    message = parse(data)
    assert isinstance(message, Response)
    return message


# ---- valid but odd -----------------------------------------------------------------------------


def check_wide_whitespace(data: bytes) -> None:
    request = req(data)
    assert request.top_via.transport == "UDP"
    assert request.top_via.host == "wide.example"
    assert request.top_via.port == 5060
    assert request.top_via.branch == "z9hG4bK-wide"
    assert request.from_.display == "Wide  Open"
    assert request.to.tag is None
    assert request.call_id == "ws-1@wide.example"
    assert request.cseq == CSeq(8, "INVITE")
    assert request.headers.get("Subject") == "lots    of\t space"
    assert request.headers.get("Max-Forwards") == "68"


WIDE_WHITESPACE = msg(
    "INVITE sip:callee@example.com SIP/2.0",
    "Via   :   SIP  /  2.0  /  UDP    wide.example  :  5060  ;  branch  =  z9hG4bK-wide",
    "Max-Forwards:\t68",
    "From  :Wide  Open   <sip:caller@example.net>   ;   tag = f9",
    "To:<sip:callee@example.com>",
    "Call-ID   :    ws-1@wide.example   ",
    "CSeq:  8     INVITE",
    "Subject:    lots    of\t space   ",
    "Content-Length :  0",
)


def check_folded(data: bytes) -> None:
    request = req(data)
    assert request.headers.get("Subject") == "first part second part third part"
    assert request.to.uri == SipUri(user="callee", host="example.com")
    assert request.to.params == {"tag": "t7"}
    assert request.top_via.branch == "z9hG4bK-fold"
    assert request.cseq == CSeq(3, "OPTIONS")


FOLDED = msg(
    "OPTIONS sip:callee@example.com SIP/2.0",
    "Via: SIP/2.0/UDP fold.example",
    "  ;branch=z9hG4bK-fold",
    "From: <sip:caller@example.net>;tag=f1",
    "To:",
    "\t<sip:callee@example.com>",
    "   ;tag=t7",
    "Call-ID: fold@x",
    "CSeq: 3",
    "  OPTIONS",
    "Subject: first part",
    "   second part   ",
    "\t\tthird part",
    "Content-Length: 0",
)


def check_escaped_uris(data: bytes) -> None:
    request = req(data)
    uri = request.parsed_uri
    assert isinstance(uri, SipUri)
    assert uri.user == "bob smith"
    assert uri.password == "pass;word"
    assert uri.params == {"x": "a b"}
    to_uri = request.to.uri
    assert isinstance(to_uri, SipUri)
    assert to_uri.user == "user;par=u@example.net"
    assert to_uri.host == "example.com"
    assert isinstance(request.from_.uri, SipUri)
    assert request.from_.uri.user == "caller"


ESCAPED_URIS = msg(
    "OPTIONS sip:bob%20smith:pass%3bword@example.com;x=a%20b SIP/2.0",
    "Via: SIP/2.0/UDP 198.51.100.20;branch=z9hG4bK-esc",
    "From: <sip:%63aller@example.net>;tag=f1",
    "To: <sip:user;par=u%40example.net@example.com>",
    "Call-ID: esc@x",
    "CSeq: 1 OPTIONS",
    "Content-Length: 0",
)


def check_unknown_headers(data: bytes) -> None:
    request = req(data)
    names = [name for name, _value in request.headers]
    assert "X-!%*_+`'~.Odd" in names
    assert request.headers.get("x-!%*_+`'~.odd") == "value: with colon, and comma"
    assert request.headers.get("NewFangledHeader") == "newfangled value"
    assert request.headers.get_all("P-Foo") == ["1", "2"]
    assert request.to_bytes().lower().count(b"\r\np-foo: ") == 2


UNKNOWN_HEADERS = options(
    "X-!%*_+`'~.Odd: value: with colon, and comma",
    "NewFangledHeader:   newfangled value",
    "P-Foo: 1",
    "p-foo: 2",
)


def check_compact(data: bytes) -> None:
    request = req(data)
    assert [name for name, _value in request.headers] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Supported", "Content-Type",
        "Content-Length",
    ]  # fmt: skip
    assert request.body == b"hi"
    assert request.from_.tag == "cf"
    assert request.headers.get("Content-Type") == "text/plain"


COMPACT = msg(
    "MESSAGE sip:callee@example.com SIP/2.0",
    "v: SIP/2.0/TCP 198.51.100.21;branch=z9hG4bK-compact",
    "f: sip:caller@example.net;tag=cf",
    "t: sip:callee@example.com",
    "i: compact@x",
    "CSeq: 4 MESSAGE",
    "m: <sip:caller@198.51.100.21;transport=tcp>",
    "k: path,outbound",
    "c: text/plain",
    "l: 2",
    body=b"hi",
)


def check_ipv6(data: bytes) -> None:
    request = req(data)
    uri = request.parsed_uri
    assert isinstance(uri, SipUri)
    assert (uri.host, uri.port) == ("2001:db8::10", 5070)
    via = request.top_via
    assert (via.host, via.port) == ("2001:db8::9", 5062)
    assert via.params == {"branch": "z9hG4bK-v6", "rport": None, "received": "2001:db8::99"}
    assert request.vias[1].host == "::ffff:198.51.100.1"
    contact = request.headers.get_list("Contact")
    assert contact == ["<sip:caller@[2001:db8::9]:5062>", "<sip:caller@[2001:db8::a]>;q=0.1"]


IPV6 = msg(
    "OPTIONS sip:[2001:db8::10]:5070 SIP/2.0",
    "Via: SIP/2.0/UDP [2001:db8::9]:5062;branch=z9hG4bK-v6;rport;received=2001:db8::99",
    "Via: SIP/2.0/UDP [::ffff:198.51.100.1];branch=z9hG4bK-v4in6",
    "From: <sip:caller@[2001:db8::9]>;tag=f1",
    "To: <sip:[2001:db8::10]:5070>",
    "Call-ID: v6@2001:db8::9",
    "CSeq: 1 OPTIONS",
    "Contact: <sip:caller@[2001:db8::9]:5062>, <sip:caller@[2001:db8::a]>;q=0.1",
    "Content-Length: 0",
)


def check_long_via_chain(data: bytes) -> None:
    request = req(data)
    vias = request.vias
    assert len(vias) == 70
    assert vias[0].host == "hop0.example"
    assert vias[-1].host == "hop69.example"
    assert [v.branch for v in vias] == [f"z9hG4bK-{i}" for i in range(70)]


LONG_VIA_CHAIN = msg(
    "OPTIONS sip:callee@example.com SIP/2.0",
    *(
        f"Via: SIP/2.0/UDP hop{i}.example;branch=z9hG4bK-{i}, "
        f"SIP/2.0/TCP hop{i + 1}.example:5060;branch=z9hG4bK-{i + 1}"
        for i in range(0, 70, 2)
    ),
    *BASE[1:],
    "CSeq: 1 OPTIONS",
    "Content-Length: 0",
)


def check_quoted_display_names(data: bytes) -> None:
    request = req(data)
    assert request.from_.display == 'The "Boss"; Chief, Officer'
    assert request.from_.tag == "boss"
    assert request.to.display == "semi;colon\\back"
    contacts = request.headers.get_list("Contact")
    assert len(contacts) == 2
    assert contacts[0] == '"Desk, Office" <sip:boss@198.51.100.30>;q=1'


QUOTED_DISPLAY = msg(
    "OPTIONS sip:callee@example.com SIP/2.0",
    BASE[0],
    'From: "The \\"Boss\\"; Chief, Officer" <sip:boss@example.net>;tag=boss',
    'To: "semi;colon\\\\back" <sip:callee@example.com>',
    BASE[3],
    "CSeq: 1 OPTIONS",
    'Contact: "Desk, Office" <sip:boss@198.51.100.30>;q=1, "Mobile" <sip:boss@203.0.113.5>;q=0.5',
    "Content-Length: 0",
)


def check_mixed_case(data: bytes) -> None:
    request = req(data)
    assert request.method == "FooBar"
    assert request.cseq == CSeq(12, "FooBar")
    assert [name for name, _value in request.headers][:6] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards",
    ]  # fmt: skip
    assert request.headers.get("WWW-AUTHENTICATE") == 'Digest realm="x"'
    assert b"\r\nWWW-Authenticate: " in request.to_bytes()


MIXED_CASE = msg(
    "FooBar sip:callee@example.com SIP/2.0",
    "vIa: SIP/2.0/udp 198.51.100.20;BRANCH=z9hG4bK-mixed",
    "FROM: <sip:caller@example.net>;Tag=f1",
    "to: <sip:callee@example.com>",
    "CALL-ID: mixed@x",
    "cseq: 12 FooBar",
    "mAX-fORWARDS: 70",
    'www-authenticate: Digest realm="x"',
    "content-LENGTH: 0",
)


def check_odd_reason(data: bytes) -> None:
    response = resp(data)
    assert response.status == 499
    assert response.reason == "Weird 4xx: über-odd (but legal) \u2603"
    assert response.to.tag == "t-odd"


ODD_REASON = msg(
    "SIP/2.0 499 Weird 4xx: über-odd (but legal) \u2603",
    *BASE[:2],
    "To: <sip:callee@example.com>;tag=t-odd",
    BASE[3],
    "CSeq: 1 OPTIONS",
    "Content-Length: 0",
)


def check_empty_reason(data: bytes) -> None:
    response = resp(data)
    assert (response.status, response.reason) == (200, "")


EMPTY_REASON = msg("SIP/2.0 200 ", *BASE, "CSeq: 1 OPTIONS", "Content-Length: 0")


def check_empty_body(data: bytes) -> None:
    request = req(data)
    assert request.body == b""
    assert request.headers.get("Content-Length") == "0"


EMPTY_BODY_WITH_TRAILER = options() + b"\r\n\r\nstray bytes after the message"


def check_leading_crlf(data: bytes) -> None:
    assert req(data).method == "OPTIONS"


LEADING_CRLF = b"\r\n\r\n\r\n" + options()


def check_empty_values(data: bytes) -> None:
    request = req(data)
    assert request.headers.get("Subject") == ""
    assert request.headers.get_list("Supported") == []
    assert request.headers.get("Organization") == ""


EMPTY_VALUES = options("Subject:", "Supported:   ", "Organization:")


def check_body_with_blank_lines(data: bytes) -> None:
    request = req(data)
    assert request.body.startswith(b"--b1\r\n")
    assert request.body.endswith(b"--b1--\r\n")
    assert request.body.count(b"\r\n\r\n") == 2


MULTIPART = (
    b"--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    b"--b1\r\nContent-Type: text/x\r\n\r\nyo\r\n--b1--\r\n"
)
BODY_WITH_BLANK_LINES = options("Content-Type: multipart/mixed;boundary=b1", body=MULTIPART)


def check_tel_request_uri(data: bytes) -> None:
    request = req(data)
    uri = request.parsed_uri
    assert isinstance(uri, TelUri)
    assert uri.number == "+86-139-0013-9002"
    assert uri.params == {}


TEL_URI = msg(
    "INVITE tel:+86-139-0013-9002 SIP/2.0",
    *BASE,
    "CSeq: 2 INVITE",
    "Content-Length: 0",
)


def check_colons_and_no_space(data: bytes) -> None:
    request = req(data)
    assert request.call_id == "nospace@x"
    assert request.headers.get("Date") == "Sat, 13 Nov 2010 23:29:00 GMT"
    assert request.headers.get("Warning") == '399 gw.example:5060 "odd: but fine"'
    assert request.headers.get("Max-Forwards") == "0"


COLONS = msg(
    "OPTIONS sip:callee@example.com SIP/2.0",
    *BASE[:3],
    "Call-ID:nospace@x",
    "CSeq:1 OPTIONS",
    "Max-Forwards:0",
    "Date: Sat, 13 Nov 2010 23:29:00 GMT",
    'Warning: 399 gw.example:5060 "odd: but fine"',
    "Content-Length:0",
)


def check_bare_lf(data: bytes) -> None:
    request = req(data)
    assert request.call_id == "torture-1@198.51.100.20"
    assert request.body == b"ab"


BARE_LF = options(body=b"ab").replace(b"\r\n", b"\n")


def check_leading_zero_length(data: bytes) -> None:
    assert req(data).body == b"xyz"


LEADING_ZERO_LENGTH = options(body=b"xyz").replace(b"Content-Length: 3", b"Content-Length: 000003")


def check_via_params(data: bytes) -> None:
    via = req(data).top_via
    assert via.params == {
        "branch": "z9hG4bK-p",
        "rport": "",
        "received": "203.0.113.7",
        "ttl": "16",
        "maddr": "239.1.1.1",
        "x-note": '"a;b,c=d"',
        "flag": None,
    }


VIA_PARAMS = msg(
    "OPTIONS sip:callee@example.com SIP/2.0",
    "Via: SIP/2.0/UDP 198.51.100.20;branch=z9hG4bK-p;rport=;received=203.0.113.7;ttl=16"
    ';maddr=239.1.1.1;x-note="a;b,c=d";flag',
    *BASE[1:],
    "CSeq: 1 OPTIONS",
    "Content-Length: 0",
)


def check_many_values(data: bytes) -> None:
    request = req(data)
    assert request.headers.get_list("Allow") == [
        "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "PRACK", "REFER",
    ]  # fmt: skip
    routes = request.headers.get_list("Route")
    assert routes == ["<sip:p1.example;lr>", "<sip:p2.example;lr>", "<sip:p3.example;lr;x=a,b>"]


MANY_VALUES = options(
    "Allow: INVITE,ACK , CANCEL,BYE,OPTIONS,UPDATE",
    "Allow: PRACK, REFER",
    "Route: <sip:p1.example;lr>,<sip:p2.example;lr>",
    "Route: <sip:p3.example;lr;x=a,b>",
)


VALID: list[tuple[str, bytes, Callable[[bytes], None]]] = [
    ("wide whitespace", WIDE_WHITESPACE, check_wide_whitespace),
    ("folded headers", FOLDED, check_folded),
    ("escaped URIs", ESCAPED_URIS, check_escaped_uris),
    ("unknown headers", UNKNOWN_HEADERS, check_unknown_headers),
    ("compact forms", COMPACT, check_compact),
    ("IPv6 everywhere", IPV6, check_ipv6),
    ("70 Vias", LONG_VIA_CHAIN, check_long_via_chain),
    ("quoted display names", QUOTED_DISPLAY, check_quoted_display_names),
    ("mixed case", MIXED_CASE, check_mixed_case),
    ("odd reason phrase", ODD_REASON, check_odd_reason),
    ("empty reason phrase", EMPTY_REASON, check_empty_reason),
    ("empty body, bytes after", EMPTY_BODY_WITH_TRAILER, check_empty_body),
    ("leading CRLFs", LEADING_CRLF, check_leading_crlf),
    ("empty header values", EMPTY_VALUES, check_empty_values),
    ("body with blank lines", BODY_WITH_BLANK_LINES, check_body_with_blank_lines),
    ("tel Request-URI", TEL_URI, check_tel_request_uri),
    ("colons, no spaces", COLONS, check_colons_and_no_space),
    ("bare LF line ends", BARE_LF, check_bare_lf),
    ("leading zeros in Content-Length", LEADING_ZERO_LENGTH, check_leading_zero_length),
    ("many Via params", VIA_PARAMS, check_via_params),
    ("many values per header", MANY_VALUES, check_many_values),
]


@pytest.mark.parametrize(("data", "check"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_odd_message_parses(data: bytes, check: Callable[[bytes], None]) -> None:
    check(data)


@pytest.mark.parametrize("data", [v[1] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_odd_message_round_trips(data: bytes) -> None:
    message = parse(data)
    again = parse(message.to_bytes())
    assert again.to_bytes() == message.to_bytes()
    assert parse(again.to_bytes()) == again
    # Only Content-Length may be rewritten (to the body's real length).
    assert [h for h in again.headers if h[0] != "Content-Length"] == [
        h for h in message.headers if h[0] != "Content-Length"
    ]
    assert again.body == message.body


# ---- invalid -----------------------------------------------------------------------------------


def without(line_start: str) -> bytes:
    lines = [line for line in BASE if not line.startswith(line_start)]
    return msg(
        "OPTIONS sip:callee@example.com SIP/2.0", *lines, "CSeq: 1 OPTIONS", "Content-Length: 0"
    )


INVALID: list[tuple[str, bytes, str]] = [
    ("missing Call-ID", without("Call-ID"), "Missing header: Call-ID"),
    ("missing Via", without("Via"), "Missing header: Via"),
    ("missing From", without("From"), "Missing header: From"),
    ("missing To", without("To"), "Missing header: To"),
    ("missing CSeq", msg("OPTIONS sip:x@h SIP/2.0", *BASE, "l: 0"), "Missing header: CSeq"),
    ("response missing CSeq", msg("SIP/2.0 200 OK", *BASE), "Missing header: CSeq"),
    ("CSeq method mismatch", options(cseq="CSeq: 1 INVITE"), "CSeq method mismatch"),
    ("CSeq lower-case method", options(cseq="CSeq: 1 options"), "CSeq method mismatch"),
    ("CSeq not a number", options(cseq="CSeq: one OPTIONS"), "Bad CSeq"),
    ("CSeq too big", options(cseq="CSeq: 4294967296 OPTIONS"), "Bad CSeq"),
    ("CSeq without method", options(cseq="CSeq: 1"), "Bad CSeq"),
    (
        "Content-Length larger than body",
        options(body=b"abc").replace(b"Content-Length: 3", b"Content-Length: 300"),
        "Content-Length larger than body",
    ),
    (
        "negative Content-Length",
        options().replace(b"Content-Length: 0", b"Content-Length: -3"),
        "Bad Content-Length",
    ),
    (
        "Content-Length with sign",
        options().replace(b"Content-Length: 0", b"Content-Length: +0"),
        "Bad Content-Length",
    ),
    (
        "Content-Length hex",
        options().replace(b"Content-Length: 0", b"Content-Length: 0x10"),
        "Bad Content-Length",
    ),
    ("two Content-Lengths", options("l: 7"), "Bad Content-Length"),
    (
        "garbage start line",
        msg("Hello, is it me you're looking for?", *BASE),
        "Malformed request line",
    ),
    ("start line only spaces", msg("   ", *BASE), "Malformed request line"),
    ("TLS hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "NUL byte in start line"),
    ("binary garbage", b"\x16\x03\x01\x02\xff\x01\xfc\x03\x03", "Control character in start line"),
    ("HTTP request", msg("GET / HTTP/1.1", "Host: example.com"), "Malformed request line"),
    (
        "SIP/3.0 request",
        msg("OPTIONS sip:x@h SIP/3.0", *BASE, "CSeq: 1 OPTIONS"),
        "Unsupported SIP version",
    ),
    (
        "SIP/1.0 response",
        msg("SIP/1.0 200 OK", *BASE, "CSeq: 1 OPTIONS"),
        "Unsupported SIP version",
    ),
    (
        "SIP/2.0x response",
        msg("SIP/2.00 200 OK", *BASE, "CSeq: 1 OPTIONS"),
        "Unsupported SIP version",
    ),
    ("status 2000", msg("SIP/2.0 2000 OK", *BASE), "Bad status code"),
    ("status 099", msg("SIP/2.0 099 Low", *BASE), "Bad status code"),
    ("status 700", msg("SIP/2.0 700 High", *BASE), "Bad status code"),
    ("status letters", msg("SIP/2.0 abc OK", *BASE), "Bad status code"),
    ("status missing", msg("SIP/2.0", *BASE), "Bad status code"),
    (
        "double space in request line",
        msg("OPTIONS  sip:x@h SIP/2.0", *BASE),
        "Malformed request line",
    ),
    ("space in Request-URI", msg("OPTIONS sip:x@h; lr SIP/2.0", *BASE), "Malformed request line"),
    ("Request-URI without scheme", msg("OPTIONS callee SIP/2.0", *BASE), "Malformed request line"),
    ("method not a token", msg("OPT@ONS sip:x@h SIP/2.0", *BASE), "Malformed request line"),
    ("no version", msg("OPTIONS sip:x@h", *BASE), "Malformed request line"),
    ("oversized message", options(body=b"x" * MAX_MESSAGE), "Message too large"),
    ("header without colon", options("This is not a header"), "Header without colon"),
    ("header name with space", options("Bad Name: value"), "Bad header name"),
    ("empty header name", options(": value"), "Bad header name"),
    ("header name with bracket", options("X[1]: value"), "Bad header name"),
    (
        "NUL in start line",
        b"OPTIONS sip:x@h\x00 SIP/2.0\r\n" + options()[36:],
        "NUL byte in start line",
    ),
    (
        "BEL in start line",
        msg("OPTIONS sip:x@h SIP/2.0\x07", *BASE),
        "Control character in start line",
    ),
    ("NUL in header", options("Subject: a\x00b"), "NUL byte in header"),
    ("bare CR in header", options("Subject: one\rtwo"), "Bad line ending"),
    (
        "continuation after start line",
        msg("OPTIONS sip:x@h SIP/2.0", " folded", *BASE, "CSeq: 1 OPTIONS"),
        "Malformed header line",
    ),
    ("too many headers", options(*[f"X-{i}: {i}" for i in range(260)]), "Too many headers"),
    ("header too long", options("X-Long: " + "a" * MAX_HEADER_LENGTH), "Header too long"),
    (
        "empty Call-ID",
        options().replace(b"Call-ID: torture-1@198.51.100.20", b"Call-ID:  "),
        "Bad Call-ID",
    ),
    ("Max-Forwards not a number", options("Max-Forwards: seventy"), "Bad Max-Forwards"),
    ("Max-Forwards negative", options("Max-Forwards: -1"), "Bad Max-Forwards"),
    ("only CRLFs", b"\r\n\r\n\r\n", "Empty message"),
    ("empty datagram", b"", "Empty message"),
]


@pytest.mark.parametrize(("data", "reason"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID])
def test_invalid_message_is_refused_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse(data)
    assert str(info.value) == reason


@pytest.mark.parametrize(
    ("name", "answerable"),
    [
        ("missing Call-ID", True),
        ("CSeq method mismatch", True),
        ("Content-Length larger than body", True),
        ("negative Content-Length", True),
        ("SIP/3.0 request", True),
        ("header without colon", True),
        ("NUL in header", True),
        ("bare CR in header", True),
        ("continuation after start line", True),
        ("too many headers", True),
        ("header too long", True),
        ("NUL in start line", False),
        ("garbage start line", False),
        ("status 2000", False),
        ("oversized message", False),
    ],
)
def test_which_refusals_can_be_answered(name: str, answerable: bool) -> None:
    data = next(v[1] for v in INVALID if v[0] == name)
    with pytest.raises(ParseError) as info:
        parse(data)
    assert (info.value.partial is not None) is answerable


@pytest.mark.parametrize(
    ("header", "prop"),
    [
        ("To: <sip:callee@example.com", "to"),
        ("To: Bob, Jr <sip:callee@example.com>", "to"),
        ("From: <sip:caller@[::1>;tag=1", "from_"),
        ("Via: SIP/2.0/UDP host:notaport;branch=z9hG4bK-x", "top_via"),
        ("Via: SIP/2.0 host;branch=z9hG4bK-x", "vias"),
    ],
)
def test_framing_is_fine_but_structured_header_is_bad(header: str, prop: str) -> None:
    name = header.split(":", 1)[0]
    lines = [header if line.startswith(name + ":") else line for line in BASE]
    message = parse(msg("OPTIONS sip:x@h SIP/2.0", *lines, "CSeq: 1 OPTIONS", "Content-Length: 0"))
    with pytest.raises(HeaderError):
        getattr(message, prop)
