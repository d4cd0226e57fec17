"""The per-packet step of the relay when a leg has SRTP, rtcp-mux or its own payload types.

DESIGN rule 3: packet in -> SRTP unprotect -> header rewrite -> SRTP protect ->
packet out, as one pure function of (packet, the leg it came from) -> (packet,
the leg and address it goes to). The plain relay of identical legs keeps the
zero-copy :func:`gateway.media.latching.forward`; this is the path for legs
that differ.

Order matters for security (RTP Bleed): a packet from a source other than the
latched one is dropped before any SRTP work (cheap under a flood, and it cannot
touch the replay window); otherwise SRTP authentication (RFC 3711 3.3, RFC 7714)
runs before latching, so only a packet that authenticates can teach the relay a
peer's address. SRTP failures are counted by reason and never forwarded.

The step is two halves: :func:`accept_packet` (source, SRTP, latching) and the
forwarding after it. A transcoded call uses the first half alone and hands
what it accepts to its transcoder (see :mod:`gateway.media.relay`).

RFC 5761 4: on a multiplexed leg, RTCP is told from RTP by the second byte
(packet types 192-223) and goes out on the other leg's RTCP port, or its RTP
port when that leg multiplexes too.

A leg in datagram mode (:attr:`LegPath.datagrams`: T.38 over UDPTL, ITU-T T.38
Annex D, which is not RTP) skips the RTP checks: whatever comes from the
accepted source is carried as it is. The strict source and latching still
decide who that source is; nothing else is done to the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.media.latching import (
    ACCEPT,
    RTCP_MIN_LENGTH,
    RTP_MIN_LENGTH,
    Address,
    DropReason,
    Endpoint,
    Stream,
    count_drop,
    decide,
)
from gateway.media.rtp import is_rtcp
from gateway.media.srtp import SrtpDrop, SrtpDropReason, SrtpReceiver, SrtpSender

__all__ = [
    "LegPath",
    "Outgoing",
    "accept_packet",
    "forward_packet",
    "is_strict_miss",
    "protect",
    "srtp_drop_reason",
]

_VERSION_MASK = 0xC0
_VERSION_2 = 0x80

_SRTP_DROPS = {
    SrtpDropReason.AUTH: DropReason.SRTP_AUTH,
    SrtpDropReason.REPLAY: DropReason.SRTP_REPLAY,
    SrtpDropReason.MALFORMED: DropReason.SRTP_MALFORMED,
    SrtpDropReason.SSRC_LIMIT: DropReason.SRTP_SSRC_LIMIT,
}


@dataclass(slots=True)
class LegPath:
    """One leg as the packet step sees it: its endpoints, keys and payload types.

    ``receiver`` unprotects what the leg's peer sends (its key), ``sender``
    protects what goes to it (ours). ``payload_types`` maps a payload type
    arriving from the *other* leg to the one this leg's peer expects.
    ``datagrams``: the leg carries something other than RTP (UDPTL): its
    packets are taken as opaque bytes from the accepted source.
    """

    rtp: Endpoint
    rtcp: Endpoint
    rtcp_mux: bool = False
    receiver: SrtpReceiver | None = None
    sender: SrtpSender | None = None
    payload_types: dict[int, int] = field(default_factory=dict)
    datagrams: bool = False

    def endpoint(self, stream: Stream) -> Endpoint:
        return self.rtcp if stream == "rtcp" and not self.rtcp_mux else self.rtp

    @property
    def plain(self) -> bool:
        """Nothing to do per packet but latching: the zero-copy path applies."""
        return (
            self.receiver is None
            and self.sender is None
            and not self.rtcp_mux
            and not self.datagrams
            and all(k == v for k, v in self.payload_types.items())
        )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What to send: the bytes, toward which address, on which stream's socket."""

    data: bytes
    destination: Address
    stream: Stream
    clear_rtcp: bytes | None = None
    """The RTCP as the source leg's peer sent it, after SRTCP unprotect (None for RTP)."""


def is_strict_miss(endpoint: Endpoint, src: tuple[Any, ...]) -> bool:
    """A latched endpoint that is not moving accepts nothing but its latched source."""
    latched = endpoint.latched
    return (
        latched is not None
        and not endpoint.rebind_pending
        and (src[1] != latched[1] or src[0] != latched[0])
    )


