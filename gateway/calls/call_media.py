"""The media side of one call: its offer/answer, its relay and the keys between them.

The B2BUA hands every SDP body it receives to :class:`CallMedia` and sends on
what comes back; CallMedia keeps the per-leg :class:`~gateway.calls.negotiation.Negotiator`
and, on each answer, points the :class:`~gateway.media.relay.MediaSession` at
the peers and gives it the leg's SRTP contexts and payload-type mapping.

SRTP contexts are kept while a leg's keys stay the same (a re-INVITE that
changes nothing must not restart libsrtp's packet indexes, RFC 3711 9.1);
new keys get new contexts.

When the plan's legs have different codecs, the session transcodes: one
:class:`~gateway.media.codecs.AudioCodec` per leg (from the plan and the
``[media]`` Opus settings, by :func:`~gateway.media.codecs.make_pair`), a
:class:`~gateway.media.transcode.Transcoder` per direction, and the session's
RTCP per leg. A re-INVITE that leaves the legs'
formats as they were keeps the running transcoders (their SSRCs and sequence
numbers go on); one that makes the codecs equal goes back to relaying.

Fax and modem calls: each transcoder's decoded audio passes a
:class:`~gateway.media.fax.FaxListener` (a PCM tap). The first fax or modem
tone heard on the call is reported once through :attr:`CallMedia.on_fax`; the
call then asks :meth:`CallMedia.fax_reoffer` for the offer that moves the
non-G.711 leg to the G.711 leg's codec, and once that is answered the plan is
a pass-through one: relayed, so no jitter buffer, decoding or concealment
touches the fax. The media plane only reports; the SIP is the call's.

T.38 (:class:`~gateway.calls.negotiation.T38Plan`): both legs' sockets carry
UDPTL in the relay's datagram mode, with no RTCP and no SRTP, until an audio
answer comes again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from gateway.calls.negotiation import (
    Codec,
    LegMedia,
    LegPolicy,
    MediaPlan,
    NegotiationError,
    Negotiator,
    Side,
    T38Plan,
)
from gateway.config import Config, MediaConfig, TrunkConfig
from gateway.media.codecs import AudioCodec, OpusSettings, UnsupportedCodec, make_pair
from gateway.media.fax import FaxListener
from gateway.media.relay import MediaSession
from gateway.media.srtp import CryptoAttribute, SrtpReceiver, SrtpSender, SrtpSuite
from gateway.media.tones import FaxTone
from gateway.media.transcode import JitterSettings, StreamFormat, Transcoder
from gateway.sip.sdp import Origin
from gateway.store.model import Subscriber
from gateway.transport.flow import is_loopback

__all__ = [
    "CallMedia",
    "FaxDetected",
    "TranscodeSettings",
    "app_policy",
    "sdes_allowed",
    "transcode_settings",
    "trunk_policy",
]

log = structlog.get_logger("edgegw.media")

_G711 = frozenset({"pcma", "pcmu"})


@dataclass(frozen=True, slots=True)
class FaxDetected:
    """The first fax or modem tone of a call: which leg's peer sent it, and what it was."""

    side: Side
    tone: FaxTone


def sdes_allowed(config: Config, transport: str, peer_host: str) -> bool:
    """Whether SDES keys may travel in SDP over this signalling (RFC 4568 8.3).

    Over TLS always; over plain UDP/TCP only when every SIP listener is on
    loopback (the demo box) or the peer is on a configured trusted network.
    """
    if transport == "tls":
        return True
    if all(is_loopback(entry.host) for entry in config.sip.listen):
        return True
    try:
        address = ipaddress.ip_address(peer_host)
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(network, strict=False)
        for network in config.media.sdes_trusted_networks
    )


@dataclass(frozen=True, slots=True)
class TranscodeSettings:
    """How a transcoded call encodes Opus, buffers jitter and times its RTCP."""

    opus: OpusSettings = field(default_factory=OpusSettings)
    jitter: JitterSettings = field(default_factory=JitterSettings)
    rtcp_interval: float | None = None
    """A fixed RTCP report interval (tests); None: RFC 3550's."""


