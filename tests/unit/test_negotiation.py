"""Per-leg offer/answer: codecs, SRTP keys, rtcp-mux and directions on each leg."""

from __future__ import annotations

import pytest

from gateway.calls.call_media import app_policy
from gateway.calls.negotiation import LegPolicy, MediaPlan, NegotiationError, Negotiator
from gateway.config import default_config
from gateway.media.srtp import SrtpSuite, new_crypto, parse_crypto
from gateway.sip.sdp import Media, Origin, SessionDescription, parse_sdp
from gateway.store.model import Subscriber

CALLER_KEY = new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80)

APP = LegPolicy(srtp="optional", codecs=("opus", "G722", "PCMA", "PCMU"), sdes_allowed=True)
TRUNK = LegPolicy(srtp="off", codecs=("PCMA", "PCMU"), sdes_allowed=False)


def origin(name: str) -> Origin:
    return Origin("edgegw", name, 1, "IN", "IP4", "127.0.0.1")


def negotiator(a: LegPolicy = APP, b: LegPolicy = TRUNK, *, transcoding: bool = True) -> Negotiator:
    return Negotiator(
        {"a": a, "b": b},
        host="127.0.0.1",
        ports={"a": 20000, "b": 20002},
        origins={"a": origin("1"), "b": origin("2")},
        transcoding=transcoding,
    )


def sdp(*media_lines: str, host: str = "198.51.100.7", extra: tuple[str, ...] = ()) -> bytes:
    lines = ["v=0", "o=peer 1 1 IN IP4 " + host, "s=-", f"c=IN IP4 {host}", "t=0 0"]
    lines += list(media_lines) + list(extra)
    return ("\r\n".join(lines) + "\r\n").encode()


def app_offer(
    proto: str = "RTP/SAVP", *, crypto: bool = True, extra: tuple[str, ...] = ()
) -> bytes:
    media = [
        f"m=audio 4000 {proto} 111 8 101",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/48000",
    ]
    if crypto:
        media.append(f"a=crypto:{CALLER_KEY.to_value()}")
    return sdp(*media, *extra)


def audio(body: bytes) -> Media:
    parsed = parse_sdp(body)
    return next(m for m in parsed.media if m.media == "audio" and m.port != 0)


def encodings(media: Media) -> list[str]:
    return [entry.encoding for entry in media.rtpmap().values()]


def cryptos(media: Media) -> list[str]:
    return [value or "" for key, value in media.attributes if key == "crypto"]


def trunk_answer(pt: int = 8, name: str = "PCMA") -> bytes:
    return sdp(f"m=audio 6000 RTP/AVP {pt}", f"a=rtpmap:{pt} {name}/8000", host="203.0.113.9")


def test_app_to_trunk_offers_plain_rtp_with_the_shared_codec_first() -> None:
    offer = audio(negotiator().offer("a", app_offer()))
    assert offer.proto == "RTP/AVP"
    assert offer.port == 20002
    assert encodings(offer) == ["PCMA", "PCMU", "telephone-event", "CN"]
    assert cryptos(offer) == []
    assert offer.get("ptime") == "20"


def test_trunk_answer_gives_the_app_an_srtp_answer_with_our_own_key() -> None:
    deal = negotiator()
    deal.offer("a", app_offer())
    body, plan = deal.answer("b", trunk_answer())
    answer = audio(body)
    assert answer.proto == "RTP/SAVP"
    assert answer.formats[0] == "8"
    (line,) = cryptos(answer)
    ours = parse_crypto(line)
    assert ours.tag == CALLER_KEY.tag and ours.suite == CALLER_KEY.suite
    assert ours.keys[0].key != CALLER_KEY.keys[0].key
    assert not plan.transcoding
    assert plan.a.srtp_remote == CALLER_KEY and plan.a.srtp_local == ours
    assert plan.b.srtp_local is None and plan.b.srtp_remote is None
    assert (plan.b.host, plan.b.rtp_port, plan.b.rtcp_port) == ("203.0.113.9", 6000, 6001)
    assert (plan.a.host, plan.a.rtp_port) == ("198.51.100.7", 4000)


def test_opus_only_caller_is_transcoded_to_the_trunk_codec() -> None:
    offer = sdp("m=audio 4000 RTP/AVP 111", "a=rtpmap:111 opus/48000/2")
    deal = negotiator()
    sent = audio(deal.offer("a", offer))
    assert encodings(sent)[:2] == ["PCMA", "PCMU"]
    body, plan = deal.answer("b", trunk_answer(0, "PCMU"))
    assert plan.transcoding
    assert plan.a.codec.encoding == "opus" and plan.b.codec.encoding == "PCMU"
    assert audio(body).formats == ["111"]


def test_without_transcoding_a_caller_without_a_trunk_codec_gets_488() -> None:
    offer = sdp("m=audio 4000 RTP/AVP 111", "a=rtpmap:111 opus/48000/2")
    with pytest.raises(NegotiationError) as caught:
        negotiator(transcoding=False).offer("a", offer)
    assert (caught.value.status, caught.value.reason) == (488, "No Common Codec")