def accept_packet(
    src_leg: LegPath,
    arrived_on: Stream,
    data: bytes,
    src: tuple[Any, ...],
    now: float,
) -> tuple[Stream, bytes] | None:
    """The first half of the step: is this packet from ``src_leg``'s peer, and what does it say?

    Checks the version and length, the strict source, SRTP/SRTCP authentication
    and then latching, in that order (see the module documentation). Returns the
    stream the packet belongs to (RTCP on a multiplexed RTP port is "rtcp") and
    its plain bytes, or None when it is dropped (counted on the receiving
    endpoint by reason). Counts nothing else: the caller counts ``packets_in``
    once the packet has been used. A leg in datagram mode skips the version and
    length checks and has no SRTP: only the source is checked.
    """
    if src_leg.datagrams:
        endpoint = src_leg.endpoint(arrived_on)
        if is_strict_miss(endpoint, src):
            count_drop(endpoint, DropReason.UNEXPECTED_SOURCE)
            return None
        if decide(endpoint, src, now) is not ACCEPT:
            return None
        return arrived_on, data
    stream: Stream = (
        "rtcp" if arrived_on == "rtcp" or (src_leg.rtcp_mux and is_rtcp(data)) else "rtp"
    )
    endpoint = src_leg.endpoint(arrived_on)
    minimum = RTCP_MIN_LENGTH if stream == "rtcp" else RTP_MIN_LENGTH
    if len(data) < minimum or data[0] & _VERSION_MASK != _VERSION_2:
        count_drop(endpoint, DropReason.NOT_RTP)
        return None
    if is_strict_miss(endpoint, src):
        count_drop(endpoint, DropReason.UNEXPECTED_SOURCE)
        return None
    clear = _unprotect(src_leg.receiver, endpoint, stream, data)
    if clear is None or decide(endpoint, src, now) is not ACCEPT:
        return None
    return stream, clear


def forward_packet(
    src_leg: LegPath,
    dst_leg: LegPath,
    arrived_on: Stream,
    data: bytes,
    src: tuple[Any, ...],
    now: float,
) -> Outgoing | None:
    """Where a packet that arrived on ``src_leg``'s ``arrived_on`` socket goes, and as what.

    Returns None when it is dropped (counted on the receiving endpoint by reason).
    The caller sends and counts ``packets_out``/``bytes_out`` on the endpoint of
    ``dst_leg`` for the returned stream.
    """
    accepted = accept_packet(src_leg, arrived_on, data, src, now)
    if accepted is None:
        return None
    stream, clear = accepted
    endpoint = src_leg.endpoint(arrived_on)
    target = dst_leg.endpoint(stream)
    destination = target.destination
    if destination is None:
        count_drop(endpoint, DropReason.NO_DESTINATION)
        return None
    if stream == "rtp" and not src_leg.datagrams:
        clear = _map_payload_type(clear, dst_leg.payload_types)
    try:
        out = protect(dst_leg.sender, stream, clear)
    except SrtpDrop as drop:
        # E.g. the same sequence number twice: protecting it again would reuse keystream.
        count_drop(endpoint, _SRTP_DROPS[drop.reason])
        return None
    endpoint.packets_in += 1
    endpoint.bytes_in += len(data)
    return Outgoing(
        out,
        destination,
        "rtcp" if stream == "rtcp" and not dst_leg.rtcp_mux else "rtp",
        clear if stream == "rtcp" else None,
    )


def _unprotect(
    receiver: SrtpReceiver | None, endpoint: Endpoint, stream: Stream, data: bytes
) -> bytes | None:
    if receiver is None:
        return data
    try:
        if stream == "rtcp":
            return receiver.unprotect_rtcp(data)
        return receiver.unprotect_rtp(data)
    except SrtpDrop as drop:
        count_drop(endpoint, _SRTP_DROPS[drop.reason])
        return None


def srtp_drop_reason(drop: SrtpDrop) -> DropReason:
    """The relay's drop reason for an SRTP failure."""
    return _SRTP_DROPS[drop.reason]


def protect(sender: SrtpSender | None, stream: Stream, data: bytes) -> bytes:
    """``data`` as it goes out on a leg: SRTP/SRTCP-protected when the leg has a sender.

    Raises :class:`~gateway.media.srtp.SrtpDrop` when libsrtp refuses it.
    """
    if sender is None:
        return data
    if stream == "rtcp":
        return sender.protect_rtcp(data)
    return sender.protect_rtp(data)


def _map_payload_type(data: bytes, mapping: dict[int, int]) -> bytes:
    if not mapping:
        return data
    second = data[1]
    pt = second & 0x7F
    mapped = mapping.get(pt, pt)
    if mapped == pt:
        return data
    rewritten = bytearray(data)
    rewritten[1] = (second & 0x80) | mapped
    return bytes(rewritten)
