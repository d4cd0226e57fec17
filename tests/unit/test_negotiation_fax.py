"""The negotiator's fax parts: the gateway's own re-offers, withdrawing a refused offer,
and T.38 (ITU-T T.38 Annex D SDP) carried from one leg to the other."""

from __future__ import annotations

import pytest

from gateway.calls.negotiation import (
    Codec,
    LegPolicy,
    MediaPlan,
    NegotiationError,
    Negotiator,
    T38Plan,
    UdptlLeg,
)
from gateway.media.srtp import SrtpSuite, new_crypto, parse_crypto
from gateway.sip.sdp import Media, Origin, parse_sdp

APP = LegPolicy(srtp="optional", codecs=("opus", "PCMA", "PCMU"), sdes_allowed=True)
TRUNK = LegPolicy(srtp="off", codecs=("PCMA", "PCMU"), sdes_allowed=False, ptime=30)
PCMA = Codec("PCMA", 8, 8000)
EVENT = Codec("telephone-event", 101, 8000, 1, "0-16")
APP_KEY = new_crypto(3, SrtpSuite.AES_CM_128_HMAC_SHA1_80)
T38_ATTRIBUTES = (
    "a=T38FaxVersion:0",
    "a=T38MaxBitRate:14400",
    "a=T38FaxFillBitRemoval",
    "a=T38FaxRateManagement:transferredTCF",
    "a=T38FaxMaxBuffer:262",
    "a=T38FaxMaxDatagram:176",
    "a=T38FaxUdpEC:t38UDPRedundancy",
)


def negotiator(a: LegPolicy = APP, b: LegPolicy = TRUNK) -> Negotiator:
    return Negotiator(
        {"a": a, "b": b},
        host="127.0.0.1",
        ports={"a": 20000, "b": 20002},
        origins={
            "a": Origin("edgegw", "1", 1, "IN", "IP4", "127.0.0.1"),
            "b": Origin("edgegw", "2", 1, "IN", "IP4", "127.0.0.1"),
        },
    )


def sdp(*lines: str, host: str = "198.51.100.7") -> bytes:
    head = ["v=0", f"o=peer 1 1 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0"]
    return ("\r\n".join([*head, *lines]) + "\r\n").encode()


def opus_offer(*, crypto: bool = True) -> bytes:
    lines = ["m=audio 4000 RTP/SAVP 111" if crypto else "m=audio 4000 RTP/AVP 111"]
    lines.append("a=rtpmap:111 opus/48000/2")
    if crypto:
        lines.append(f"a=crypto:{APP_KEY.to_value()}")
    return sdp(*lines)


def trunk_answer(*extra: str) -> bytes:
    return sdp(
        "m=audio 6000 RTP/AVP 8 101",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        *extra,
        host="203.0.113.9",
    )


def transcoded(*, crypto: bool = True) -> Negotiator:
    """An Opus app (caller, leg a) and a PCMA trunk: a transcoded call."""
    deal = negotiator()
    deal.offer("a", opus_offer(crypto=crypto))
    _, plan = deal.answer("b", trunk_answer())
    assert plan.transcoding
    return deal


def t38_offer(port: int = 5000, *, host: str = "203.0.113.9", audio_first: bool = True) -> bytes:
    lines = ["m=audio 0 RTP/AVP 8"] if audio_first else []
    lines += [f"m=image {port} udptl t38", *T38_ATTRIBUTES]
    return sdp(*lines, host=host)


def audio_of(body: bytes) -> Media:
    return next(m for m in parse_sdp(body).media if m.media == "audio" and m.port != 0)


def t38_attributes(media: Media) -> list[str]:
    return [
        f"a={key}" if value is None else f"a={key}:{value}"
        for key, value in media.attributes
        if key.startswith("T38")
    ]


# ---- the gateway's own re-offer ------------------------------------------------------------


def test_reoffer_toward_the_app_offers_only_pcma_and_keeps_its_key() -> None:
    deal = transcoded()
    first = parse_sdp(deal.last_sent("a") or b"")
    body = deal.reoffer("a", [PCMA, EVENT], passthrough=True)
    sent = parse_sdp(body)
    media = audio_of(body)
    assert [e.encoding for e in media.rtpmap().values()] == ["PCMA", "telephone-event"]
    assert media.formats == ["8", "101"]
    assert (media.port, media.proto) == (20000, "RTP/SAVP")
    # The one a=crypto the app agreed to: same tag and key, so its SRTP contexts go on.
    (line,) = [v for k, v in media.attributes if k == "crypto" and v]
    assert parse_crypto(line) == parse_crypto(
        next(v for k, v in audio_of(deal.last_sent("a") or b"").attributes if k == "crypto" and v)
    )
    assert parse_crypto(line).tag == 3
    assert sent.origin.sess_version == first.origin.sess_version + 1
    assert deal.last_sent("a") == body
    assert deal.last_sent("b") != body  # the trunk's side is not touched


