"""Tests for gateway.sip.identity: RFC 3325 asserted identity, RFC 3323 privacy, number
presentation on trunks."""

from __future__ import annotations

import pytest

from gateway.calls.numbers import PLANS, NumberError
from gateway.sip.headers import parse_name_addr
from gateway.sip.identity import (
    ANONYMOUS_URI,
    AssertedIdentity,
    IdentityError,
    NumberFormat,
    Privacy,
    PrivacyError,
    PrivValue,
    accept_asserted_identity,
    anonymous_from,
    asserted_identity,
    from_trunk_number,
    make_identity,
    message_privacy,
    parse_identity,
    parse_privacy,
    preferred_identity,
    present_caller,
    to_trunk_number,
    uri_number,
)
from gateway.sip.message import Headers, Request, parse
from gateway.sip.uri import SipUri, TelUri, parse_uri


def invite(*extra: str) -> Request:
    lines = [
        "INVITE sip:+8613900139002@198.51.100.1 SIP/2.0",
        "Via: SIP/2.0/UDP 203.0.113.9:5080;branch=z9hG4bKid1",
        'From: "Carrier Caller" <sip:+8613800138000@203.0.113.9>;tag=c1',
        "To: <sip:+8613900139002@198.51.100.1>",
        "Call-ID: identity-1",
        "CSeq: 1 INVITE",
        "Contact: <sip:+8613800138000@203.0.113.9:5080>",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


# ---- P-Asserted-Identity / P-Preferred-Identity ----------------------------------------------


def test_parse_sip_and_tel_identity() -> None:
    message = invite(
        'P-Asserted-Identity: "Zhang San" <sip:+8613800138000@carrier.example;user=phone>',
        "P-Asserted-Identity: <tel:+8613800138000>",
    )
    identity = asserted_identity(message)
    assert identity is not None
    assert identity.display == "Zhang San"
    assert isinstance(identity.sip, SipUri) and identity.sip.params == {"user": "phone"}
    assert isinstance(identity.tel, TelUri) and identity.tel.number == "+8613800138000"
    assert identity.number == "+8613800138000"


def test_comma_separated_identities_and_bare_addr_spec_keep_uri_params() -> None:
    identity = parse_identity(["sip:+8613800138000@carrier.example;user=phone, tel:+8613800138000"])
    assert identity.sip is not None and identity.sip.params == {"user": "phone"}
    assert identity.tel is not None


def test_preferred_identity_is_read_from_its_own_header() -> None:
    message = invite("P-Preferred-Identity: <sip:1001@gw.example>")
    identity = preferred_identity(message)
    assert identity is not None and str(identity.primary().uri) == "sip:1001@gw.example"
    assert asserted_identity(message) is None
    assert identity.number is None  # 1001 is not an E.164 number


def test_display_name_quoting_round_trips() -> None:
    identity = make_identity("+8613800138000", "gw.example", display='Li "Boss" \\ Si')
    value = identity.header_value()
    assert value == r'"Li \"Boss\" \\ Si" <sip:+8613800138000@gw.example;user=phone>'
    assert parse_identity([value]) == identity


def test_unicode_display_name_is_quoted_as_is() -> None:
    identity = make_identity("+8613800138000", "gw.example", display="张三")
    assert identity.header_value().startswith('"张三" <sip:')


@pytest.mark.parametrize(
    "display",
    [
        "Eve\r\nP-Asserted-Identity: <sip:boss@bank.example>",
        "Eve\nX: 1",
        "Eve\x00",
        "Eve\x1b[31m",
        "x" * 129,
    ],
)
def test_header_injection_in_display_names_is_refused(display: str) -> None:
    with pytest.raises(IdentityError, match=r"control character|longer than"):
        make_identity("+8613800138000", "gw.example", display=display)


def test_injection_through_a_quoted_display_name_stays_inside_the_quotes() -> None:
    # A display name that tries to close its quotes and add a second identity.
    sneaky = 'Eve" <sip:boss@bank.example>, "x'
    identity = make_identity("+8613800138000", "gw.example", display=sneaky)
    parsed = parse_identity([identity.header_value()])
    assert len(parsed.entries) == 1
    assert parsed.display == sneaky


@pytest.mark.parametrize(
    ("values", "fault"),
    [
        (["<sip:a@x.example>, <sip:b@x.example>"], "Two sip/sips URIs"),
        (["<tel:+861>, <tel:+862>"], "Two tel URIs"),
        (["<sip:a@x.example>, <tel:+8613800138000>, <sip:b@x.example>"], "1 or 2 URIs"),
        (["<sip:a@x.example>;tag=1"], "no header parameters"),
        (["<mailto:a@x.example>"], "Unsupported URI scheme"),
        (['"unterminated <sip:a@x.example>'], "Unterminated quoted string"),
        (["<sip:a@x.example"], "Missing '>'"),
        (["sip:"], "Empty host"),
        ([""], "1 or 2 URIs"),
    ],
)
def test_malformed_identities_get_identity_error(values: list[str], fault: str) -> None:
    with pytest.raises(IdentityError, match=fault):
        parse_identity(values)


def test_malformed_asserted_identity_names_the_header() -> None:
    with pytest.raises(IdentityError, match="Bad P-Asserted-Identity"):
        asserted_identity(invite("P-Asserted-Identity: <sip:a@x.example>;foo=bar"))
    with pytest.raises(IdentityError, match="Bad P-Preferred-Identity"):
        preferred_identity(invite("P-Preferred-Identity: <ftp://x>"))


def test_identity_from_an_untrusted_peer_is_removed() -> None:
    message = invite("P-Asserted-Identity: <sip:+8610000000000@bank.example>")
    assert accept_asserted_identity(message.headers, trusted=False) is None
    assert "P-Asserted-Identity" not in message.headers
    # Even a malformed one goes, without an error: nothing of it is used.
    bad = invite("P-Asserted-Identity: <<<")
    assert accept_asserted_identity(bad.headers, trusted=False) is None
    assert "P-Asserted-Identity" not in bad.headers


def test_identity_from_a_trusted_peer_is_kept_and_parsed() -> None:
    message = invite("P-Asserted-Identity: <tel:+8613800138000>")
    identity = accept_asserted_identity(message.headers, trusted=True)
    assert identity is not None and identity.number == "+8613800138000"
    assert "P-Asserted-Identity" in message.headers
    assert accept_asserted_identity(invite().headers, trusted=True) is None


def test_malformed_identity_from_a_trusted_peer_raises_and_keeps_headers() -> None:
    message = invite("P-Asserted-Identity: <sip:a@x.example>, <sip:b@x.example>")
    with pytest.raises(IdentityError, match="Two sip/sips URIs"):
        accept_asserted_identity(message.headers, trusted=True)
    assert "P-Asserted-Identity" in message.headers


def test_make_identity_with_tel_and_port() -> None:
    identity = make_identity("+8613800138000", "198.51.100.1", port=5060, tel="+8613800138000")
    assert identity.header_value() == (
        "<sip:+8613800138000@198.51.100.1:5060;user=phone>, <tel:+8613800138000>"
    )
    assert make_identity("alice", "gw.example").header_value() == "<sip:alice@gw.example>"
    with pytest.raises(IdentityError, match="Bad identity"):
        make_identity("+8613800138000", "bad host")
    with pytest.raises(IdentityError, match=r"not E\.164"):
        make_identity("+8613800138000", "gw.example", tel="abc")


# ---- Privacy --------------------------------------------------------------------------------


def test_parse_privacy_values() -> None:
    privacy = parse_privacy(["id;user", "Critical"])
    assert privacy.values == {PrivValue.ID, PrivValue.USER, PrivValue.CRITICAL}
    assert privacy.hides_identity and privacy.critical and not privacy.none
    assert str(privacy) == "user;critical;id"


def test_no_privacy_header_asks_for_nothing() -> None:
    privacy = message_privacy(invite())
    assert privacy == Privacy()
    assert not privacy.hides_identity and not privacy.none


def test_session_and_history_do_not_hide_the_caller() -> None:
    assert not parse_privacy(["session;history"]).hides_identity
    assert parse_privacy(["header"]).hides_identity


def test_comma_separator_is_accepted() -> None:
    assert parse_privacy(["id, session"]).values == {PrivValue.ID, PrivValue.SESSION}


def test_unknown_values_are_kept_and_ignored() -> None:
    privacy = parse_privacy(["id;x-carrier-thing;X-Carrier-Thing"])
    assert privacy.values == {PrivValue.ID}
    assert privacy.unknown == ("x-carrier-thing",)
    assert str(privacy) == "id;x-carrier-thing"


def test_unknown_value_with_critical_is_refused_with_500() -> None:
    with pytest.raises(PrivacyError, match="critical but x-new cannot be provided") as info:
        parse_privacy(["id;x-new;critical"])
    assert info.value.status == 500


@pytest.mark.parametrize(
    ("values", "fault"),
    [
        (["none;id"], "'none' cannot be combined"),
        (["none;x-other"], "'none' cannot be combined"),
        (["id;us er"], "Bad Privacy value"),
        (['"id"'], "Bad Privacy value"),
        (["id;<script>"], "Bad Privacy value"),
    ],
)
def test_malformed_privacy_gets_400(values: list[str], fault: str) -> None:
    with pytest.raises(PrivacyError, match=fault) as info:
        parse_privacy(values)
    assert info.value.status == 400


def test_privacy_none_alone() -> None:
    privacy = parse_privacy(["none"])
    assert privacy.none and not privacy.hides_identity


# ---- presentation toward the next hop ---------------------------------------------------------

CALLER = make_identity("+8613900139001", "gw.example", display="Alice", tel="+8613900139001")


def test_anonymous_from() -> None:
    assert str(anonymous_from("abc")) == '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=abc'
    with pytest.raises(IdentityError, match="not a token"):
        anonymous_from("a b")
    with pytest.raises(IdentityError, match="not a token"):
        anonymous_from("")


def test_no_privacy_shows_the_caller_and_asserts_it() -> None:
    shown = present_caller(CALLER, from_tag="t1", privacy=Privacy(), trusted=True)
    assert str(shown.from_) == '"Alice" <sip:+8613900139001@gw.example;user=phone>;tag=t1'
    assert shown.headers == (("P-Asserted-Identity", CALLER.header_value()),)


def test_privacy_toward_a_trusted_carrier_keeps_pai_with_privacy_id() -> None:
    privacy = parse_privacy(["id"])
    shown = present_caller(CALLER, from_tag="t1", privacy=privacy, trusted=True)
    assert str(shown.from_.uri) == ANONYMOUS_URI
    assert shown.from_.display == "Anonymous" and shown.from_.tag == "t1"
    assert shown.headers == (
        ("P-Asserted-Identity", CALLER.header_value()),
        ("Privacy", "id"),
    )


def test_privacy_toward_an_untrusted_peer_withholds_the_identity() -> None:
    shown = present_caller(CALLER, from_tag="t1", privacy=parse_privacy(["user"]), trusted=False)
    assert str(shown.from_.uri) == ANONYMOUS_URI
    assert shown.headers == ()


def test_untrusted_peer_without_privacy_gets_the_identity() -> None:
    shown = present_caller(CALLER, from_tag="t1", privacy=Privacy(), trusted=False)
    assert shown.headers == (("P-Asserted-Identity", CALLER.header_value()),)


def test_trunk_without_pai_gets_only_the_from() -> None:
    hidden = present_caller(
        CALLER, from_tag="t1", privacy=parse_privacy(["id"]), trusted=True, send_pai=False
    )
    assert str(hidden.from_.uri) == ANONYMOUS_URI and hidden.headers == ()


def test_tel_only_identity_is_shown_in_from() -> None:
    identity = AssertedIdentity((parse_name_addr("<tel:+8613900139001>"),))
    shown = present_caller(identity, from_tag="t9", privacy=Privacy(), trusted=True)
    assert str(shown.from_) == "<tel:+8613900139001>;tag=t9"


def test_apply_replaces_identity_headers() -> None:
    message = invite(
        "P-Asserted-Identity: <sip:forged@x.example>",
        "P-Preferred-Identity: <sip:hint@x.example>",
        "Privacy: none",
    )
    shown = present_caller(CALLER, from_tag="t1", privacy=parse_privacy(["id"]), trusted=True)
    shown.apply(message.headers)
    assert message.headers.get("From") == ('"Anonymous" <sip:anonymous@anonymous.invalid>;tag=t1')
    assert message.headers.get_all("P-Asserted-Identity") == [CALLER.header_value()]
    assert "P-Preferred-Identity" not in message.headers
    assert message.headers.get_all("Privacy") == ["id"]
    assert message.from_.tag == "t1"
    assert b"\r\nPrivacy: id\r\n" in message.to_bytes()


def test_present_caller_refuses_a_bad_tag() -> None:
    with pytest.raises(IdentityError, match="not a token"):
        present_caller(CALLER, from_tag="x;y=z", privacy=Privacy(), trusted=True)


def test_headers_refuse_injection_even_past_the_identity_checks() -> None:
    # The last line of defence: Headers itself refuses CR/LF in any value.
    headers = Headers()
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        headers.add("P-Asserted-Identity", "<sip:a@x.example>\r\nX: 1")


# ---- numbers on trunks ----------------------------------------------------------------------

CN = PLANS["CN"]
US = PLANS["US"]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("e164", "+8613800138000"), ("e164-no-plus", "8613800138000"), ("national", "013800138000")],
)
def test_to_trunk_number_formats(fmt: str, expected: str) -> None:
    assert to_trunk_number("+8613800138000", fmt, CN) == expected


