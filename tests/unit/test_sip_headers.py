"""Tests for gateway.sip.headers: Via, name-addr, CSeq, parameters and header lists."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sip.headers import (
    CSeq,
    HeaderError,
    NameAddr,
    Via,
    format_params,
    parse_cseq,
    parse_name_addr,
    parse_name_addr_list,
    parse_params,
    parse_via,
    parse_via_list,
    split_header_list,
)
from gateway.sip.uri import SipUri, TelUri, parse_uri

# ---- Via ---------------------------------------------------------------------------------------


def test_via_basic() -> None:
    via = parse_via("SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK776asdhds;received=203.0.113.9")
    assert via == Via(
        "UDP", "198.51.100.7", 5062, {"branch": "z9hG4bK776asdhds", "received": "203.0.113.9"}
    )
    assert via.branch == "z9hG4bK776asdhds"


def test_via_rport_without_value_and_with_empty_value() -> None:
    assert parse_via("SIP/2.0/UDP h;rport;branch=z9hG4bKa").params == {
        "rport": None,
        "branch": "z9hG4bKa",
    }
    assert parse_via("SIP/2.0/UDP h;rport=;branch=z9hG4bKa").params["rport"] == ""
    assert parse_via("SIP/2.0/UDP h;rport=5062").params["rport"] == "5062"


def test_via_ipv6_sent_by() -> None:
    via = parse_via("SIP/2.0/TCP [2001:db8::9]:5070;branch=z9hG4bKx;received=2001:db8::1")
    assert (via.transport, via.host, via.port) == ("TCP", "2001:db8::9", 5070)
    assert via.params["received"] == "2001:db8::1"
    assert str(via) == "SIP/2.0/TCP [2001:db8::9]:5070;branch=z9hG4bKx;received=2001:db8::1"


def test_via_without_port_or_params() -> None:
    via = parse_via("SIP/2.0/TLS gw.example.net")
    assert via == Via("TLS", "gw.example.net", None, {})
    assert via.branch is None
    assert str(via) == "SIP/2.0/TLS gw.example.net"


def test_via_with_wide_whitespace() -> None:
    via = parse_via("SIP  /  2.0 /\tudp   host.example : 5060 ;  branch = z9hG4bKwide ; rport")
    assert (via.transport, via.host, via.port) == ("UDP", "host.example", 5060)
    assert via.params == {"branch": "z9hG4bKwide", "rport": None}


def test_via_param_names_lowercased_values_kept() -> None:
    via = parse_via("SIP/2.0/UDP h;BRANCH=z9hG4bKAbC;Received=1.2.3.4")
    assert via.branch == "z9hG4bKAbC"
    assert via.params["received"] == "1.2.3.4"


def test_via_str_round_trip_after_mutation() -> None:
    via = parse_via("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport")
    via.params["received"] = "203.0.113.4"
    via.params["rport"] = "40000"
    text = str(via)
    assert text == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport=40000;received=203.0.113.4"
    assert parse_via(text) == via


def test_via_list() -> None:
    vias = parse_via_list(
        "SIP/2.0/UDP a.example;branch=z9hG4bK1 , SIP/2.0/TCP [::1]:5070;branch=z9hG4bK2"
    )
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "a.example", "z9hG4bK1"),
        ("TCP", "::1", "z9hG4bK2"),
    ]


def test_via_quoted_param_value_with_separators() -> None:
    via = parse_via('SIP/2.0/UDP h;branch=z9hG4bK1;x="a;b,c"')
    assert via.params["x"] == '"a;b,c"'
    assert len(parse_via_list('SIP/2.0/UDP h;x="a,b", SIP/2.0/UDP k')) == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "Bad Via: malformed sent-protocol"),
        ("SIP/2.0 host", "Bad Via: malformed sent-protocol"),
        ("SIP/2.0/UDP", "Bad Via: malformed sent-protocol"),
        ("SIP/3.0/UDP host", "Bad Via: protocol is not SIP/2.0"),
        ("HTTP/2.0/UDP host", "Bad Via: protocol is not SIP/2.0"),
        ("SIP/2.0/UDP ;branch=z9hG4bK1", "Bad Via: missing sent-by"),
        ("SIP/2.0/UDP host:abc", "Bad Via sent-by: Bad port in URI"),
        ("SIP/2.0/UDP [::1", "Bad Via sent-by: Unterminated IPv6 reference in host"),
        ("SIP/2.0/UDP h;branch=z9hG4bK1;branch=z9hG4bK2", "Duplicate parameter: branch"),
        ("SIP/2.0/UDP h;bra nch=1", "Bad parameter name"),
    ],
)
def test_bad_via(value: str, message: str) -> None:
    with pytest.raises(HeaderError) as info:
        parse_via(value)
    assert str(info.value) == message


# ---- name-addr ---------------------------------------------------------------------------------


def test_name_addr_quoted_display_with_escapes_and_commas() -> None:
    value = r'"Smith, \"Bob\" \\ Jr." <sip:bob@example.com>;tag=88sja8x'
    addr = parse_name_addr(value)
    assert addr.display == 'Smith, "Bob" \\ Jr.'
    assert addr.uri == parse_uri("sip:bob@example.com")
    assert addr.tag == "88sja8x"
    assert parse_name_addr(str(addr)) == addr


def test_name_addr_display_with_semicolon_and_angle() -> None:
    addr = parse_name_addr('"a;b<c>" <sip:x@h>;tag=1')
    assert addr.display == "a;b<c>"
    assert addr.params == {"tag": "1"}


def test_name_addr_unquoted_display() -> None:
    addr = parse_name_addr("Bob  Smith <sip:bob@example.com>")
    assert addr.display == "Bob  Smith"
    assert str(addr) == '"Bob  Smith" <sip:bob@example.com>'


def test_name_addr_uri_params_are_not_header_params() -> None:
    addr = parse_name_addr("<sip:alice@h;transport=tcp;lr>;tag=abc;expires=60")
    assert isinstance(addr.uri, SipUri)
    assert addr.uri.params == {"transport": "tcp", "lr": None}
    assert addr.params == {"tag": "abc", "expires": "60"}
    assert addr.display is None
    assert str(addr) == "<sip:alice@h;transport=tcp;lr>;tag=abc;expires=60"


def test_bare_addr_spec_params_belong_to_header() -> None:
    addr = parse_name_addr("sip:alice@atlanta.example;tag=1928301774;user=phone")
    assert isinstance(addr.uri, SipUri)
    assert addr.uri.params == {}
    assert addr.params == {"tag": "1928301774", "user": "phone"}
    assert addr.tag == "1928301774"


def test_name_addr_with_tel_uri_and_empty_display() -> None:
    addr = parse_name_addr('"" <tel:+8613900139001>')
    assert addr.display == ""
    assert isinstance(addr.uri, TelUri)
    assert str(addr) == '"" <tel:+8613900139001>'


def test_name_addr_quoted_param_value_kept_with_quotes() -> None:
    addr = parse_name_addr(
        '<sip:a@h;ob>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    )
    assert addr.params == {
        "+sip.instance": '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"',
        "reg-id": "1",
    }


def test_name_addr_without_space_before_angle() -> None:
    addr = parse_name_addr('"Alice"<sip:alice@h>')
    assert addr.display == "Alice"


def test_name_addr_list_with_commas_in_quotes_and_uris() -> None:
    value = '"Doe, John" <sip:a,b@h>;q=0.7, <sip:c@h;lr> , sip:d@h;expires=30'
    addrs = parse_name_addr_list(value)
    assert [a.display for a in addrs] == ["Doe, John", None, None]
    assert isinstance(addrs[0].uri, SipUri)
    assert addrs[0].uri.user == "a,b"
    assert addrs[0].params == {"q": "0.7"}
    assert addrs[2].params == {"expires": "30"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "Empty name-addr"),
        ('"Bob <sip:bob@h>', "Unterminated quoted string"),
        ('"Bob" sip:bob@h', "Expected '<' after display name"),
        ("<sip:bob@h", "Missing '>' in name-addr"),
        ("<sip:bob@h> junk", "Unexpected text after '>' in name-addr"),
        ("Bob, Jr <sip:bob@h>", "Bad display name"),
        ("<http://example.com>", "Unsupported URI scheme: http"),
        ("<sip:bob@h:70000>", "Bad port in URI"),
        ("*", "Missing URI scheme"),
        ("<sip:a@h>;tag=1;tag=2", "Duplicate parameter: tag"),
    ],
)
def test_bad_name_addr(value: str, message: str) -> None:
    with pytest.raises(HeaderError) as info:
        parse_name_addr(value)
    assert str(info.value) == message


# ---- CSeq --------------------------------------------------------------------------------------


def test_cseq() -> None:
    assert parse_cseq("4711 INVITE") == CSeq(4711, "INVITE")
    assert parse_cseq("  0 \t  ACK ") == CSeq(0, "ACK")
    assert parse_cseq("2147483647 NewMethod") == CSeq(2**31 - 1, "NewMethod")
    assert str(CSeq(9, "BYE")) == "9 BYE"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "Bad CSeq"),
        ("INVITE", "Bad CSeq"),
        ("1 INVITE extra", "Bad CSeq"),
        ("one INVITE", "Bad CSeq number"),
        ("-1 INVITE", "Bad CSeq number"),
        ("2147483648 INVITE", "Bad CSeq number"),
        ("99999999999999999999 INVITE", "Bad CSeq number"),
        ("１ INVITE", "Bad CSeq number"),
        ("1 INV@TE", "Bad CSeq method"),
    ],
)
def test_bad_cseq(value: str, message: str) -> None:
    with pytest.raises(HeaderError) as info:
        parse_cseq(value)
    assert str(info.value) == message


# ---- params and lists --------------------------------------------------------------------------


def test_parse_params() -> None:
    assert parse_params(";a=1;B=Two;flag") == {"a": "1", "b": "Two", "flag": None}
    assert parse_params("a=1") == {"a": "1"}
    assert parse_params(' ; q = 0.5 ; x="y;z=w" ;') == {"q": "0.5", "x": '"y;z=w"'}
    assert parse_params("") == {}
    assert parse_params('x="esc \\" ; quote"') == {"x": '"esc \\" ; quote"'}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("=1", "Bad parameter name"),
        ("a b=1", "Bad parameter name"),
        ('x="open', "Unterminated quoted string"),
        ("a;A", "Duplicate parameter: a"),
    ],
)
def test_bad_params(text: str, message: str) -> None:
    with pytest.raises(HeaderError) as info:
        parse_params(text)
    assert str(info.value) == message


def test_format_params() -> None:
    assert format_params({"a": "1", "lr": None, "e": ""}) == ";a=1;lr;e="
    assert format_params({}) == ""


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("INVITE, ACK,BYE", ["INVITE", "ACK", "BYE"]),
        ("timer", ["timer"]),
        ("  ", []),
        ("a,,b, ", ["a", "b"]),
        ('"x, y" <sip:a@h>, <sip:b@h;p=1,2>', ['"x, y" <sip:a@h>', "<sip:b@h;p=1,2>"]),
        (
            '"say \\"hi, there\\"" <sip:a@h>,<sip:b@h>',
            ['"say \\"hi, there\\"" <sip:a@h>', "<sip:b@h>"],
        ),
    ],
)
def test_split_header_list(value: str, items: list[str]) -> None:
    assert split_header_list(value) == items


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"open, <sip:a@h>', "Unterminated quoted string"),
        ("<sip:a@h, b", "Missing '>' in header value"),
    ],
)
def test_split_header_list_errors(value: str, message: str) -> None:
    with pytest.raises(HeaderError) as info:
        split_header_list(value)
    assert str(info.value) == message


# ---- properties --------------------------------------------------------------------------------

_token = st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{1,10}", fullmatch=True)
_display = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=20)
_host = st.ip_addresses().map(str) | st.from_regex(
    r"[a-z][a-z0-9\-]{0,8}[a-z0-9]\.example", fullmatch=True
)
_params = st.dictionaries(_token.map(str.lower), st.none() | _token, max_size=4)


@given(st.none() | _display, _host, st.none() | st.integers(1, 65535), _params)
def test_property_name_addr_round_trip(
    display: str | None, host: str, port: int | None, params: dict[str, str | None]
) -> None:
    addr = NameAddr(display, SipUri(host=host, port=port, params={"lr": None}), params)
    assert parse_name_addr(str(addr)) == addr
    assert parse_name_addr_list(f"{addr}, {addr}") == [addr, addr]


@given(
    st.sampled_from(["UDP", "TCP", "TLS", "WS", "SCTP"]),
    _host,
    st.none() | st.integers(1, 65535),
    _params,
)
def test_property_via_round_trip(
    transport: str, host: str, port: int | None, params: dict[str, str | None]
) -> None:
    via = Via(transport, host, port, params)
    assert parse_via(str(via)) == via
    assert parse_via_list(f"{via},{via}") == [via, via]


@given(st.text(max_size=60))
def test_property_hostile_values_raise_only_header_error(value: str) -> None:
    for parser in (parse_via, parse_name_addr, parse_cseq, parse_params, split_header_list):
        with contextlib.suppress(HeaderError):
            parser(value)
