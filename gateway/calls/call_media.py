"""The media side of one call: its offer/answer, its relay and the keys between them.

The B2BUA hands every SDP body it receives to :class:`CallMedia` and sends on
what comes back; CallMedia keeps the per-leg :class:`~gateway.calls.negotiation.Negotiator`
and, on each answer, points the :class:`~gateway.media.relay.MediaSession` at
the peers and gives it the leg's SRTP contexts and payload-type mapping.

SRTP contexts are kept while a leg's keys stay the same (a re-INVITE that
changes nothing must not restart libsrtp's packet indexes, RFC 3711 9.1);
new keys get new contexts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import structlog

from gateway.calls.negotiation import (
    Codec,
    LegMedia,
    LegPolicy,
    MediaPlan,
    NegotiationError,
    Negotiator,
    Side,
)
from gateway.config import Config, TrunkConfig
from gateway.media.relay import MediaSession
from gateway.media.srtp import CryptoAttribute, SrtpReceiver, SrtpSender, SrtpSuite
from gateway.sip.sdp import Origin
from gateway.store.model import Subscriber
from gateway.transport.flow import is_loopback

__all__ = ["CallMedia", "app_policy", "sdes_allowed", "trunk_policy"]

log = structlog.get_logger("edgegw.media")


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


def _suites(config: Config) -> tuple[SrtpSuite, ...]:
    return tuple(SrtpSuite(name) for name in config.media.srtp_suites)


def app_policy(config: Config, subscriber: Subscriber, *, secure: bool) -> LegPolicy:
    """The policy of a leg toward an app user."""
    media = config.media
    return LegPolicy(
        srtp=subscriber.srtp,
        codecs=tuple(media.app_codecs),
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
    ) -> None:
        self.session = session
        self._policies = policies
        self._origins = origins
        self._call_id = call_id
        self._negotiator: Negotiator | None = None
        self._contexts: dict[Side, tuple[CryptoAttribute | None, CryptoAttribute | None]] = {}
        self.plan: MediaPlan | None = None
        # Whether the media plane may transcode; until it can, offers carry only codecs
        # the other leg offered, so the legs always share one.
        self.transcoding = False

    def bind(self, ports: dict[str, tuple[int, int]]) -> None:
        """Make the negotiator once the session's ports are bound."""
        self._negotiator = Negotiator(
            self._policies,
            transcoding=self.transcoding,
            host=self.session.host_for_sdp,
            ports={"a": ports["a"][0], "b": ports["b"][0]},
            origins=self._origins,
        )

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
        assert address is not None  # offer() just recorded it
        host, rtp, rtcp = address
        if host not in ("0.0.0.0", "::"):
            try:
                self.session.set_remote(side, host, rtp, rtcp)
            except ValueError as exc:
                raise NegotiationError(488, "Unusable Media Address", "bad-sdp") from exc
        return offer

    def answer(self, side: Side, body: bytes) -> bytes:
        """The answer from ``side``; the answer to send to the offerer. Applies the plan."""
        answer, plan = self.negotiator.answer(side, body)
        self.apply(plan)
        return answer

    def last_sent(self, side: Side) -> bytes | None:
        return self.negotiator.last_sent(side)

    def apply(self, plan: MediaPlan) -> None:
        """Point the relay at both peers and give it each leg's keys and payload types."""
        if plan.transcoding:
            raise NegotiationError(488, "Transcoding Not Available", "no-common-codec")
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
                payload_types=_payload_map(theirs, mine),
            )
        self.plan = plan
        log.info(
            "media negotiated",
            call=self._call_id,
            codec_a=plan.a.codec.encoding,
            codec_b=plan.b.codec.encoding,
            srtp_a=_suite_of(plan.a),
            srtp_b=_suite_of(plan.b),
            transcoding=plan.transcoding,
        )

    def _set_remote(self, side: Side, leg: LegMedia) -> None:
        if leg.host in ("0.0.0.0", "::"):
            return  # RFC 2543 hold: keep the latched peer, it simply stops sending
        try:
            self.session.set_remote(side, leg.host, leg.rtp_port, leg.rtcp_port)
        except ValueError as exc:  # a host name, or a family the relay does not have
            raise NegotiationError(488, "Unusable Media Address", "bad-sdp") from exc

    def _srtp(self, side: Side, leg: LegMedia) -> tuple[SrtpReceiver | None, SrtpSender | None]:
        path = self.session.paths[side]
        keys = (leg.srtp_remote, leg.srtp_local)
        if self._contexts.get(side) == keys:
            return path.receiver, path.sender
        self._contexts[side] = keys
        receiver = None if leg.srtp_remote is None else SrtpReceiver(leg.srtp_remote)
        sender = None if leg.srtp_local is None else SrtpSender(leg.srtp_local)
        return receiver, sender


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


def _suite_of(leg: LegMedia) -> str:
    return leg.srtp_local.suite if leg.srtp_local is not None else "none"
