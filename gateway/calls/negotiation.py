"""Per-leg SDP offer/answer of the B2BUA: codecs, SRTP keys and RTCP per leg (sans-IO).

The gateway is the answerer toward whoever offered and the offerer toward the
other leg (RFC 3264 5 and 6). Nothing of one leg's description is copied to the
other blindly: each leg gets the gateway's own address, ports, origin, keys and
a codec list built from that leg's policy, so either leg can be plain RTP or
SRTP and either leg can end up with a codec the other does not have.

* Offer toward the other leg: the offerer's codecs that the other leg's policy
  allows first, in the offerer's order (so a shared codec is relayed without
  transcoding), then the policy's codecs the gateway can transcode to;
  telephone-event (RFC 4733) and CN (RFC 3389) ride along.
* SRTP by SDES (RFC 4568): ``RTP/SAVP`` with one a=crypto per allowed suite,
  each with a fresh key of the gateway's. An ``RTP/AVP`` offer that carries
  a=crypto ("best effort" SRTP, as baresip's optional mode sends) is answered
  with SRTP when the policy allows it. Keys are made per leg and never cross.
* RTCP multiplexing (RFC 5761 5.1.1) is offered and echoed per leg.
* Answer to the offerer: the codec the other leg chose when the offerer has it
  (relay), else the offerer's first codec the gateway can transcode.

The result is a :class:`MediaPlan`: per leg the peer's address, the codec and
its payload type, telephone-event and CN payload types, ptime, rtcp-mux and the
two SRTP keys (ours, which protects what we send, and the peer's); and whether
the call needs transcoding. Only the first live audio stream is carried; other
streams are refused with port 0 (RFC 3264 6).

Fax over T.38 (ITU-T T.38 Annex D, ``m=image <port> udptl t38``, RFC 3362): an
offer whose only live stream is T.38 is offered on to the other leg as T.38,
with the same T38* attributes and the gateway's address and port (RFC 3264
8.3.3: the stream changes its media type in place), and answered with what the
other leg answered (:meth:`Negotiator.answer_t38`, a :class:`T38Plan`). If the
other leg refuses it (a failure response, or port 0), the offerer gets 488 and
the audio goes on as it was. An offer with live audio and T.38 is taken as
audio, and its image stream refused with port 0. UDPTL carries no SRTP, so a
leg whose policy makes SRTP mandatory never gets or gives T.38.

The gateway also makes offers of its own (:meth:`Negotiator.reoffer`): toward
one leg, restricted to given codecs, keeping that leg's SRTP key (the same
a=crypto line), the other leg untouched. A fax heard on a transcoded call uses
it to move the call to G.711 pass-through. A refused offer is withdrawn
(:meth:`Negotiator.withdraw`, RFC 3264 8: the session stays as it was).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.media.srtp import (
    DEFAULT_SUITES,
    CryptoAttribute,
    SdesError,
    SrtpSuite,
    choose_crypto,
    new_crypto,
    parse_crypto,
)
from gateway.sip.sdp import (
    Attribute,
    Connection,
    Media,
    Origin,
    RtpMap,
    SdpError,
    SessionDescription,
    Timing,
    parse_sdp,
)
from gateway.store.model import SrtpPolicy

__all__ = [
    "TRANSCODABLE",
    "Codec",
    "LegMedia",
    "LegPolicy",
    "MediaPlan",
    "NegotiationError",
    "Negotiator",
    "Side",
    "T38Plan",
    "UdptlLeg",
]

Side = Literal["a", "b"]

# Encodings the media plane can decode and encode (lower case, with their RTP clock).
TRANSCODABLE: dict[str, int] = {
    "pcma": 8000,
    "pcmu": 8000,
    "g722": 8000,
    "g729": 8000,
    "opus": 48000,
}
_STATIC_PT = {"pcmu": 0, "pcma": 8, "g722": 9, "cn": 13, "g729": 18}
_CANONICAL = {"pcma": "PCMA", "pcmu": "PCMU", "g722": "G722", "g729": "G729", "opus": "opus"}
_OPUS_FMTP = "useinbandfec=1;usedtx=1"
_TELEPHONE_EVENT_FMTP = "0-16"
_SAVP = frozenset({"RTP/SAVP", "RTP/SAVPF"})
_AVP = frozenset({"RTP/AVP", "RTP/AVPF"})
_AUXILIARY = frozenset({"telephone-event", "cn"})


class NegotiationError(Exception):
    """An offer or answer the gateway cannot accept.

    ``status`` and ``reason`` are the SIP response for the offerer (488 Not
    Acceptable Here unless the SDP itself is broken); ``cause`` is the CDR's
    end reason.
    """

    def __init__(self, status: int, reason: str, cause: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.cause = cause


@dataclass(frozen=True, slots=True)
class LegPolicy:
    """What one leg may use: decided by the subscriber or trunk behind it.

    ``sdes_allowed`` says whether keys may travel in this leg's SDP: the
    signalling is TLS, or SIP listens on loopback only, or the peer is on a
    trusted network.
    """

    srtp: SrtpPolicy
    codecs: tuple[str, ...]
    sdes_allowed: bool
    suites: tuple[SrtpSuite, ...] = DEFAULT_SUITES
    rtcp_mux: bool = True
    ptime: int = 20
    # Whether the peer may sit behind NAT, so its media may come from another address
    # than its SDP says (apps); a carrier's comes from its SDP host.
    nat: bool = True


@dataclass(frozen=True, slots=True)
class Codec:
    """One payload format as negotiated on a leg."""

    encoding: str
    payload_type: int
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        """Identity across legs: the encoding (case-insensitive) and its clock."""
        return self.encoding.lower(), self.clock_rate

    def rtpmap(self) -> str:
        tail = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.payload_type} {self.encoding}/{self.clock_rate}{tail}"


@dataclass(frozen=True, slots=True)
class LegMedia:
    """What one leg agreed: where its peer is and what flows on it."""

    host: str
    rtp_port: int
    rtcp_port: int
    rtcp_mux: bool
    codec: Codec
    telephone_event: Codec | None
    comfort_noise: Codec | None
    ptime: int
    direction: str
    srtp_local: CryptoAttribute | None  # ours: protects what the gateway sends
    srtp_remote: CryptoAttribute | None  # the peer's: unprotects what it sends

    @property
    def secure(self) -> bool:
        return self.srtp_local is not None


@dataclass(frozen=True, slots=True)
class MediaPlan:
    a: LegMedia
    b: LegMedia
    passthrough: bool = False
    """A fax or modem call: never decoded when the codecs are the same, whatever
    RFC 4733 support the legs have (in-band tones pass as they are)."""

    @property
    def transcoding(self) -> bool:
        """True when audio must be decoded and re-encoded: the legs' codecs differ, or
        one leg has RFC 4733 telephone-event and the other has not (its DTMF must then
        be heard as tones in the audio, and tones detected in it), unless the call
        is a pass-through one."""
        if self.a.codec.key != self.b.codec.key:
            return True
        if self.passthrough:
            return False
        a, b = self.a.telephone_event, self.b.telephone_event
        if (a is None) != (b is None):
            return True
        # Relayed events keep their timestamps: both legs must count them at one clock.
        return a is not None and b is not None and a.clock_rate != b.clock_rate

    def leg(self, side: Side) -> LegMedia:
        return self.a if side == "a" else self.b


@dataclass(frozen=True, slots=True)
class UdptlLeg:
    """Where one leg's T.38 peer receives UDPTL."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class T38Plan:
    """Both legs agreed T.38: UDPTL is relayed between these peers as it is."""

    a: UdptlLeg
    b: UdptlLeg

    def leg(self, side: Side) -> UdptlLeg:
        return self.a if side == "a" else self.b