def test_the_apps_pcma_answer_makes_a_relay_plan_that_stays_pass_through() -> None:
    deal = transcoded()
    trunk_body = deal.last_sent("b")
    ours = parse_crypto(
        next(v for k, v in audio_of(deal.last_sent("a") or b"").attributes if k == "crypto" and v)
    )
    deal.reoffer("a", [PCMA, EVENT], passthrough=True)
    theirs = new_crypto(3, SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    answer = sdp(
        "m=audio 4000 RTP/SAVP 8 101",
        "a=rtpmap:101 telephone-event/8000",
        f"a=crypto:{theirs.to_value()}",
    )
    body, plan = deal.answer("a", answer)
    assert body == trunk_body  # nothing new for the trunk: it was never asked
    assert not plan.transcoding and plan.passthrough
    assert plan.a.codec.encoding == "PCMA" and plan.b.codec.encoding == "PCMA"
    assert plan.a.srtp_local == ours and plan.a.srtp_remote == theirs
    assert (plan.b.host, plan.b.rtp_port) == ("203.0.113.9", 6000)
    # From now on the trunk's offers reach the app with its own codecs only: no Opus.
    offer = deal.offer("b", trunk_answer())
    assert [e.encoding for e in audio_of(offer).rtpmap().values()] == [
        "PCMA",
        "telephone-event",
        "CN",
    ]


def test_pass_through_relays_even_when_one_leg_lacks_telephone_event() -> None:
    deal = transcoded(crypto=False)
    deal.reoffer("a", [PCMA, EVENT], passthrough=True)
    _, plan = deal.answer("a", sdp("m=audio 4000 RTP/AVP 8"))
    assert plan.a.telephone_event is None and plan.b.telephone_event is not None
    assert not plan.transcoding  # without pass-through this would be transcoded
    assert MediaPlan(plan.a, plan.b).transcoding  # the same legs, not pass-through


def test_a_plain_leg_is_reoffered_plain_rtp() -> None:
    deal = transcoded(crypto=False)
    media = audio_of(deal.reoffer("a", [PCMA]))
    assert media.proto == "RTP/AVP"
    assert not [k for k, _ in media.attributes if k == "crypto"]


def test_answer_choosing_opus_anyway_is_refused() -> None:
    deal = transcoded(crypto=False)
    deal.reoffer("a", [PCMA, EVENT], passthrough=True)
    with pytest.raises(NegotiationError) as caught:
        deal.answer("a", sdp("m=audio 4000 RTP/AVP 111", "a=rtpmap:111 opus/48000/2"))
    assert caught.value.reason == "Callee Chose No Offered Codec"
    assert not deal.passthrough  # nothing changed


def test_answer_with_an_unknown_crypto_tag_is_refused() -> None:
    deal = transcoded()
    deal.reoffer("a", [PCMA])
    other = new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80)  # tag 1 was never offered
    with pytest.raises(NegotiationError) as caught:
        deal.answer("a", sdp("m=audio 4000 RTP/SAVP 8", f"a=crypto:{other.to_value()}"))
    assert caught.value.reason == "Callee Answered An Unknown Crypto Tag"


@pytest.mark.parametrize(
    ("codecs", "reason"),
    [([EVENT], "No Codec To Re-Offer"), ([PCMA], "No Audio Session To Re-Offer")],
)
def test_reoffer_refusals(codecs: list[Codec], reason: str) -> None:
    deal = negotiator() if reason.startswith("No Audio") else transcoded()
    with pytest.raises(NegotiationError) as caught:
        deal.reoffer("a", codecs)
    assert caught.value.reason == reason


def test_withdrawn_reoffer_restores_the_old_description_under_a_new_version() -> None:
    deal = transcoded()
    before = deal.last_sent("a") or b""
    refused = deal.reoffer("a", [PCMA], passthrough=True)
    deal.withdraw("a")
    restored = deal.last_sent("a") or b""
    assert audio_of(restored).formats == audio_of(before).formats == ["111"]
    versions = [parse_sdp(body).origin.sess_version for body in (before, refused, restored)]
    assert versions == [versions[0], versions[0] + 1, versions[0] + 2]
    assert not deal.passthrough
    with pytest.raises(NegotiationError):  # nothing is pending any more
        deal.answer("a", sdp("m=audio 4000 RTP/AVP 8"))


# ---- T.38 ---------------------------------------------------------------------------------


def test_t38_offer_is_carried_with_its_attributes_and_our_port() -> None:
    deal = transcoded()
    body = deal.offer("b", t38_offer())
    sent = parse_sdp(body)
    assert [(m.media, m.port, m.proto, m.formats) for m in sent.media] == [
        ("image", 20000, "udptl", ["t38"])
    ]
    assert sent.connection is not None and sent.connection.address == "127.0.0.1"
    assert t38_attributes(sent.media[0]) == list(T38_ATTRIBUTES)
    assert deal.pending_t38
    assert deal.offered_media() is None  # the trunk's audio stays where it is meanwhile


