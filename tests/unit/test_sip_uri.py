"""Tests for gateway.sip.uri: SIP/SIPS/tel URI parsing and serialization."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sip.uri import (
    SipUri,
    TelUri,
    UriError,
    format_host,
    parse_hostport,
    parse_uri,
)


def sip(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


def test_full_sip_uri() -> None:
    uri = sip(
        "sip:alice:secret@example.com:5070;transport=TCP;lr;maddr=203.0.113.1?subject=x&priority=urgent"
    )
    assert uri.scheme == "sip"
    assert uri.user == "alice"
    assert uri.password == "secret"
    assert uri.host == "example.com"
    assert uri.port == 5070
    assert uri.params == {"transport": "TCP", "lr": None, "maddr": "203.0.113.1"}
    assert list(uri.params) == ["transport", "lr", "maddr"]
    assert uri.headers == {"subject": "x", "priority": "urgent"}
    assert uri.transport == "tcp"


def test_minimal_uri_has_no_optional_parts() -> None:
    uri = sip("sip:example.com")
    assert (uri.user, uri.password, uri.port, uri.params, uri.headers) == (None, None, None, {}, {})
    assert str(uri) == "sip:example.com"


def test_user_is_unescaped() -> None:
    assert sip("sip:%61lice@host").user == "alice"
    assert sip("sip:%C3%A9mile@host").user == "émile"


def test_escaped_user_serializes_to_equivalent_uri() -> None:
    uri = sip("sip:%61lice@host")
    assert str(uri) == "sip:alice@host"
    assert sip(str(uri)) == uri


def test_user_with_reserved_characters_is_escaped_on_output() -> None:
    uri = sip("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u@example.net"
    assert uri.host == "example.com"
    assert uri.params == {}
    assert str(uri) == "sip:user;par=u%40example.net@example.com"


def test_non_utf8_escape_survives_round_trip() -> None:
    uri = sip("sip:a%FFb@host")
    assert str(uri) == "sip:a%FFb@host"


def test_telephone_user_part() -> None:
    uri = sip("sip:+8613900139001@127.0.0.1:5080;user=phone")
    assert uri.user == "+8613900139001"
    assert uri.params == {"user": "phone"}


def test_scheme_is_case_insensitive() -> None:
    uri = sip("SIP:alice@example.com")
    assert uri.scheme == "sip"
    assert sip("SiPs:bob@example.com").scheme == "sips"


@pytest.mark.parametrize(
    ("text", "transport"),
    [
        ("sip:h", "udp"),
        ("sips:h", "tls"),
        ("sip:h;transport=TCP", "tcp"),
        ("sips:h;transport=ws", "ws"),
    ],
)
def test_transport_default_and_override(text: str, transport: str) -> None:
    assert sip(text).transport == transport


def test_ipv6_host_with_port() -> None:
    uri = sip("sip:[2001:db8::1]:5070")
    assert uri.host == "2001:db8::1"
    assert uri.port == 5070
    assert str(uri) == "sip:[2001:db8::1]:5070"


def test_ipv6_host_with_user_and_params() -> None:
    uri = sip("sips:bob@[2001:db8::10];transport=tcp")
    assert (uri.user, uri.host, uri.port) == ("bob", "2001:db8::10", None)
    assert str(uri) == "sips:bob@[2001:db8::10];transport=tcp"


def test_param_names_are_lowercased_values_kept() -> None:
    uri = sip("sip:h;Transport=UDP;MADDR=Example.COM")
    assert uri.params == {"transport": "UDP", "maddr": "Example.COM"}


def test_empty_param_value_differs_from_flag() -> None:
    uri = sip("sip:h;a=;b")
    assert uri.params == {"a": "", "b": None}
    assert str(uri) == "sip:h;a=;b"


def test_headers_are_unescaped_and_reescaped() -> None:
    uri = sip("sip:bob@b.example?Replaces=1234%40a.example%3Bto-tag%3D5&Subject=hi%20there")
    assert uri.headers == {"Replaces": "1234@a.example;to-tag=5", "Subject": "hi there"}
    assert sip(str(uri)) == uri


def test_password_may_be_empty() -> None:
    uri = sip("sip:alice:@host")
    assert uri.password == ""
    assert str(uri) == "sip:alice:@host"


def test_fqdn_with_trailing_dot() -> None:
    assert sip("sip:example.com.").host == "example.com."


def test_tel_uri_global_with_params() -> None:
    uri = parse_uri("tel:+1-201-555-0123;Ext=1234;isub=1411")
    assert isinstance(uri, TelUri)
    assert uri.number == "+1-201-555-0123"
    assert uri.params == {"ext": "1234", "isub": "1411"}
    assert str(uri) == "tel:+1-201-555-0123;ext=1234;isub=1411"


def test_tel_uri_local_number() -> None:
    uri = parse_uri("TEL:7042;phone-context=example.com")
    assert isinstance(uri, TelUri)
    assert uri.number == "7042"
    assert uri.params == {"phone-context": "example.com"}


def test_surrounding_whitespace_is_ignored() -> None:
    assert sip("  sip:alice@h \t").host == "h"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Empty URI"),
        ("alice@example.com", "Missing URI scheme"),
        (":alice@example.com", "Missing URI scheme"),
        ("1sip:alice@example.com", "Bad URI scheme"),
        ("http://example.com/", "Unsupported URI scheme: http"),
        ("sip:", "Empty host in URI"),
        ("sip:alice@", "Empty host in URI"),
        ("sip:alice@;lr", "Empty host in URI"),
        ("sip:@example.com", "Empty user part in URI"),
        ("sip:example.com:99999", "Bad port in URI"),
        ("sip:example.com:", "Bad port in URI"),
        ("sip:example.com:5o60", "Bad port in URI"),
        ("sip:[2001:db8::1", "Unterminated IPv6 reference in host"),
        ("sip:[2001:db8::zz]", "Bad IPv6 address in URI"),
        ("sip:[fe80::1%25eth0]", "Bad IPv6 address in URI"),
        ("sip:[2001:db8::1]x", "Bad host in URI"),
        ("sip:2001:db8::1", "IPv6 address without brackets in URI"),
        ("sip:al ice@example.com", "Illegal character in URI"),
        ("sip:alice@exa\x00mple.com", "Illegal character in URI"),
        ("sip:<alice>@example.com", "Illegal character in URI"),
        ("sip:émile@example.com", "Illegal character in URI"),
        ("sip:%zzalice@example.com", "Bad %-escape in URI"),
        ("sip:alice%4@example.com", "Bad %-escape in URI"),
        ("sip:alice%+1@example.com", "Bad %-escape in URI"),
        ("sip:example.com;lr;lr", "Duplicate URI parameter"),
        ("sip:example.com;transport=udp;TRANSPORT=tcp", "Duplicate URI parameter"),
        ("sip:example.com;;lr", "Empty URI parameter"),
        ("sip:example.com;=x", "Empty URI parameter"),
        ("sip:example.com?", "Empty URI header"),
        ("sip:example.com?=x", "Empty URI header"),
        ("sip:256.1.1.1", "Bad IPv4 address in URI"),
        ("sip:1.2.3", "Bad IPv4 address in URI"),
        ("sip:-bad-.example.com", "Bad host in URI"),
        ("sip:under_score.example.com", "Bad host in URI"),
        ("sip:a..b", "Bad host in URI"),
        ("tel:", "Bad telephone number in tel URI"),
        ("tel:+", "Bad telephone number in tel URI"),
        ("tel:12+34", "Bad telephone number in tel URI"),
        ("tel:+1;x;x", "Duplicate URI parameter"),
    ],
)
def test_bad_uris_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(UriError) as info:
        parse_uri(text)
    assert str(info.value) == message


def test_uri_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_uri("nonsense")


def test_parse_hostport_and_format_host() -> None:
    assert parse_hostport("[::1]:5060") == ("::1", 5060)
    assert parse_hostport("198.51.100.7") == ("198.51.100.7", None)
    assert parse_hostport("gw.example.net:5061") == ("gw.example.net", 5061)
    assert format_host("::1") == "[::1]"
    assert format_host("198.51.100.7") == "198.51.100.7"


def test_str_of_constructed_uri() -> None:
    uri = SipUri("sips", "bob smith", "p@ss", "2001:db8::2", 5061, {"lr": None}, {"subject": "a b"})
    assert str(uri) == "sips:bob%20smith:p%40ss@[2001:db8::2]:5061;lr?subject=a%20b"
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.com",
        "sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr",
        "sip:+1-555@198.51.100.1;user=phone?x=1&y=2",
        "sip:%22quoted%22@h",
        "sip:h;maddr=239.255.255.1;ttl=15",
        "tel:+1(201)555-0123;phone-context=+1",
    ],
)
def test_str_round_trips_to_equivalent_uri(text: str) -> None:
    uri = parse_uri(text)
    assert parse_uri(str(uri)) == uri


# ---- property: any URI we can build prints as text that parses back to it ----

_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
_label = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,6}[a-z0-9])?", fullmatch=True)
_hostname = st.builds(
    lambda labels, top: ".".join([*labels, top]),
    st.lists(_label, max_size=3),
    st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True),
)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_param_name = st.from_regex(r"[a-z0-9\-_.!~*'()%+]{1,8}", fullmatch=True)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    user = draw(st.none() | _text)
    return SipUri(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=user,
        password=None if user is None else draw(st.none() | st.text(max_size=6)),
        host=draw(_hostname | _ipv4 | _ipv6),
        port=draw(st.none() | st.integers(0, 65535)),
        params=draw(st.dictionaries(_param_name, st.none() | st.text(max_size=6), max_size=4)),
        headers=draw(st.dictionaries(_text, st.text(max_size=6), max_size=3)),
    )


@given(sip_uris())
def test_property_sip_uri_round_trip(uri: SipUri) -> None:
    assert parse_uri(str(uri)) == uri


@given(
    st.from_regex(r"\+[0-9][0-9\-.()]{0,14}", fullmatch=True),
    st.dictionaries(_param_name, st.none() | _text, max_size=3),
)
def test_property_tel_uri_round_trip(number: str, params: dict[str, str | None]) -> None:
    uri = TelUri(number, params)
    assert parse_uri(str(uri)) == uri


@given(st.text(max_size=40))
def test_property_hostile_text_raises_only_uri_error(text: str) -> None:
    with contextlib.suppress(UriError):
        parse_uri(text)