def transcode_settings(media: MediaConfig) -> TranscodeSettings:
    """The transcoding settings of the ``[media]`` section."""
    return TranscodeSettings(
        opus=OpusSettings(
            bitrate=media.opus_bitrate,
            complexity=media.opus_complexity,
            fec=media.opus_fec,
            packet_loss_percent=media.opus_packet_loss,
            dtx=media.opus_dtx,
        ),
        jitter=JitterSettings(
            initial=media.jitter_initial, minimum=media.jitter_min, maximum=media.jitter_max
        ),
    )


def _suites(config: Config) -> tuple[SrtpSuite, ...]:
    return tuple(SrtpSuite(name) for name in config.media.srtp_suites)


def app_policy(config: Config, subscriber: Subscriber, *, secure: bool) -> LegPolicy:
    """The policy of a leg toward an app user."""
    media = config.media
    return LegPolicy(
        srtp=subscriber.srtp,
        codecs=tuple(subscriber.codecs or media.app_codecs),
        sdes_allowed=secure,
        suites=_suites(config),
        rtcp_mux=media.rtcp_mux,
        ptime=media.ptime,
    )


def trunk_policy(config: Config, trunk: TrunkConfig, *, secure: bool) -> LegPolicy:
    """The policy of a leg toward a carrier trunk."""
    return LegPolicy(
        srtp=trunk.srtp,
        codecs=tuple(trunk.codecs),
        sdes_allowed=secure,
        suites=_suites(config),
        rtcp_mux=config.media.rtcp_mux,
        ptime=trunk.ptime,
        nat=False,
    )