def test_t38_accepted_answers_the_offerer_with_the_other_legs_attributes() -> None:
    deal = transcoded()
    deal.offer("b", t38_offer())
    answer = sdp(
        "m=image 7000 udptl t38",
        "a=T38FaxVersion:0",
        "a=T38MaxBitRate:9600",
        "a=T38FaxRateManagement:transferredTCF",
        "a=T38FaxUdpEC:t38UDPRedundancy",
    )
    body, plan = deal.answer_t38("a", answer)
    assert plan == T38Plan(a=UdptlLeg("198.51.100.7", 7000), b=UdptlLeg("203.0.113.9", 5000))
    answered = parse_sdp(body)
    # The same m= lines as the offer: its disabled audio stays disabled.
    assert [(m.media, m.port) for m in answered.media] == [("audio", 0), ("image", 20002)]
    assert t38_attributes(answered.media[1]) == [
        "a=T38FaxVersion:0",
        "a=T38MaxBitRate:9600",
        "a=T38FaxRateManagement:transferredTCF",
        "a=T38FaxUdpEC:t38UDPRedundancy",
    ]
    assert deal.t38 == plan


@pytest.mark.parametrize(
    "answer",
    [
        sdp("m=image 0 udptl t38"),
        sdp("m=audio 4000 RTP/AVP 8"),
    ],
    ids=["image-port-0", "audio-instead"],
)
def test_t38_refused_by_the_other_leg(answer: bytes) -> None:
    deal = transcoded()
    audio_before = deal.plan
    before = deal.last_sent("a")
    deal.offer("b", t38_offer())
    with pytest.raises(NegotiationError) as caught:
        deal.answer_t38("a", answer)
    assert (caught.value.status, caught.value.reason) == (488, "T.38 Not Accepted By Other Leg")
    assert deal.plan is audio_before and deal.t38 is None
    deal.withdraw("a")
    assert audio_of(deal.last_sent("a") or b"").formats == audio_of(before or b"").formats


def test_after_t38_an_audio_offer_brings_audio_back() -> None:
    deal = transcoded(crypto=False)
    deal.offer("b", t38_offer())
    deal.answer_t38("a", sdp("m=image 7000 udptl t38", "a=T38FaxVersion:0"))
    with pytest.raises(NegotiationError):  # no re-offer of audio while T.38 runs
        deal.reoffer("a", [PCMA])
    deal.offer("b", trunk_answer())
    _, plan = deal.answer("a", sdp("m=audio 4000 RTP/AVP 8"))
    assert deal.t38 is None and plan.a.codec.encoding == "PCMA"


def test_initial_t38_only_offer_goes_to_the_callee_as_t38() -> None:
    deal = negotiator(TRUNK, TRUNK)
    body = deal.offer("a", t38_offer(audio_first=False, host="198.51.100.7"))
    assert [(m.media, m.port) for m in parse_sdp(body).media] == [("image", 20002)]
    answer, plan = deal.answer_t38("b", sdp("m=image 7000 udptl t38", host="203.0.113.9"))
    assert plan.a == UdptlLeg("198.51.100.7", 5000) and plan.b == UdptlLeg("203.0.113.9", 7000)
    assert [(m.media, m.port) for m in parse_sdp(answer).media] == [("image", 20000)]


def test_audio_and_image_offer_takes_the_audio_and_refuses_the_image() -> None:
    deal = negotiator()
    offer = sdp(
        "m=audio 4000 RTP/AVP 8",
        "m=image 5000 udptl t38",
        "a=T38FaxVersion:0",
    )
    sent = parse_sdp(deal.offer("a", offer))
    assert [m.media for m in sent.media] == ["audio"]
    body, _ = deal.answer("b", trunk_answer())
    assert [(m.media, m.port) for m in parse_sdp(body).media] == [("audio", 20000), ("image", 0)]


@pytest.mark.parametrize(
    ("offer", "reason"),
    [
        (sdp("m=image 5000 tcp t38"), "Image Transport tcp t38 Not Supported"),
        (sdp("m=image 5000 udptl jpeg"), "Image Transport udptl jpeg Not Supported"),
    ],
)
def test_t38_over_other_transports_is_refused(offer: bytes, reason: str) -> None:
    with pytest.raises(NegotiationError) as caught:
        negotiator().offer("a", offer)
    assert (caught.value.status, caught.value.reason) == (488, reason)


def test_t38_is_refused_where_srtp_is_mandatory() -> None:
    secure = LegPolicy(srtp="mandatory", codecs=("opus",), sdes_allowed=True)
    with pytest.raises(NegotiationError) as caught:
        negotiator(secure, TRUNK).offer("b", t38_offer())
    assert caught.value.reason == "T.38 Not Allowed Where SRTP Is Mandatory"


def test_audio_answer_to_a_t38_offer_and_t38_answer_to_audio_are_mismatches() -> None:
    deal = transcoded()
    deal.offer("b", t38_offer())
    with pytest.raises(NegotiationError) as caught:
        deal.answer("a", sdp("m=audio 4000 RTP/AVP 8"))
    assert caught.value.reason == "Answer Without Offer"
    deal.offer("b", trunk_answer())
    with pytest.raises(NegotiationError):
        deal.answer_t38("a", sdp("m=image 7000 udptl t38"))