def test_national_format_of_a_foreign_number_uses_the_international_prefix() -> None:
    assert to_trunk_number("+442079460000", NumberFormat.NATIONAL, CN) == "00442079460000"
    assert to_trunk_number("+12025550123", NumberFormat.NATIONAL, US) == "12025550123"
    assert to_trunk_number("+442079460000", NumberFormat.NATIONAL, US) == "011442079460000"


@pytest.mark.parametrize("bad", ["8613800138000", "+0861380013", "+86", "+86138001380001234", ""])
def test_to_trunk_number_refuses_non_e164(bad: str) -> None:
    with pytest.raises(NumberError, match=r"not an E\.164 number"):
        to_trunk_number(bad, "e164", CN)


def test_unknown_number_format_is_refused() -> None:
    with pytest.raises(ValueError, match="is not a valid NumberFormat"):
        to_trunk_number("+8613800138000", "local", CN)


@pytest.mark.parametrize(
    ("number", "fmt", "expected"),
    [
        ("+8613800138000", "e164", "+8613800138000"),
        ("8613800138000", "e164-no-plus", "+8613800138000"),
        ("013800138000", "national", "+8613800138000"),
        ("13800138000", "national", "+8613800138000"),
        ("00442079460000", "national", "+442079460000"),
        ("01012345678", "e164-no-plus", "+861012345678"),
        ("+86 138-0013-8000", "national", "+8613800138000"),
        ("442079460000", "e164-no-plus", "+442079460000"),
    ],
)
def test_from_trunk_number(number: str, fmt: str, expected: str) -> None:
    assert from_trunk_number(number, fmt, CN) == expected


@pytest.mark.parametrize(
    ("number", "fmt", "fault"),
    [
        ("abc", "e164", "invalid character"),
        ("", "national", "empty"),
        ("8613800138000", "national", "not a \\+86 number"),  # no-plus digits on a national trunk
        ("+860138001380", "e164", "national prefix '0' after country code"),
        ("*86#", "e164", "service code"),
    ],
)
def test_from_trunk_number_errors(number: str, fmt: str, fault: str) -> None:
    with pytest.raises(NumberError, match=fault):
        from_trunk_number(number, fmt, CN)


@pytest.mark.parametrize(
    ("uri", "number"),
    [
        ("tel:+86-138-0013-8000", "+8613800138000"),
        ("sip:+8613800138000;npdi@gw.example;user=phone", "+8613800138000"),
        ("sip:013800138000@gw.example", "013800138000"),
        ("sip:alice@gw.example", None),
        ("sip:gw.example", None),
        ("tel:1234;phone-context=example.com", "1234"),
    ],
)
def test_uri_number(uri: str, number: str | None) -> None:
    assert uri_number(parse_uri(uri)) == number