class CallMedia:
    """Offer/answer and relay configuration of one call.

    ``open`` binds the ports (the negotiator needs them for the SDP it writes);
    ``offer``/``answer`` are the B2BUA's entry points and raise
    :class:`NegotiationError` with the response for the offerer.
    """

    def __init__(
        self,
        session: MediaSession,
        policies: dict[Side, LegPolicy],
        origins: dict[Side, Origin],
        *,
        call_id: str,
        settings: TranscodeSettings | None = None,
    ) -> None:
        self.session = session
        self.settings = settings or TranscodeSettings()
        self._policies = policies
        self._origins = origins
        self._call_id = call_id
        self._negotiator: Negotiator | None = None
        self._receivers: dict[Side, tuple[CryptoAttribute, SrtpReceiver]] = {}
        self._senders: dict[Side, tuple[CryptoAttribute, SrtpSender]] = {}
        self.plan: MediaPlan | None = None
        # Whether the negotiator may offer a leg codecs the other leg lacks (transcoding
        # them); off, offers carry only codecs the other leg offered.
        self.transcoding = True
        # The formats the running transcoders were built for, to keep them across
        # re-INVITEs that change nothing they depend on.
        self._transcoded: tuple[StreamFormat, Codec, StreamFormat, Codec] | None = None
        self.t38: T38Plan | None = None
        """The T.38 session while fax goes over UDPTL (then :attr:`plan` is the old audio)."""
        self.on_fax: Callable[[FaxDetected], None] | None = None
        """Told of the first fax or modem tone, once per call, from inside the media path:
        it must only note it (and start work elsewhere), never switch media itself."""
        self.fax: FaxDetected | None = None
        self._listeners: list[FaxListener] = []

    def bind(self, ports: dict[str, tuple[int, int]]) -> None:
        """Make the negotiator once the session's ports are bound."""
        self._negotiator = Negotiator(
            self._policies,
            transcoding=self.transcoding,
            host={"a": self.session.sdp_host("a"), "b": self.session.sdp_host("b")},
            ports={"a": ports["a"][0], "b": ports["b"][0]},
            origins=self._origins,
        )
        for side, origin in self._origins.items():
            origin.address = self.session.sdp_host(side)
            origin.addrtype = "IP6" if ":" in origin.address else "IP4"
        for side in ("a", "b"):
            if not self._policies[side].nat:
                # No latching to another host in the window: only the SDP host is the peer.
                for stream in ("rtp", "rtcp"):
                    self.session.state.endpoint(side, stream).symmetric_any_host = False

    def retarget(
        self, side: Side, policy: LegPolicy, origin: Origin, *, port: int | None = None
    ) -> None:
        """Point ``side`` at a new peer before any answer of it was final: the next
        trunk after a failover, or the subscriber's number after its app did not answer.

        What early media of the old peer set up (its plan, keys, transcoders) is
        dropped; the next answer builds them again. Nothing is kept of the old peer's
        keys, so its packets fail authentication from now on. ``port``: the session
        moved the leg to a new RTP port (and maybe address) for the new peer's role.
        """
        self._policies[side] = policy
        self._origins[side] = origin
        origin.address = self.session.sdp_host(side)
        origin.addrtype = "IP6" if ":" in origin.address else "IP4"
        self.negotiator.retarget(side, policy, origin, host=origin.address, port=port)
        self._senders.pop(side, None)
        self._receivers.pop(side, None)
        self.plan = None
        self._transcoded = None
        self.session.stop_transcoding()
        self.session.configure(side, receiver=None, sender=None, payload_types={})
        self.session.set_remote(side, self.session.sdp_host(side), 0)  # port 0: no peer
        for stream in ("rtp", "rtcp"):
            self.session.state.endpoint(side, stream).symmetric_any_host = policy.nat

    @property
    def negotiator(self) -> Negotiator:
        if self._negotiator is None:
            raise RuntimeError("call media not bound: open the media session first")
        return self._negotiator

    def offer(self, side: Side, body: bytes) -> bytes:
        """An offer from ``side``; the offer to send to the other leg.

        The offerer's address is checked and used at once, so early media from
        the other leg reaches it before the answer is in.
        """
        offer = self.negotiator.offer(side, body)
        address = self.negotiator.offered_media()
        if address is None:
            return offer  # T.38: the audio goes on as it is until the other leg takes it
        host, rtp, rtcp = address
        if host not in ("0.0.0.0", "::"):
            try:
                self.session.set_remote(side, host, rtp, rtcp)
            except ValueError as exc:
                raise NegotiationError(488, "Unusable Media Address", "bad-sdp") from exc
        self._expect_srtp(side)
        return offer

    def _expect_srtp(self, side: Side) -> None:
        """From the offer on, a leg that will be SRTP accepts only packets under its key.

        Waiting for the answer would leave the leg plain while the call rings, and a
        plain leg latches to the first source in its window: RTP Bleed.
        """
        crypto = self.negotiator.offered_crypto()
        if crypto is None:
            return
        path = self.session.paths[side]
        receiver = self._receiver(side, crypto)
        if path.receiver is not receiver:
            self.session.configure(
                side,
                rtcp_mux=path.rtcp_mux,
                receiver=receiver,
                sender=path.sender,
                payload_types=path.payload_types,
            )

    def answer(self, side: Side, body: bytes) -> bytes:
        """The answer from ``side``; the answer to send to the offerer. Applies the plan."""
        if self.negotiator.pending_t38:
            answer, t38 = self.negotiator.answer_t38(side, body)
            self.apply_t38(t38)
            return answer
        answer, plan = self.negotiator.answer(side, body)
        self.apply(plan)
        return answer

    def last_sent(self, side: Side) -> bytes | None:
        return self.negotiator.last_sent(side)

    @property
    def negotiated(self) -> bool:
        """Whether an offer/answer has completed (audio or T.38)."""
        return self.plan is not None or self.t38 is not None

    @property
    def offering_t38(self) -> bool:
        """Whether the offer waiting for its answer is T.38."""
        return self.negotiator.pending_t38

    def withdraw(self, side: Side) -> None:
        """The offer sent toward ``side`` was refused: the media stays as it was."""
        self.negotiator.withdraw(side)

    def fax_reoffer(self) -> tuple[Side, bytes]:
        """The offer that moves a transcoded call to G.711 pass-through, and its leg.

        The leg that is not on G.711 (the app's, as a rule) is offered the other
        leg's G.711 codec alone, with telephone-event when that leg has it, and keeps
        its SRTP key. Raises NegotiationError when there is nothing to do (the call
        relays already, carries T.38) or no leg is on G.711.
        """
        plan = self.plan
        if plan is None or self.t38 is not None or not plan.transcoding:
            raise NegotiationError(488, "Call Is Not Transcoded", "fax-not-transcoded")
        source: Side | None = next(
            (s for s in ("b", "a") if plan.leg(s).codec.encoding.lower() in _G711), None
        )
        if source is None:
            raise NegotiationError(488, "No G.711 Leg For Fax Pass-Through", "fax-no-g711")
        target: Side = "a" if source == "b" else "b"
        kept = plan.leg(source)
        codecs = [kept.codec]
        if kept.telephone_event is not None:
            codecs.append(kept.telephone_event)
        return target, self.negotiator.reoffer(target, codecs, passthrough=True)

    def restore_offer(self, side: Side) -> bytes:
        """An offer giving ``side`` back the audio it had (it refused the stream of an
        offer it still said 2xx to, e.g. T.38 with port 0, and has no media now)."""
        plan = self.plan
        if plan is None:
            raise NegotiationError(488, "No Audio Session To Re-Offer", "no-audio")
        mine = plan.leg(side)
        codecs = [
            c for c in (mine.codec, mine.telephone_event, mine.comfort_noise) if c is not None
        ]
        return self.negotiator.reoffer(side, codecs)

    def apply_t38(self, plan: T38Plan) -> None:
        """Carry UDPTL between the legs' T.38 peers as it is: no transcoding, no SRTP."""
        self._transcoded = None
        self.session.stop_transcoding()
        for side in ("a", "b"):
            leg = plan.leg(side)
            try:
                # UDPTL has no RTCP: the RTCP port forgets its peer until audio is back.
                self.session.set_remote(side, leg.host, leg.port, 0)
            except ValueError as exc:
                raise NegotiationError(488, "Unusable Media Address", "bad-sdp") from exc
            self.session.configure(side, datagrams=True)
        self.t38 = plan
        log.info("t38 negotiated", call=self._call_id, port_a=plan.a.port, port_b=plan.b.port)

    def apply(self, plan: MediaPlan) -> None:
        """Point the relay at both peers, give it each leg's keys and payload types,
        and transcode when the legs' codecs differ (relay when they are the same)."""
        transcoders = self._transcoders(plan) if plan.transcoding else None
        sides: tuple[tuple[Side, Side], ...] = (("a", "b"), ("b", "a"))
        for side, _ in sides:
            self._set_remote(side, plan.leg(side))
        for side, other in sides:
            mine, theirs = plan.leg(side), plan.leg(other)
            receiver, sender = self._srtp(side, mine)
            self.session.configure(
                side,
                rtcp_mux=mine.rtcp_mux,
                receiver=receiver,
                sender=sender,
                # Transcoded packets are made with the leg's own payload types.
                payload_types={} if plan.transcoding else _payload_map(theirs, mine),
            )
        if transcoders is not None:
            self.session.start_transcoding(*transcoders, rtcp_interval=self.settings.rtcp_interval)
        elif not plan.transcoding:
            self._transcoded = None
            self.session.stop_transcoding()
        # else: transcoding already, for the same formats; the transcoders go on.
        self.plan = plan
        self.t38 = None
        log.info(
            "media negotiated",
            call=self._call_id,
            codec_a=plan.a.codec.encoding,
            codec_b=plan.b.codec.encoding,
            srtp_a=_suite_of(plan.a),
            srtp_b=_suite_of(plan.b),
            transcoding=plan.transcoding,
            passthrough=plan.passthrough,
        )

    def _transcoders(self, plan: MediaPlan) -> tuple[Transcoder, Transcoder] | None:
        """New transcoders (a to b, b to a) for ``plan``, or None to keep the running ones.

        Raises NegotiationError (488) when a leg's codec cannot be transcoded.
        """
        a, b = _stream_format(plan.a), _stream_format(plan.b)
        key = (a, plan.a.codec, b, plan.b.codec)
        if key == self._transcoded and self.session.transcoding:
            return None
        codec_a, codec_b = self._codecs(plan)
        jitter = self.settings.jitter
        self._transcoded = key
        self._listeners.clear()  # the running transcoders and their taps are replaced
        a_to_b = Transcoder(codec_a, codec_b, a, b, jitter=jitter)
        b_to_a = Transcoder(codec_b, codec_a, b, a, jitter=jitter)
        self._listen_for_fax(a_to_b, "a")
        self._listen_for_fax(b_to_a, "b")
        return a_to_b, b_to_a

    def _listen_for_fax(self, transcoder: Transcoder, side: Side) -> None:
        """Tap the decoded audio of ``side``'s peer for fax and modem tones."""
        if self.fax is not None:
            return  # once per call

        def heard(tone: FaxTone) -> None:
            self._fax_heard(side, tone)

        listener = FaxListener(transcoder.decoder.pcm_rate, heard)
        transcoder.pcm_taps.append(listener)
        self._listeners.append(listener)

    def _fax_heard(self, side: Side, tone: FaxTone) -> None:
        if self.fax is not None:
            return
        for listener in self._listeners:
            listener.stop()
        self._listeners.clear()
        self.fax = FaxDetected(side, tone)
        if self.on_fax is not None:
            self.on_fax(self.fax)

    def _codecs(self, plan: MediaPlan) -> tuple[AudioCodec, AudioCodec]:
        try:
            return make_pair(plan.a.codec, plan.b.codec, self.settings.opus)
        except UnsupportedCodec as exc:
            log.warning("codec not transcodable", call=self._call_id, error=str(exc))
            raise NegotiationError(488, "Codec Not Transcodable", "no-common-codec") from exc

    def _set_remote(self, side: Side, leg: LegMedia) -> None:
        if leg.host in ("0.0.0.0", "::"):
            return  # RFC 2543 hold: keep the latched peer, it simply stops sending
        try:
            self.session.set_remote(side, leg.host, leg.rtp_port, leg.rtcp_port)
        except ValueError as exc:  # a host name, or a family the relay does not have
            raise NegotiationError(488, "Unusable Media Address", "bad-sdp") from exc

    def _srtp(self, side: Side, leg: LegMedia) -> tuple[SrtpReceiver | None, SrtpSender | None]:
        receiver = None if leg.srtp_remote is None else self._receiver(side, leg.srtp_remote)
        sender = None if leg.srtp_local is None else self._sender(side, leg.srtp_local)
        return receiver, sender

    def _receiver(self, side: Side, crypto: CryptoAttribute) -> SrtpReceiver:
        # Kept while the key is the same: a fresh context would forget the replay window.
        kept = self._receivers.get(side)
        if kept is None or not _same_key(kept[0], crypto):
            kept = (crypto, SrtpReceiver(crypto))
            self._receivers[side] = kept
        return kept[1]

    def _sender(self, side: Side, crypto: CryptoAttribute) -> SrtpSender:
        # Kept while the key is the same: a fresh context would reuse packet indexes.
        kept = self._senders.get(side)
        if kept is None or not _same_key(kept[0], crypto):
            kept = (crypto, SrtpSender(crypto))
            self._senders[side] = kept
        return kept[1]


def _same_key(one: CryptoAttribute, other: CryptoAttribute) -> bool:
    """Same suite and master key: the tag is only the line's name in SDP."""
    return one.suite == other.suite and one.keys == other.keys


def _payload_map(source: LegMedia, target: LegMedia) -> dict[int, int]:
    """Payload types of ``source``'s packets as ``target``'s peer expects them."""
    pairs: Sequence[tuple[Codec | None, Codec | None]] = (
        (source.codec, target.codec),
        (source.telephone_event, target.telephone_event),
        (source.comfort_noise, target.comfort_noise),
    )
    mapping: dict[int, int] = {}
    for theirs, mine in pairs:
        if theirs is not None and mine is not None:
            mapping[theirs.payload_type] = mine.payload_type
    return mapping


def _stream_format(leg: LegMedia) -> StreamFormat:
    return StreamFormat(
        payload_type=leg.codec.payload_type,
        ptime=leg.ptime,
        telephone_event=None if leg.telephone_event is None else leg.telephone_event.payload_type,
        comfort_noise=None if leg.comfort_noise is None else leg.comfort_noise.payload_type,
    )


def _suite_of(leg: LegMedia) -> str:
    return leg.srtp_local.suite if leg.srtp_local is not None else "none"