@dataclass(slots=True)
class _Offered:
    """An audio stream as offered by a peer."""

    sdp: SessionDescription
    index: int  # which m= line
    media: Media
    host: str
    codecs: list[Codec]
    events: list[Codec]
    noise: list[Codec]
    crypto: CryptoAttribute | None  # the offered line we accept, when SRTP
    ptime: int | None


@dataclass(slots=True)
class _Pending:
    """An audio offer sent to the leg that is not ``offerer``, waiting for its answer."""

    offerer: Side
    offer: _Offered | None  # None: the gateway's own offer, the offerer's leg is kept
    sent: list[Codec]  # what we offered to the other side
    secure: bool  # we offered SRTP to the other side
    keys: dict[int, CryptoAttribute]  # our a=crypto lines in that offer, by tag
    restore: bytes | None  # what that side had from us before the offer (for withdraw)
    kept: LegMedia | None = None  # the offerer's leg, for the gateway's own offer
    passthrough: bool = False  # once answered, the call is a pass-through one


@dataclass(slots=True)
class _PendingT38:
    """A T.38 offer sent on to the leg that is not ``offerer``."""

    offerer: Side
    sdp: SessionDescription
    index: int  # which m= line of the offer is the image stream
    host: str
    port: int
    restore: bytes | None


