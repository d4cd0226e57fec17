"""Tests for gateway.sip.sdp: parsing, serializing, relay rewriting, offer/answer, hold."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.sdp import (
    STATIC_PAYLOAD_TYPES,
    Bandwidth,
    Connection,
    Media,
    Origin,
    RtpMap,
    SdpError,
    SessionDescription,
    Timing,
    is_hold,
    parse_sdp,
)


def sdp(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


APP_OFFER = sdp(
    "v=0",
    "o=- 3890215734 3890215734 IN IP4 198.51.100.23",
    "s=-",
    "c=IN IP4 198.51.100.23",
    "t=0 0",
    "a=x-app-build:4.2.1",
    "m=audio 40376 RTP/SAVP 111 8 101",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 useinbandfec=1;stereo=0;maxaveragebitrate=32000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=maxptime:60",
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:32",
    "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32",
    "a=rtcp:40377",
    "a=x-noise-suppression",
    "a=sendrecv",
)

CARRIER_ANSWER = sdp(
    "v=0",
    "o=carrier 1000 1001 IN IP4 203.0.113.10",
    "s=SIP Call",
    "c=IN IP4 203.0.113.10",
    "t=0 0",
    "m=audio 16384 RTP/AVP 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=ptime:20",
    "a=sendrecv",
)

IPV6_OFFER = sdp(
    "v=0",
    "o=alice 2890844526 2890844526 IN IP6 2001:db8::1",
    "s=-",
    "c=IN IP6 2001:db8::1",
    "t=0 0",
    "m=audio 49170 RTP/AVP 9 0 13",
    "a=rtpmap:9 G722/8000",
)

MUX_OFFER = sdp(
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "a=msid-semantic: WMS",
    "m=audio 50000 UDP/TLS/RTP/SAVPF 111 0",
    "c=IN IP4 198.51.100.7",
    "a=rtcp:50000 IN IP4 198.51.100.7",
    "a=candidate:1 1 udp 2122260223 198.51.100.7 50000 typ host",
    "a=end-of-candidates",
    "a=ice-ufrag:F7gI",
    "a=ice-pwd:x9cml/YzichV2+XlhiMu8g",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0",
    "a=setup:actpass",
    "a=mid:0",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=sendrecv",
)

VIDEO_OFFER = sdp(
    "v=0",
    "o=bob 2808844564 2808844564 IN IP4 203.0.113.20",
    "s=video call",
    "i=A call with video",
    "u=http://www.example.com/seminars/sdp.pdf",
    "e=j.doe@example.com (Jane Doe)",
    "p=+1 617 555-6011",
    "c=IN IP4 203.0.113.20",
    "b=AS:512",
    "t=2873397496 2873404696",
    "r=604800 3600 0 90000",
    "z=2882844526 -1h 2898848070 0",
    "k=prompt",
    "a=recvonly",
    "m=audio 49170 RTP/AVP 0 18",
    "i=voice",
    "b=AS:64",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "m=video 51372/2 RTP/AVP 99",
    "c=IN IP4 203.0.113.21",
    "b=AS:448",
    "k=prompt",
    "a=rtpmap:99 H264/90000",
    "a=fmtp:99 profile-level-id=42e01f",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "a=sctp-port:5000",
)

SAMPLES = [APP_OFFER, CARRIER_ANSWER, IPV6_OFFER, MUX_OFFER, VIDEO_OFFER]
RELAY_ORIGIN = Origin("edgegw", "777", 1, "IN", "IP4", "203.0.113.1")


def text(description: SessionDescription) -> list[str]:
    return description.to_bytes().decode().split("\r\n")


# --- parse / serialize -------------------------------------------------------------------


@pytest.mark.parametrize("data", SAMPLES)
def test_serialization_gives_the_same_bytes(data: bytes) -> None:
    assert parse_sdp(data).to_bytes() == data


@pytest.mark.parametrize("data", SAMPLES)
def test_lf_only_input_is_accepted(data: bytes) -> None:
    parsed = parse_sdp(data.replace(b"\r\n", b"\n"))
    assert parsed == parse_sdp(data)
    assert parsed.to_bytes() == data


def test_app_offer_fields() -> None:
    offer = parse_sdp(APP_OFFER)
    assert offer.origin == Origin("-", "3890215734", 3890215734, "IN", "IP4", "198.51.100.23")
    assert offer.connection == Connection("IN", "IP4", "198.51.100.23")
    assert offer.times == [Timing(0, 0)]
    assert offer.attributes == [("x-app-build", "4.2.1")]
    assert offer.get("x-app-build") == "4.2.1" and offer.has("x-app-build")
    assert offer.get("absent") is None and not offer.has("absent")
    (audio,) = offer.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 40376, "RTP/SAVP")
    assert audio.formats == ["111", "8", "101"]
    assert audio.rtpmap() == {
        111: RtpMap(111, "opus", 48000, 2),
        8: RtpMap(8, "PCMA", 8000),
        101: RtpMap(101, "telephone-event", 8000),
    }
    assert audio.fmtp() == {
        111: "useinbandfec=1;stereo=0;maxaveragebitrate=32000",
        101: "0-16",
    }
    assert audio.ptime == 20
    assert audio.rtcp_port == 40377
    assert not audio.rtcp_mux
    assert audio.direction == "sendrecv"
    assert audio.has("x-noise-suppression")
    assert audio.get("x-noise-suppression") is None
    crypto = audio.get("crypto")
    assert crypto is not None and crypto.startswith("1 AES_CM_128_HMAC_SHA1_80")
    assert [k for k, _ in audio.attributes].count("crypto") == 2


def test_static_payload_types_without_rtpmap() -> None:
    expected = {
        0: ("PCMU", 8000),
        3: ("GSM", 8000),
        8: ("PCMA", 8000),
        9: ("G722", 8000),
        13: ("CN", 8000),
        18: ("G729", 8000),
    }
    for pt, (name, rate) in expected.items():
        assert STATIC_PAYLOAD_TYPES[pt] == RtpMap(pt, name, rate)
    media = parse_sdp(IPV6_OFFER).media[0]
    assert media.rtpmap() == {
        9: RtpMap(9, "G722", 8000),
        0: RtpMap(0, "PCMU", 8000),
        13: RtpMap(13, "CN", 8000),
    }
    assert str(media.rtpmap()[9]) == "9 G722/8000"
    assert str(RtpMap(111, "opus", 48000, 2)) == "111 opus/48000/2"


def test_dynamic_payload_type_without_rtpmap_is_unknown() -> None:
    data = sdp("v=0", "o=- 1 1 IN IP4 198.51.100.1", "s=-", "t=0 0", "m=audio 1 RTP/AVP 96 0")
    assert list(parse_sdp(data).media[0].rtpmap()) == [0]


def test_ipv6_and_video_sections() -> None:
    assert parse_sdp(IPV6_OFFER).connection == Connection("IN", "IP6", "2001:db8::1")
    offer = parse_sdp(VIDEO_OFFER)
    assert offer.info == "A call with video"
    assert offer.emails == ["j.doe@example.com (Jane Doe)"]
    assert offer.phones == ["+1 617 555-6011"]
    assert offer.bandwidths == [Bandwidth("AS", 512)]
    assert offer.times == [Timing(2873397496, 2873404696, ["604800 3600 0 90000"])]
    assert offer.zone == "2882844526 -1h 2898848070 0"
    assert offer.key == "prompt"
    audio, video, data = offer.media
    assert audio.title == "voice" and audio.connection is None
    assert audio.direction == "sendrecv"
    assert offer.direction_of(audio) == "recvonly"
    assert video.port_count == 2
    assert video.connection == Connection("IN", "IP4", "203.0.113.21")
    assert offer.connection_of(video) == video.connection
    assert offer.connection_of(audio) == offer.connection
    assert video.key == "prompt"
    assert data.formats == ["webrtc-datachannel"] and not data.is_rtp


def test_mux_offer_accessors() -> None:
    media = parse_sdp(MUX_OFFER).media[0]
    assert media.rtcp_mux
    assert media.rtcp_port == 50000
    assert media.ptime is None


def test_set_direction_replaces_in_place() -> None:
    media = parse_sdp(APP_OFFER).media[0]
    before = [k for k, _ in media.attributes]
    media.set_direction("sendonly")
    assert [k for k, _ in media.attributes] == [*before[:-1], "sendonly"]
    media.attributes.insert(0, ("inactive", None))
    media.set_direction("recvonly")
    names = [k for k, _ in media.attributes]
    assert names[0] == "recvonly" and "sendonly" not in names and "inactive" not in names
    with pytest.raises(ValueError, match="direction"):
        media.set_direction("both")


def test_set_direction_appends_when_absent() -> None:
    media = Media("audio", 1000, "RTP/AVP", ["0"])
    media.set_direction("inactive")
    assert media.attributes == [("inactive", None)]


def test_origin_bumped() -> None:
    bumped = RELAY_ORIGIN.bumped()
    assert bumped.sess_version == 2 and RELAY_ORIGIN.sess_version == 1
    assert str(bumped) == "edgegw 777 2 IN IP4 203.0.113.1"


def test_fractional_ptime_rounds_down() -> None:
    data = sdp(
        "v=0", "o=- 1 1 IN IP4 198.51.100.1", "s=-", "t=0 0", "m=audio 1 RTP/AVP 0", "a=ptime:20.5"
    )
    assert parse_sdp(data).media[0].ptime == 20


def test_session_section_order_is_lenient() -> None:
    data = sdp("v=0", "o=- 1 1 IN IP4 198.51.100.1", "s=-", "t=0 0", "c=IN IP4 198.51.100.1")
    parsed = parse_sdp(data)
    assert parsed.connection == Connection("IN", "IP4", "198.51.100.1")
    assert text(parsed)[3] == "c=IN IP4 198.51.100.1"


def test_missing_t_line_is_tolerated() -> None:
    data = sdp("v=0", "o=- 1 1 IN IP4 198.51.100.1", "s=-", "m=audio 1 RTP/AVP 0")
    parsed = parse_sdp(data)
    assert parsed.times == []
    assert parsed.to_bytes() == data


def test_trailing_blank_lines_are_ignored() -> None:
    assert parse_sdp(CARRIER_ANSWER + b"\r\n\r\n").to_bytes() == CARRIER_ANSWER


# --- malformed input ---------------------------------------------------------------------

HEAD = ("v=0", "o=- 1 1 IN IP4 198.51.100.1", "s=-", "t=0 0")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty session description"),
        (b"\r\n\r\n", "empty session description"),
        (sdp("o=- 1 1 IN IP4 198.51.100.1", "s=-"), "missing v="),
        (sdp("v=1", *HEAD[1:]), "line 1: unsupported version '1'"),
        (sdp("v=0", "s=-", "t=0 0"), "missing o="),
        (sdp("v=0", "o=- 1 1 IN IP4 198.51.100.1", "t=0 0"), "missing s="),
        (sdp("v=0", "o=- 1 IN IP4 198.51.100.1", "s=-"), "line 2: bad o= line"),
        (sdp("v=0", "o=- 1 x IN IP4 198.51.100.1", "s=-"), "line 2: bad o= line"),
        (sdp("v=0", "o=- 1  1 IN IP4 198.51.100.1", "s=-"), "line 2: bad o= line"),
        (sdp(*HEAD, "m=audio 1 RTP/AVP"), "line 5: bad m= line"),
        (sdp(*HEAD, "m=audio"), "line 5: bad m= line"),
        (sdp(*HEAD, "m=audio 70000 RTP/AVP 0"), "line 5: bad port '70000'"),
        (sdp(*HEAD, "m=audio -1 RTP/AVP 0"), "line 5: bad port '-1'"),
        (sdp(*HEAD, "m=audio +5 RTP/AVP 0"), "line 5: bad port '+5'"),
        (sdp(*HEAD, "m=audio 1_0 RTP/AVP 0"), "line 5: bad port '1_0'"),
        (sdp(*HEAD, "m=audio ² RTP/AVP 0"), "line 5: bad port '²'"),
        (sdp(*HEAD, "m=audio 5/ RTP/AVP 0"), "line 5: bad port '5/'"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0 128"), "line 5: bad payload type '128'"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP PCMU"), "line 5: bad payload type 'PCMU'"),
        (sdp(*HEAD, "m=au<dio 5 RTP/AVP 0"), "line 5: bad m= line"),
        (sdp(*HEAD, "c=IN IP4"), "line 5: bad c= line"),
        (sdp(*HEAD, "b=AS"), "line 5: bad b= line"),
        (sdp(*HEAD, "b=AS:lots"), "line 5: bad b= line"),
        (sdp("v=0", "o=- 1 1 IN IP4 198.51.100.1", "s=-", "t=0"), "line 4: bad t= line"),
        (sdp("v=0", "o=- 1 1 IN IP4 198.51.100.1", "s=-", "r=1 2 3"), "line 4: r= before any t="),
        (sdp(*HEAD, "a="), "line 5: bad a= line"),
        (sdp(*HEAD, "a=:x"), "line 5: bad a= line"),
        (sdp(*HEAD, "a=with space"), "line 5: bad a= line"),
        (sdp(*HEAD, "y=whatever"), "line 5: unexpected y= in the session section"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "t=0 0"), "line 6: unexpected t= in a media section"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=x", "c=IN IP4 1.2.3.4"), "line 7: c= out of order"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "c=IN IP4 1.2.3.4", "c=IN IP4 1.2.3.5"), "duplicate c="),
        (sdp(*HEAD, "s=again"), "line 5: duplicate s="),
        (sdp("v=0", "o=- 1 1 IN IP4 198.51.100.1", "o=- 1 1 IN IP4 198.51.100.1"), "duplicate o="),
        (sdp(*HEAD, "", "a=x"), "line 5: expected <type>=<value>"),
        (sdp(*HEAD, "A=x"), "line 5: expected <type>=<value>"),
        (sdp(*HEAD, "a x"), "line 5: expected <type>=<value>"),
        (sdp(*HEAD, "a=x\ry"), "line 5: control character"),
        (sdp(*HEAD, "a=x\x00y"), "line 5: control character"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=rtpmap:0"), "line 6: bad a=rtpmap value '0'"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=rtpmap:0 PCMU"), "line 6: bad a=rtpmap"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=rtpmap:0 PCMU/0"), "line 6: bad a=rtpmap"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=rtpmap:200 X/8000"), "line 6: bad a=rtpmap"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=rtpmap:0 /8000"), "line 6: bad a=rtpmap"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=rtpmap:0 A/8000/x"), "line 6: bad a=rtpmap"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=fmtp:"), "line 6: bad a=fmtp value ''"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=rtcp:99999"), "line 6: bad a=rtcp value"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=rtcp:9 IN IP4"), "line 6: bad a=rtcp value"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=ptime:abc"), "line 6: bad a=ptime value"),
        (sdp(*HEAD, "m=audio 5 RTP/AVP 0", "a=ptime:20."), "line 6: bad a=ptime value"),
        (b"v=0\r\no=\xff\r\n", "invalid UTF-8 at byte 7"),
    ],
)
def test_malformed_input(data: bytes, message: str) -> None:
    with pytest.raises(SdpError, match=message.replace("+", r"\+").replace(".", r"\.")):
        parse_sdp(data)


def test_too_many_media_lines() -> None:
    media = [f"m=audio {1000 + i} RTP/AVP 0" for i in range(65)]
    with pytest.raises(SdpError, match=r"line 69: too many m= lines \(max 64\)"):
        parse_sdp(sdp(*HEAD, *media))
    assert len(parse_sdp(sdp(*HEAD, *media[:64])).media) == 64


def test_too_many_lines() -> None:
    with pytest.raises(SdpError, match=r"too many lines \(max 1000\)"):
        parse_sdp(sdp(*HEAD, *["a=x"] * 997))
    assert len(parse_sdp(sdp(*HEAD, *["a=x"] * 996)).attributes) == 996
    without_final_newline = sdp(*HEAD, *["a=x"] * 997).rstrip(b"\r\n")
    with pytest.raises(SdpError, match=r"too many lines \(max 1000\)"):
        parse_sdp(without_final_newline)


def test_too_large() -> None:
    with pytest.raises(SdpError, match="too large"):
        parse_sdp(sdp(*HEAD, "a=x:" + "y" * 70_000))


def test_non_rtp_formats_and_attributes_are_not_checked() -> None:
    data = sdp(*HEAD, "m=image 5 udptl t38", "a=ptime:whatever", "a=rtpmap:bad")
    assert parse_sdp(data).to_bytes() == data


# --- hold --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "held"),
    [
        ((), False),
        (("a=sendrecv",), False),
        (("a=recvonly",), False),
        (("a=sendonly",), True),
        (("a=inactive",), True),
        (("c=IN IP4 0.0.0.0",), True),
        (("c=IN IP6 ::",), True),
        (
            (
                "c=IN IP4 0.0.0.0",
                "a=ice-ufrag:abcd",
                "a=candidate:1 1 udp 1 198.51.100.7 5 typ host",
            ),
            False,
        ),
    ],
)
def test_is_hold(extra: tuple[str, ...], held: bool) -> None:
    offer = parse_sdp(sdp(*HEAD, "m=audio 5 RTP/AVP 0", *extra))
    assert is_hold(offer.media[0]) is held
    assert is_hold(offer.media[0], offer) is held


def test_is_hold_uses_session_level_direction_and_address() -> None:
    offer = parse_sdp(sdp(*HEAD, "a=sendonly", "m=audio 5 RTP/AVP 0"))
    assert is_hold(offer.media[0], offer)
    assert not is_hold(offer.media[0])
    offer = parse_sdp(sdp(*HEAD[:3], "c=IN IP4 0.0.0.0", "t=0 0", "m=audio 5 RTP/AVP 0"))
    assert is_hold(offer.media[0], offer)
    overridden = parse_sdp(sdp(*HEAD, "a=sendonly", "m=audio 5 RTP/AVP 0", "a=sendrecv"))
    assert not is_hold(overridden.media[0], overridden)


# --- properties --------------------------------------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
_free_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc")), min_size=0, max_size=20
)
_nonempty_free = _free_text.filter(bool)
_ip4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_connection = st.builds(Connection, st.just("IN"), st.just("IP4"), _ip4)
_bandwidth = st.builds(Bandwidth, st.sampled_from(["AS", "CT", "TIAS"]), st.integers(0, 10**6))
_attribute_value = st.one_of(st.none(), _free_text)
# Attributes whose values the parser checks get valid values from _rtp_media instead.
_attribute_name = _token.filter(lambda name: name not in {"rtpmap", "fmtp", "rtcp", "ptime"})
_attributes = st.lists(st.tuples(_attribute_name, _attribute_value), max_size=5)


@st.composite
def _rtp_media(draw: st.DrawFn) -> Media:
    formats = draw(st.lists(st.integers(0, 127).map(str), min_size=1, max_size=6))
    attributes: list[tuple[str, str | None]] = [
        ("rtpmap", f"{pt} X{pt}/8000") for pt in formats if int(pt) >= 96
    ]
    attributes += draw(_attributes)
    return Media(
        media=draw(st.sampled_from(["audio", "video"])),
        port=draw(st.integers(0, 65535)),
        proto=draw(st.sampled_from(["RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF"])),
        formats=formats,
        port_count=draw(st.one_of(st.none(), st.integers(1, 4))),
        title=draw(st.one_of(st.none(), _free_text)),
        connection=draw(st.one_of(st.none(), _connection)),
        bandwidths=draw(st.lists(_bandwidth, max_size=2)),
        key=draw(st.one_of(st.none(), _nonempty_free)),
        attributes=attributes,
    )


_origin = st.builds(
    Origin,
    _token,
    st.integers(0, 2**63).map(str),
    st.integers(0, 2**63),
    st.just("IN"),
    st.just("IP4"),
    _ip4,
)
_timing = st.builds(
    Timing,
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.lists(st.just("604800 3600 0 90000"), max_size=2),
)
_session = st.builds(
    SessionDescription,
    origin=_origin,
    session_name=_free_text,
    info=st.one_of(st.none(), _free_text),
    uri=st.one_of(st.none(), _nonempty_free),
    emails=st.lists(_nonempty_free, max_size=2),
    phones=st.lists(_nonempty_free, max_size=2),
    connection=st.one_of(st.none(), _connection),
    bandwidths=st.lists(_bandwidth, max_size=2),
    times=st.lists(_timing, min_size=1, max_size=2),
    zone=st.one_of(st.none(), _nonempty_free),
    key=st.one_of(st.none(), _nonempty_free),
    attributes=_attributes,
    media=st.lists(_rtp_media(), max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(_session)
def test_round_trip_property(description: SessionDescription) -> None:
    data = description.to_bytes()
    parsed = parse_sdp(data)
    assert parsed == description
    assert parsed.to_bytes() == data


_REAL_LINES = [
    line.decode()
    for sample in SAMPLES
    for line in sample.split(b"\r\n")[1:]
    if line and not line.startswith((b"o=", b"s="))
]
_real_line = st.sampled_from(_REAL_LINES)
_line = st.one_of(
    _real_line,
    _real_line.flatmap(lambda line: st.integers(0, len(line)).map(lambda n: line[:n])),
    st.tuples(_real_line, st.text(max_size=8)).map(lambda pair: pair[0] + pair[1]),
    st.sampled_from(list("vosiuepcbtrzkam")).flatmap(
        lambda kind: st.text(max_size=30).map(lambda rest: f"{kind}={rest}")
    ),
    st.text(max_size=10),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=15))
def test_hostile_lines_only_raise_sdp_error(lines: list[str]) -> None:
    data = ("\r\n".join(["v=0", "o=- 1 1 IN IP4 198.51.100.1", "s=-", *lines]) + "\r\n").encode()
    try:
        parsed = parse_sdp(data)
        for media in parsed.media:
            media.rtpmap()
            media.fmtp()
            _ = (media.ptime, media.rtcp_port, media.direction, is_hold(media, parsed))
    except SdpError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_sdp_error(data: bytes) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp(data)


@pytest.mark.parametrize("data", SAMPLES)
def test_copy_is_deep(data: bytes) -> None:
    original = parse_sdp(data)
    duplicate = original.copy()
    assert duplicate == original
    duplicate.origin.sess_version += 1
    duplicate.attributes.append(("x", None))
    duplicate.times[0].repeats.append("1 2 3")
    for media in duplicate.media:
        media.formats.append("0")
        media.attributes.clear()
        if media.connection is not None:
            media.connection.address = "198.51.100.99"
        for bandwidth in media.bandwidths:
            bandwidth.bandwidth += 1
    if duplicate.connection is not None:
        duplicate.connection.address = "198.51.100.99"
    for bandwidth in duplicate.bandwidths:
        bandwidth.bandwidth += 1
    assert original.to_bytes() == data