@pytest.mark.parametrize(
    ("policy", "body", "reason"),
    [
        (
            LegPolicy(srtp="mandatory", codecs=("PCMA",), sdes_allowed=True),
            app_offer("RTP/AVP", crypto=False),
            "SRTP Required",
        ),
        (
            LegPolicy(srtp="optional", codecs=("PCMA",), sdes_allowed=False),
            app_offer(),
            "SDES Keys Need TLS Signalling",
        ),
        (
            LegPolicy(srtp="off", codecs=("PCMA",), sdes_allowed=True),
            app_offer(),
            "SRTP Not Allowed",
        ),
        (APP, app_offer(crypto=False), "RTP/SAVP Offer Without a=crypto"),
        (APP, app_offer("UDP/TLS/RTP/SAVP"), "Media Transport UDP/TLS/RTP/SAVP Not Supported"),
        (APP, app_offer(extra=("a=crypto:2 F8_128_HMAC_SHA1_80 inline:AAAA",)), ""),
    ],
)
def test_refused_offers_get_488_with_a_reason(policy: LegPolicy, body: bytes, reason: str) -> None:
    deal = negotiator(policy)
    if not reason:  # an unknown extra suite beside a good one is simply skipped
        deal.offer("a", body)
        return
    with pytest.raises(NegotiationError) as caught:
        deal.offer("a", body)
    assert caught.value.status == 488
    assert caught.value.reason == reason


def test_offer_with_only_unknown_suites_is_refused() -> None:
    body = sdp(
        "m=audio 4000 RTP/SAVP 8",
        "a=crypto:1 F8_128_HMAC_SHA1_80 inline:" + "A" * 40,
    )
    with pytest.raises(NegotiationError) as caught:
        negotiator().offer("a", body)
    assert caught.value.reason == "No Acceptable Crypto Suite"


def test_unparsable_sdp_is_400() -> None:
    with pytest.raises(NegotiationError) as caught:
        negotiator().offer("a", b"v=0\r\nthis is not sdp\r\n")
    assert caught.value.status == 400
    assert caught.value.reason.startswith("Bad SDP")


def test_best_effort_crypto_on_avp_is_answered_with_srtp() -> None:
    deal = negotiator()
    deal.offer("a", app_offer("RTP/AVP"))
    body, plan = deal.answer("b", trunk_answer())
    answer = audio(body)
    assert answer.proto == "RTP/AVP"
    assert len(cryptos(answer)) == 1
    assert plan.a.secure


def test_app_callee_is_offered_every_suite_with_its_own_keys() -> None:
    deal = negotiator(TRUNK, APP)
    trunk_offer = sdp("m=audio 6000 RTP/AVP 8 0", host="203.0.113.9")
    sent = audio(deal.offer("a", trunk_offer))
    assert sent.proto == "RTP/SAVP"
    offered = [parse_crypto(line) for line in cryptos(sent)]
    assert [c.tag for c in offered] == [1, 2, 3, 4]
    assert len({c.keys[0].key for c in offered}) == 4
    gcm = next(c for c in offered if c.suite == "AEAD_AES_128_GCM")
    theirs = new_crypto(gcm.tag, SrtpSuite.AEAD_AES_128_GCM)
    answer = sdp("m=audio 4000 RTP/SAVP 8", f"a=crypto:{theirs.to_value()}", "a=rtcp-mux")
    body, plan = deal.answer("b", answer)
    assert plan.b.srtp_local == gcm and plan.b.srtp_remote == theirs
    assert plan.b.rtcp_mux and plan.b.rtcp_port == 4000
    assert audio(body).proto == "RTP/AVP" and not cryptos(audio(body))


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ((), "Callee Answer Needs Exactly One a=crypto"),
        (
            ("a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:" + CALLER_KEY.to_value().split(":")[1],),
            "Callee Answered An Unknown Crypto Tag",
        ),
    ],
)
def test_bad_srtp_answers_are_refused(lines: tuple[str, ...], reason: str) -> None:
    deal = negotiator(TRUNK, LegPolicy(srtp="mandatory", codecs=("PCMA",), sdes_allowed=True))
    deal.offer("a", sdp("m=audio 6000 RTP/AVP 8"))
    with pytest.raises(NegotiationError) as caught:
        deal.answer("b", sdp("m=audio 4000 RTP/SAVP 8", *lines))
    assert caught.value.reason == reason


def test_plain_answer_to_srtp_offer_is_taken_when_srtp_is_optional() -> None:
    deal = negotiator(TRUNK, APP)
    deal.offer("a", sdp("m=audio 6000 RTP/AVP 8"))
    _, plan = deal.answer("b", sdp("m=audio 4000 RTP/AVP 8"))
    assert not plan.b.secure


def test_reoffer_keeps_keys_and_bumps_version_only_on_change() -> None:
    deal = negotiator(TRUNK, APP)
    first = deal.offer("a", sdp("m=audio 6000 RTP/AVP 8"))
    again = deal.offer("a", sdp("m=audio 6000 RTP/AVP 8"))
    assert again == first
    moved = deal.offer("a", sdp("m=audio 6000 RTP/AVP 8", "a=sendonly"))
    assert cryptos(audio(moved)) == cryptos(audio(first))
    assert parse_sdp(moved).origin.sess_version == parse_sdp(first).origin.sess_version + 1