@dataclass(slots=True)
class _LegState:
    policy: LegPolicy
    origin: Origin
    rtp_port: int
    last_body: bytes | None = None
    audio: Media | None = None  # the last live audio stream we described to this leg
    keys: dict[SrtpSuite, CryptoAttribute] = field(default_factory=dict)

    def key_for(self, suite: SrtpSuite, tag: int) -> CryptoAttribute:
        """Our key for ``suite``, made once per leg and kept across re-offers.

        Keeping it means libsrtp contexts survive a re-INVITE: a fresh context
        on an old key would restart packet indexes, which SRTP forbids.
        """
        key = self.keys.get(suite)
        if key is None:
            key = new_crypto(tag, suite)
            self.keys[suite] = key
        if key.tag != tag:
            return CryptoAttribute(tag=tag, suite=key.suite, keys=key.keys, session_params=())
        return key


def _other(side: Side) -> Side:
    return "b" if side == "a" else "a"


class Negotiator:
    """Offer/answer for the two legs of one call.

    ``offer(side, body)`` takes an offer that arrived from ``side`` and gives
    the offer to send to the other leg; ``answer(side, body)`` takes the
    other leg's answer and gives the answer for the offerer and the plan.
    Answers may come more than once (183 then 200, or several forks): each
    is answered against the same pending offer.
    """

    def __init__(
        self,
        policies: dict[Side, LegPolicy],
        *,
        host: str | dict[Side, str],
        ports: dict[Side, int],
        origins: dict[Side, Origin],
        transcoding: bool = True,
    ) -> None:
        # One address for both legs, or one per leg when they differ in family (IPv4
        # toward one, IPv6 toward the other: the relay bridges them).
        self.hosts: dict[Side, str] = host if isinstance(host, dict) else {"a": host, "b": host}
        self.transcoding = transcoding
        self._legs: dict[Side, _LegState] = {
            side: _LegState(policies[side], origins[side], ports[side]) for side in ("a", "b")
        }
        self._pending: _Pending | _PendingT38 | None = None
        self.plan: MediaPlan | None = None
        """The audio as last agreed (kept while T.38 runs)."""
        self.t38: T38Plan | None = None
        """The T.38 session while the call carries fax over UDPTL instead of audio."""
        self.passthrough = False
        """A fax moved the call to pass-through: plans relay equal codecs, and offers
        carry only the offerer's codecs (``transcoding`` is off from then on)."""

    def offered_media(self) -> tuple[str, int, int] | None:
        """The pending audio offer's media address (host, RTP port, RTCP port): the
        peer's, so early media can reach it; None for T.38 or the gateway's own offer."""
        pending = self._pending
        if not isinstance(pending, _Pending) or pending.offer is None:
            return None
        offer = pending.offer
        return offer.host, offer.media.port, _rtcp_port(offer.media, offer.media.rtcp_mux)

    def offered_crypto(self) -> CryptoAttribute | None:
        """The pending offer's a=crypto the gateway accepted (the offerer's key), if any."""
        pending = self._pending
        if not isinstance(pending, _Pending) or pending.offer is None:
            return None
        return pending.offer.crypto

    @property
    def pending_t38(self) -> bool:
        """Whether the offer waiting for its answer is T.38."""
        return isinstance(self._pending, _PendingT38)

    def policy(self, side: Side) -> LegPolicy:
        return self._legs[side].policy

    # ---- offers ------------------------------------------------------------------------

    def offer(self, side: Side, body: bytes) -> bytes:
        """An offer from ``side``: the offer for the other leg (NegotiationError if refused)."""
        sdp = _parse(body)
        image = _t38_stream(sdp)
        if image is not None:
            return self._offer_t38(side, sdp, *image)
        offered = self._read_offer(side, sdp)
        target = _other(side)
        leg = self._legs[target]
        sent = _offer_codecs(offered, leg.policy, transcoding=self.transcoding)
        if not any(c.encoding.lower() not in _AUXILIARY for c in sent):
            raise NegotiationError(488, "No Common Codec", "no-common-codec")
        secure = self._offer_secure(target)
        keys = (
            {tag: leg.key_for(suite, tag) for tag, suite in enumerate(leg.policy.suites, 1)}
            if secure
            else {}
        )
        self._pending = _Pending(side, offered, sent, secure, keys, leg.last_body)
        media = self._offer_media(target, sent, keys, offered)
        return self._render(target, [media], offered.sdp.times)

    def reoffer(self, side: Side, codecs: Sequence[Codec], *, passthrough: bool = False) -> bytes:
        """The gateway's own offer toward ``side``, with only ``codecs`` (in that order).

        Everything else is as ``side`` has it: our address and port, rtcp-mux, the
        direction we last gave it, and its SRTP key (the one a=crypto line agreed,
        same tag and key, so its contexts go on). The other leg is not touched;
        :meth:`answer` takes ``side``'s answer as usual and makes the plan from it
        and the other leg as it was. With ``passthrough`` the call becomes a
        pass-through one once this is answered (see :attr:`passthrough`).
        """
        plan, leg = self.plan, self._legs[side]
        previous = leg.audio
        if plan is None or self.t38 is not None or previous is None or leg.last_body is None:
            raise NegotiationError(488, "No Audio Session To Re-Offer", "no-audio")
        if not any(c.encoding.lower() not in _AUXILIARY for c in codecs):
            raise NegotiationError(488, "No Codec To Re-Offer", "no-common-codec")
        mine = plan.leg(side)
        last = _parse(leg.last_body)
        secure = mine.srtp_local is not None
        proto = previous.proto if secure or previous.proto in _AVP else "RTP/AVP"
        media = Media("audio", leg.rtp_port, proto, [])
        _describe(media, codecs)
        media.attributes.append(("ptime", str(leg.policy.ptime)))
        _transport_attributes(media, leg.rtp_port, mine.rtcp_mux)
        keys: dict[int, CryptoAttribute] = {}
        if mine.srtp_local is not None:
            keys[mine.srtp_local.tag] = mine.srtp_local
            media.attributes.append(("crypto", mine.srtp_local.to_value()))
        media.attributes.append((previous.direction, None))
        self._pending = _Pending(
            offerer=_other(side),
            offer=None,
            sent=list(codecs),
            secure=secure,
            keys=keys,
            restore=leg.last_body,
            kept=plan.leg(_other(side)),
            passthrough=passthrough,
        )
        return self._render(side, [media], last.times)

    def retarget(
        self,
        side: Side,
        policy: LegPolicy,
        origin: Origin,
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        """``side`` is a new peer (the next route of an unanswered call): forget what was
        said to the old one, its keys and any offer pending, and take its policy. ``host``
        and ``port``: the leg's media moved to another address (a route of another role)."""
        if host is not None:
            self.hosts[side] = host
        rtp_port = self._legs[side].rtp_port if port is None else port
        self._legs[side] = _LegState(policy, origin, rtp_port)
        self._pending = None
        self.plan = None

    def withdraw(self, side: Side) -> None:
        """The offer sent toward ``side`` was refused: the session stays as it was.

        What :meth:`last_sent` gives for ``side`` goes back to the description it
        had before that offer, under a new o= version (the refused offer used one).
        Nothing happens when no offer toward ``side`` is pending.
        """
        pending = self._pending
        if pending is None or pending.offerer == side:
            return
        self._pending = None
        leg = self._legs[side]
        restore = pending.restore
        if restore is None or restore == leg.last_body:
            leg.last_body = restore
            return
        sdp = _parse(restore)
        leg.origin = leg.origin.bumped()
        sdp.origin = leg.origin
        leg.last_body = sdp.to_bytes()

    def _offer_t38(self, side: Side, sdp: SessionDescription, index: int, image: Media) -> bytes:
        """A T.38 offer from ``side``: the same T.38 toward the other leg, from our port."""
        target = _other(side)
        for each in (side, target):
            if self._legs[each].policy.srtp == "mandatory":
                raise NegotiationError(
                    488, "T.38 Not Allowed Where SRTP Is Mandatory", "t38-refused"
                )
        host = _host_of(sdp, image)
        leg = self._legs[target]
        self._pending = _PendingT38(side, sdp, index, host, image.port, leg.last_body)
        media = _image_media(leg.rtp_port, image, sdp.direction_of(image))
        return self._render(target, [media], sdp.times)

    def _offer_secure(self, target: Side) -> bool:
        policy = self._legs[target].policy
        if policy.srtp == "off":
            return False
        if not policy.sdes_allowed:
            if policy.srtp == "mandatory":
                raise NegotiationError(
                    488, "Callee Needs SRTP Over TLS", "srtp-needs-secure-signalling"
                )
            return False
        return True

    def _offer_media(
        self,
        target: Side,
        sent: list[Codec],
        keys: dict[int, CryptoAttribute],
        offered: _Offered,
    ) -> Media:
        leg = self._legs[target]
        media = Media("audio", leg.rtp_port, "RTP/SAVP" if keys else "RTP/AVP", [])
        _describe(media, sent)
        media.attributes.append(("ptime", str(leg.policy.ptime)))
        _transport_attributes(media, leg.rtp_port, leg.policy.rtcp_mux)
        for key in keys.values():
            media.attributes.append(("crypto", key.to_value()))
        media.attributes.append((offered.sdp.direction_of(offered.media), None))
        return media

    def _read_offer(self, side: Side, sdp: SessionDescription) -> _Offered:
        index, media = _first_audio(sdp)
        policy = self._legs[side].policy
        host = _host_of(sdp, media)
        crypto = _offer_crypto(media, policy)
        codecs, events, noise = _codecs_of(media)
        if not codecs:
            raise NegotiationError(488, "No Audio Codec Offered", "no-common-codec")
        return _Offered(sdp, index, media, host, codecs, events, noise, crypto, media.ptime)

    # ---- answers -----------------------------------------------------------------------

    def answer(self, side: Side, body: bytes) -> tuple[bytes, MediaPlan]:
        """The answer from ``side`` to our offer: the answer for the offerer and the plan.

        For the gateway's own offer (:meth:`reoffer`) nobody waits for an answer:
        the offerer's leg is unchanged and its last description is returned.
        """
        pending = self._pending
        if not isinstance(pending, _Pending) or pending.offerer == side:
            raise NegotiationError(488, "Answer Without Offer", "bad-sdp")
        sdp = _parse(body)
        answered = self._read_answer(side, sdp, pending)
        offerer = pending.offerer
        if pending.offer is None:
            assert pending.kept is not None  # reoffer() keeps the other leg
            their = pending.kept
        else:
            their = self._answer_offerer(offerer, pending.offer, answered)
        if pending.passthrough:
            self.passthrough = True
            self.transcoding = False
        legs = {side: answered, offerer: their}
        self.plan = MediaPlan(a=legs["a"], b=legs["b"], passthrough=self.passthrough)
        self.t38 = None
        if pending.offer is None:
            return self._legs[offerer].last_body or b"", self.plan
        media = self._answer_media(
            offerer, pending.offer, their, answered.direction, answered.codec
        )
        return self._render(offerer, media, pending.offer.sdp.times), self.plan

    def answer_t38(self, side: Side, body: bytes) -> tuple[bytes, T38Plan]:
        """The answer from ``side`` to a T.38 offer we sent on: the T.38 answer for the
        offerer and the plan; NegotiationError (488) when ``side`` did not take T.38."""
        pending = self._pending
        if not isinstance(pending, _PendingT38) or pending.offerer == side:
            raise NegotiationError(488, "Answer Without Offer", "bad-sdp")
        sdp = _parse(body)
        image = next(
            (m for m in sdp.media if m.media == "image" and m.port != 0 and _is_udptl_t38(m)),
            None,
        )
        if image is None:
            raise NegotiationError(488, "T.38 Not Accepted By Other Leg", "t38-refused")
        offerer = pending.offerer
        legs = {
            side: UdptlLeg(_host_of(sdp, image), image.port),
            offerer: UdptlLeg(pending.host, pending.port),
        }
        self.t38 = T38Plan(a=legs["a"], b=legs["b"])
        port = self._legs[offerer].rtp_port
        media: list[Media] = []
        for index, offered in enumerate(pending.sdp.media):
            if index == pending.index:
                media.append(_image_media(port, image, sdp.direction_of(image)))
            else:
                media.append(Media(offered.media, 0, offered.proto, list(offered.formats)))
        return self._render(offerer, media, pending.sdp.times), self.t38

    def _read_answer(self, side: Side, sdp: SessionDescription, pending: _Pending) -> LegMedia:
        live = [m for m in sdp.media if m.media == "audio" and m.port != 0]
        if not live:
            raise NegotiationError(488, "Callee Refused The Audio Stream", "callee-refused-media")
        media = live[0]
        if not media.is_rtp:
            raise NegotiationError(488, f"Callee Answered {media.proto}", "callee-bad-sdp")
        codecs, events, noise = _codecs_of(media)
        chosen = _match(codecs, pending.sent)
        if chosen is None:
            raise NegotiationError(488, "Callee Chose No Offered Codec", "callee-bad-sdp")
        local, remote = self._answer_keys(side, media, pending)
        host = _host_of(sdp, media)
        mux = media.rtcp_mux and self._legs[side].policy.rtcp_mux
        return LegMedia(
            host=host,
            rtp_port=media.port,
            rtcp_port=_rtcp_port(media, mux),
            rtcp_mux=mux,
            codec=chosen,
            # RFC 4733 2.1: events count time at the audio's clock; one at another clock
            # cannot share the stream's timeline, so it is as good as none.
            telephone_event=_with_rate(
                [e for e in events if _match([e], pending.sent)], chosen.clock_rate
            ),
            comfort_noise=_match(noise, pending.sent),
            ptime=media.ptime or 20,
            direction=sdp.direction_of(media),
            srtp_local=local,
            srtp_remote=remote,
        )

    def _answer_keys(
        self, side: Side, media: Media, pending: _Pending
    ) -> tuple[CryptoAttribute | None, CryptoAttribute | None]:
        lines = _crypto_lines(media)
        if not pending.secure:
            if lines or media.proto in _SAVP:
                raise NegotiationError(488, "Callee Answered SRTP To A Plain Offer", "bad-srtp")
            return None, None
        leg = self._legs[side]
        if not lines and media.proto in _AVP and leg.policy.srtp == "optional":
            # Not RFC 3264 (the proto must match), but many UAs answer a SAVP offer this
            # way; "optional" means plain RTP is acceptable, so take it rather than fail.
            return None, None
        if len(lines) != 1:
            raise NegotiationError(
                488, "Callee Answer Needs Exactly One a=crypto", "callee-bad-srtp"
            )
        remote = lines[0]
        suite = remote.known_suite
        if suite is None or suite not in leg.policy.suites:
            raise NegotiationError(488, "Callee Chose A Suite Not Offered", "callee-bad-srtp")
        ours = pending.keys.get(remote.tag)
        if ours is None or ours.known_suite is not suite:
            raise NegotiationError(488, "Callee Answered An Unknown Crypto Tag", "callee-bad-srtp")
        return ours, remote

    def _answer_offerer(self, side: Side, offer: _Offered, answered: LegMedia) -> LegMedia:
        leg = self._legs[side]
        codec = _same_codec(offer.codecs, answered.codec) or _transcoding_choice(
            offer.codecs, leg.policy
        )
        rate = codec.clock_rate
        local = None
        if offer.crypto is not None:
            suite = offer.crypto.known_suite
            assert suite is not None  # _offer_crypto accepted only known suites
            local = leg.key_for(suite, offer.crypto.tag)
        mux = offer.media.rtcp_mux and leg.policy.rtcp_mux
        return LegMedia(
            host=offer.host,
            rtp_port=offer.media.port,
            rtcp_port=_rtcp_port(offer.media, mux),
            rtcp_mux=mux,
            codec=codec,
            telephone_event=_with_rate(offer.events, rate),
            comfort_noise=_with_rate(offer.noise, rate) if rate == 8000 else None,
            ptime=offer.ptime or 20,
            direction=offer.sdp.direction_of(offer.media),
            srtp_local=local,
            srtp_remote=offer.crypto,
        )

    def _answer_media(
        self, side: Side, offer: _Offered, mine: LegMedia, direction: str, far: Codec
    ) -> list[Media]:
        """The answer's m= lines; ``direction`` is what the other leg answered us.

        Our offer copied the offerer's direction, so the other leg's answer to it is
        the right answer to the offerer too (RFC 3264 6.1). ``far`` is the other leg's
        codec: its format parameters say what the far end wants to receive.
        """
        leg = self._legs[side]
        result: list[Media] = []
        for index, offered in enumerate(offer.sdp.media):
            if index != offer.index:
                result.append(Media(offered.media, 0, offered.proto, list(offered.formats)))
                continue
            media = Media("audio", leg.rtp_port, offered.proto, [])
            codecs = [_received_format(mine.codec, far), mine.telephone_event, mine.comfort_noise]
            _describe(media, [c for c in codecs if c is not None])
            media.attributes.append(("ptime", str(leg.policy.ptime)))
            _transport_attributes(media, leg.rtp_port, mine.rtcp_mux, answer=True)
            if mine.srtp_local is not None:
                media.attributes.append(("crypto", mine.srtp_local.to_value()))
            media.attributes.append((direction, None))
            result.append(media)
        return result

    # ---- rendering ---------------------------------------------------------------------

    def _render(self, side: Side, media: list[Media], times: Iterable[Timing]) -> bytes:
        leg = self._legs[side]
        body = _session(leg.origin, self.hosts[side], media, times).to_bytes()
        if leg.last_body is not None and body != leg.last_body:
            # RFC 3264 8: a changed description carries a higher o= version.
            leg.origin = leg.origin.bumped()
            body = _session(leg.origin, self.hosts[side], media, times).to_bytes()
        leg.last_body = body
        for stream in media:
            if stream.media == "audio" and stream.port != 0:
                leg.audio = stream
        return body

    def last_sent(self, side: Side) -> bytes | None:
        """The last description sent toward ``side`` (for re-sending it unchanged)."""
        return self._legs[side].last_body


# ---- pieces ------------------------------------------------------------------------------


def _parse(body: bytes) -> SessionDescription:
    try:
        return parse_sdp(body)
    except SdpError as exc:
        raise NegotiationError(400, f"Bad SDP: {exc}", "bad-sdp") from exc


def _first_audio(sdp: SessionDescription) -> tuple[int, Media]:
    for index, media in enumerate(sdp.media):
        if media.media == "audio" and media.port != 0:
            if media.proto not in _SAVP | _AVP:
                raise NegotiationError(
                    488, f"Media Transport {media.proto} Not Supported", "bad-sdp"
                )
            return index, media
    raise NegotiationError(488, "No Usable Audio Stream", "no-audio")


def _is_udptl_t38(media: Media) -> bool:
    return media.proto.lower() == "udptl" and [f.lower() for f in media.formats] == ["t38"]


def _t38_stream(sdp: SessionDescription) -> tuple[int, Media] | None:
    """The image stream of an offer whose only live stream is T.38 over UDPTL.

    None when the offer has live audio or nothing but audio (the audio path
    decides). Image over anything but UDPTL (T.38 over TCP, or TLS) is refused.
    """
    live = [(index, media) for index, media in enumerate(sdp.media) if media.port != 0]
    if len(live) != 1 or live[0][1].media != "image":
        return None
    index, media = live[0]
    if not _is_udptl_t38(media):
        formats = " ".join(media.formats)
        raise NegotiationError(
            488, f"Image Transport {media.proto} {formats} Not Supported", "t38-refused"
        )
    return index, media


def _image_media(port: int, source: Media, direction: str) -> Media:
    """``m=image <port> udptl t38`` with ``source``'s T.38 attributes (T.38 Annex D.2.3)."""
    attributes: list[Attribute] = [
        (key, value) for key, value in source.attributes if key.lower().startswith("t38")
    ]
    attributes.append((direction, None))
    return Media("image", port, "udptl", ["t38"], attributes=attributes)


def _host_of(sdp: SessionDescription, media: Media) -> str:
    connection = media.connection or sdp.connection
    if connection is None:
        raise NegotiationError(400, "Bad SDP: audio stream without c= line", "bad-sdp")
    return connection.address


def _crypto_lines(media: Media) -> list[CryptoAttribute]:
    lines: list[CryptoAttribute] = []
    for key, value in media.attributes:
        if key != "crypto" or value is None:
            continue
        try:
            lines.append(parse_crypto(value))
        except SdesError as exc:
            raise NegotiationError(488, f"Bad a=crypto: {exc}", "bad-srtp") from exc
    return lines


def _offer_crypto(media: Media, policy: LegPolicy) -> CryptoAttribute | None:
    """The offered a=crypto the gateway answers, or None for plain RTP (RFC 4568 7.1.2)."""
    lines = _crypto_lines(media)
    savp = media.proto in _SAVP
    if savp and not lines:
        raise NegotiationError(488, "RTP/SAVP Offer Without a=crypto", "bad-srtp")
    if not lines or policy.srtp == "off":
        if savp:
            raise NegotiationError(488, "SRTP Not Allowed", "srtp-refused")
        if policy.srtp == "mandatory":
            raise NegotiationError(488, "SRTP Required", "srtp-required")
        return None
    if not policy.sdes_allowed:
        if savp or policy.srtp == "mandatory":
            raise NegotiationError(488, "SDES Keys Need TLS Signalling", "sdes-over-plain")
        return None  # best-effort crypto over plain signalling: answer plain RTP
    try:
        chosen = choose_crypto(lines, policy.suites)
    except SdesError as exc:
        raise NegotiationError(488, f"Bad a=crypto: {exc}", "bad-srtp") from exc
    if chosen is None:
        if savp or policy.srtp == "mandatory":
            raise NegotiationError(488, "No Acceptable Crypto Suite", "srtp-no-suite")
        return None
    return chosen


def _codecs_of(media: Media) -> tuple[list[Codec], list[Codec], list[Codec]]:
    fmtp = media.fmtp()
    codecs: list[Codec] = []
    events: list[Codec] = []
    noise: list[Codec] = []
    for pt, entry in media.rtpmap().items():
        codec = _codec(entry, fmtp.get(pt))
        name = entry.encoding.lower()
        if name == "telephone-event":
            events.append(codec)
        elif name == "cn":
            noise.append(codec)
        else:
            codecs.append(codec)
    return codecs, events, noise


def _codec(entry: RtpMap, fmtp: str | None) -> Codec:
    return Codec(entry.encoding, entry.payload_type, entry.clock_rate, entry.channels, fmtp)


def _offer_codecs(offered: _Offered, policy: LegPolicy, *, transcoding: bool) -> list[Codec]:
    """Relayable codecs first (the offerer's, allowed here), then ones we transcode to."""
    allowed = {name.lower() for name in policy.codecs}
    sent = [c for c in offered.codecs if c.encoding.lower() in allowed]
    can_decode = transcoding and any(c.key in _TRANSCODABLE_KEYS for c in offered.codecs)
    used = {c.payload_type for c in [*offered.codecs, *offered.events, *offered.noise]}
    if can_decode:
        have = {c.key for c in sent}
        for name in policy.codecs:
            codec = _new_codec(name.lower(), used)
            if codec is not None and codec.key not in have:
                sent.append(codec)
                have.add(codec.key)
                used.add(codec.payload_type)
    sent += _rides_along(offered, sent, used)
    return sent


def _rides_along(offered: _Offered, sent: list[Codec], used: set[int]) -> list[Codec]:
    """telephone-event for each clock rate in the offer; CN when an 8 kHz codec is."""
    extra: list[Codec] = []
    rates = sorted({c.clock_rate for c in sent if c.encoding.lower() not in _AUXILIARY})
    for rate in rates:
        event = _with_rate(offered.events, rate)
        if event is None:
            event = Codec("telephone-event", _free_pt(used), rate, 1, _TELEPHONE_EVENT_FMTP)
            used.add(event.payload_type)
        extra.append(event)
    if 8000 in rates:
        noise = _with_rate(offered.noise, 8000) or Codec("CN", 13, 8000)
        extra.append(noise)
    return extra


_TRANSCODABLE_KEYS = frozenset(TRANSCODABLE.items())


def _new_codec(name: str, used: set[int]) -> Codec | None:
    rate = TRANSCODABLE.get(name)
    if rate is None:
        return None
    if name == "opus":
        return Codec("opus", _free_pt(used, 111), 48000, 2, _OPUS_FMTP)
    fmtp = "annexb=no" if name == "g729" else None
    pt = _STATIC_PT[name]
    return Codec(_CANONICAL[name], pt, rate, 1, fmtp)


def _free_pt(used: set[int], preferred: int = 101) -> int:
    """A dynamic payload type (RFC 3551 3: 96-127) not used in this description."""
    candidates: list[int] = [preferred, *range(96, 128)]
    for pt in candidates:
        if pt not in used:
            return pt
    raise NegotiationError(488, "No Free Payload Type", "bad-sdp")


def _match(codecs: Sequence[Codec], offered: Sequence[Codec]) -> Codec | None:
    """The first of ``codecs`` (an answer's, in its order) that was offered."""
    by_pt = {c.payload_type: c for c in offered}
    for codec in codecs:
        mine = by_pt.get(codec.payload_type)
        if mine is not None and mine.key == codec.key:
            return codec
        if any(o.key == codec.key for o in offered):
            return codec
    return None


def _same_codec(codecs: Sequence[Codec], wanted: Codec) -> Codec | None:
    for codec in codecs:
        if codec.key == wanted.key:
            return codec
    return None


def _transcoding_choice(codecs: Sequence[Codec], policy: LegPolicy) -> Codec:
    usable = [c for c in codecs if c.key in _TRANSCODABLE_KEYS]
    allowed = {name.lower() for name in policy.codecs}
    preferred = [c for c in usable if c.encoding.lower() in allowed]
    choices = preferred or usable
    if not choices:
        raise NegotiationError(488, "No Common Codec", "no-common-codec")
    return choices[0]


def _with_rate(codecs: Sequence[Codec], rate: int) -> Codec | None:
    for codec in codecs:
        if codec.clock_rate == rate:
            return codec
    return None


# What the gateway asks of an Opus sender it decodes (RFC 7587 6.1): in-band FEC, so a
# lost packet is rebuilt from the next one; mono, which is all the transcoder uses.
_OPUS_RECEIVE_FMTP = "useinbandfec=1;stereo=0;sprop-stereo=0"


def _received_format(mine: Codec, far: Codec) -> Codec:
    """``mine`` with the format parameters that describe what we want to receive.

    Relayed, the far end receives what this leg sends: its parameters apply. Transcoded,
    the gateway decodes: for Opus it asks for FEC; other codecs keep the offer's.
    """
    if mine.key == far.key:
        return Codec(mine.encoding, mine.payload_type, mine.clock_rate, mine.channels, far.fmtp)
    if mine.encoding.lower() == "opus":
        fmtp = _OPUS_RECEIVE_FMTP
        return Codec(mine.encoding, mine.payload_type, mine.clock_rate, mine.channels, fmtp)
    return mine


def _rtcp_port(media: Media, mux: bool) -> int:
    if mux:
        return media.port
    return media.rtcp_port or media.port + 1


def _describe(media: Media, codecs: Sequence[Codec]) -> None:
    media.formats = [str(c.payload_type) for c in codecs]
    for codec in codecs:
        media.attributes.append(("rtpmap", codec.rtpmap()))
        if codec.fmtp:
            media.attributes.append(("fmtp", f"{codec.payload_type} {codec.fmtp}"))


def _transport_attributes(media: Media, port: int, mux: bool, *, answer: bool = False) -> None:
    # An offer names the RTCP port too, for a peer that does not take rtcp-mux (RFC 5761
    # 5.1.1); an answer that muxes needs no a=rtcp.
    if not (answer and mux):
        media.attributes.append(("rtcp", str(port + 1)))
    if mux:
        media.attributes.append(("rtcp-mux", None))


def _session(
    origin: Origin, host: str, media: list[Media], times: Iterable[Timing]
) -> SessionDescription:
    return SessionDescription(
        origin=origin,
        session_name="-",
        connection=Connection.for_address(host),
        times=[Timing(t.start, t.stop) for t in times] or [Timing(0, 0)],
        media=media,
    )