def test_other_streams_are_refused_in_the_answer() -> None:
    deal = negotiator()
    offer = sdp(
        "m=video 5000 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
        "m=audio 4000 RTP/AVP 8",
    )
    sent = parse_sdp(deal.offer("a", offer))
    assert [m.media for m in sent.media] == ["audio"]
    body, _ = deal.answer("b", trunk_answer())
    answered = parse_sdp(body)
    assert [(m.media, m.port) for m in answered.media] == [("video", 0), ("audio", 20000)]


def test_rtcp_mux_is_echoed_and_hold_directions_carry_across() -> None:
    deal = negotiator()
    offer = app_offer("RTP/AVP", crypto=False, extra=("a=rtcp-mux", "a=sendonly"))
    sent = audio(deal.offer("a", offer))
    assert sent.direction == "sendonly"
    assert sent.has("rtcp-mux") and sent.get("rtcp") == "20003"
    answer = sdp("m=audio 6000 RTP/AVP 8", "a=recvonly", host="203.0.113.9")
    body, plan = deal.answer("b", answer)
    mine = audio(body)
    assert mine.direction == "recvonly"
    assert mine.has("rtcp-mux") and mine.get("rtcp") is None
    assert plan.a.rtcp_mux and plan.a.rtcp_port == 4000
    assert not plan.b.rtcp_mux


def test_answer_without_offer_and_refused_stream() -> None:
    deal = negotiator()
    with pytest.raises(NegotiationError):
        deal.answer("b", trunk_answer())
    deal.offer("a", app_offer())
    with pytest.raises(NegotiationError) as caught:
        deal.answer("b", sdp("m=audio 0 RTP/AVP 8"))
    assert caught.value.reason == "Callee Refused The Audio Stream"


def test_plan_sides() -> None:
    deal = negotiator()
    deal.offer("a", app_offer())
    _, plan = deal.answer("b", trunk_answer())
    assert isinstance(plan, MediaPlan)
    assert plan.leg("a") is plan.a and plan.leg("b") is plan.b
    assert isinstance(parse_sdp(deal.last_sent("a") or b""), SessionDescription)


def test_telephone_event_on_one_leg_only_needs_transcoding() -> None:
    """The same codec, but the trunk has no RFC 4733: DTMF must become in-band tones."""
    deal = negotiator()
    deal.offer("a", sdp("m=audio 4000 RTP/AVP 8 101", "a=rtpmap:101 telephone-event/8000"))
    _, with_events = deal.answer(
        "b",
        sdp("m=audio 6000 RTP/AVP 8 101", "a=rtpmap:101 telephone-event/8000", host="203.0.113.9"),
    )
    assert not with_events.transcoding
    _, without = deal.answer("b", trunk_answer())
    assert without.a.telephone_event is not None and without.b.telephone_event is None
    assert without.transcoding


def test_opus_answer_asks_for_fec_when_transcoding_and_relays_far_preferences() -> None:
    """The fmtp we answer with says what we want to receive (RFC 7587 6.1)."""
    offer = sdp("m=audio 4000 RTP/AVP 111", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 stereo=1")
    transcoded = negotiator()
    transcoded.offer("a", offer)
    body, _ = transcoded.answer("b", trunk_answer())
    assert audio(body).fmtp()[111] == "useinbandfec=1;stereo=0;sprop-stereo=0"
    relayed = negotiator(APP, APP)
    relayed.offer("a", offer)
    far = sdp(
        "m=audio 5000 RTP/AVP 111", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 maxplaybackrate=16000"
    )
    body, plan = relayed.answer("b", far)
    assert not plan.transcoding
    assert audio(body).fmtp()[111] == "maxplaybackrate=16000"


def test_telephone_event_at_another_clock_than_the_codec_counts_as_none() -> None:
    """Opus at 48 kHz with events at 8 kHz on both legs: nothing to convert, relay."""
    offer = sdp(
        "m=audio 4000 RTP/AVP 111 101",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:101 telephone-event/8000",
    )
    deal = negotiator(APP, APP)
    deal.offer("a", offer)
    _, plan = deal.answer("b", offer)
    assert plan.a.telephone_event is None and plan.b.telephone_event is None
    assert not plan.transcoding


def test_a_subscribers_own_codecs_override_the_gateway_default() -> None:
    """Codec preference per client: the subscriber's list, else media.app_codecs."""
    config = default_config()
    plain = Subscriber(username="1001", password="pw", numbers=[])
    picky = Subscriber(username="1002", password="pw", numbers=[], codecs=["G722", "PCMU"])
    assert app_policy(config, plain, secure=True).codecs == tuple(config.media.app_codecs)
    assert app_policy(config, picky, secure=True).codecs == ("G722", "PCMU")
    deal = negotiator(TRUNK, app_policy(config, picky, secure=True))
    sent = audio(deal.offer("a", sdp("m=audio 6000 RTP/AVP 8")))
    assert encodings(sent)[:3] == ["G722", "PCMU", "telephone-event"]
