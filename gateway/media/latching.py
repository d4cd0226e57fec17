"""Media latching: which source a relay endpoint accepts packets from (sans-IO).

A relay endpoint is one local port of a call (leg "a" or "b", stream RTP or
RTCP). Its peer announced an address in SDP (RFC 4566 c=/m=, RFC 3605 a=rtcp),
but apps sit behind NAT, so the packets really come from another address.
Symmetric RTP (RFC 4961) lets the relay learn ("latch") the real source from
the first packet and send the other direction there.

Latching from any first packet is the "RTP Bleed" hole: an attacker who sprays
the port range gets the media. The policy here closes it:

* before a latch, a packet is accepted from the SDP address and port, or,
  during ``latch_window`` seconds after the SDP was set, from the first source
  whose host equals the SDP host (any host when ``symmetric_any_host``, the
  default, because apps sit behind NAT);
* the first accepted packet latches its exact source, and from then on only
  that source is accepted (strict);
* a re-INVITE that moves the SDP address (:func:`rebind`) re-opens a window
  toward the new address; the old latch stays valid until a packet from the
  new side arrives.

Packets that cannot be RTP or RTCP (RFC 3550 5.1 and 6.4.1: version 2 in the
top two bits, at least the fixed header) are dropped before they can latch.

Everything here takes the packet's length, first byte, source and ``now`` and
returns a decision; it never touches a socket or a clock, so the relay loop
can later move into native batched code with the same meaning. Hosts are
compared as text: callers pass numeric addresses in the kernel's canonical
form (what ``recvfrom`` returns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

__all__ = [
    "ACCEPT",
    "RTCP_MIN_LENGTH",
    "RTP_MIN_LENGTH",
    "Accept",
    "Address",
    "Drop",
    "DropReason",
    "Endpoint",
    "Leg",
    "SessionState",
    "Stream",
    "Verdict",
    "count_drop",
    "decide",
    "forward",
    "open_window",
    "rebind",
    "route",
]

Leg = Literal["a", "b"]
Stream = Literal["rtp", "rtcp"]
Address = tuple[str, int]

# RFC 3550 5.1: the fixed RTP header is 12 bytes. RFC 3550 6.4.2: the smallest
# RTCP packet is an RR with no report blocks, 8 bytes (RFC 5506 allows it alone).
RTP_MIN_LENGTH = 12
RTCP_MIN_LENGTH = 8

_VERSION_MASK = 0xC0
_VERSION_2 = 0x80


class DropReason(StrEnum):
    """Why a packet was not relayed (keys of :attr:`Endpoint.drops`)."""

    UNEXPECTED_SOURCE = "unexpected-source"
    NOT_RTP = "not-rtp"
    NO_DESTINATION = "no-destination"
    UNAUTHENTICATED = "unauthenticated"
    SRTP_AUTH = "srtp-auth"
    SRTP_REPLAY = "srtp-replay"
    SRTP_MALFORMED = "srtp-malformed"
    SRTP_SSRC_LIMIT = "srtp-ssrc-limit"
    TOO_LARGE = "too-large"
    SEND_ERROR = "send-error"


@dataclass(frozen=True, slots=True)
class Accept:
    """The packet comes from a source this endpoint accepts."""


@dataclass(frozen=True, slots=True)
class Drop:
    """The packet is dropped; ``reason`` is counted in the endpoint."""

    reason: DropReason


Verdict = Accept | Drop

# Shared instances: the per-packet path allocates no verdict objects.
ACCEPT = Accept()
_DROPS = {reason: Drop(reason) for reason in DropReason}


@dataclass(slots=True)
class Endpoint:
    """Latching state and counters of one local port of one leg.

    Counters are disjoint: every packet received here is either relayed
    (``packets_in``/``bytes_in``) or counted once in ``drops`` by reason. The
    ``packets_out``/``bytes_out`` counters and the ``send-error`` drops are the
    packets this endpoint's socket sent (or failed to send) toward its peer.
    """

    latch_window: float = 10.0
    symmetric_any_host: bool = True
    min_length: int = RTP_MIN_LENGTH
    expected: Address | None = None
    latched: Address | None = None
    latch_deadline: float | None = None
    # After a re-INVITE moved the SDP address: the latch may move to the new side.
    rebind_pending: bool = False
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    last_rx: float | None = None

    def __post_init__(self) -> None:
        if self.latch_window < 0:
            raise ValueError(f"latch_window must be >= 0 seconds, got {self.latch_window}")

    @property
    def destination(self) -> Address | None:
        """Where packets for this endpoint's peer go: the latch, else the SDP address."""
        return self.latched if self.latched is not None else self.expected


def count_drop(endpoint: Endpoint, reason: DropReason) -> Drop:
    """Count one dropped packet on ``endpoint`` and return the verdict."""
    drops = endpoint.drops
    drops[reason] = drops.get(reason, 0) + 1
    return _DROPS[reason]


def _same(src: tuple[Any, ...], address: Address) -> bool:
    # Port first: cheapest test. ``src`` may be an IPv6 4-tuple from recvfrom.
    return bool(src[1] == address[1] and src[0] == address[0])


def decide(
    endpoint: Endpoint, src: tuple[Any, ...], now: float, *, authenticated: bool = True
) -> Verdict:
    """Accept or drop a packet from ``src`` arriving at ``endpoint`` at ``now``.

    ``src`` is ``(host, port, ...)`` as ``recvfrom`` returns it. Accepting
    records ``last_rx`` and may latch; dropping counts the reason.
    ``authenticated=False`` (SRTP that failed authentication) is always
    dropped: it never latches and never counts as activity, so spoofed
    packets cannot keep a call alive or steal its media.
    """
    if not authenticated:
        return count_drop(endpoint, DropReason.UNAUTHENTICATED)
    latched = endpoint.latched
    if latched is not None and _same(src, latched):
        endpoint.last_rx = now
        return ACCEPT
    expected = endpoint.expected
    if expected is None or (latched is not None and not endpoint.rebind_pending):
        # No SDP yet: nothing tells us who the peer is. Latched: strict.
        return count_drop(endpoint, DropReason.UNEXPECTED_SOURCE)
    if _same(src, expected) or _in_window(endpoint, src, now, expected):
        endpoint.latched = (src[0], src[1])
        endpoint.latch_deadline = None
        endpoint.rebind_pending = False
        endpoint.last_rx = now
        return ACCEPT
    return count_drop(endpoint, DropReason.UNEXPECTED_SOURCE)


def _in_window(endpoint: Endpoint, src: tuple[Any, ...], now: float, expected: Address) -> bool:
    deadline = endpoint.latch_deadline
    if deadline is None or now >= deadline:
        return False
    return endpoint.symmetric_any_host or src[0] == expected[0]


def rebind(endpoint: Endpoint, expected: Address | None, now: float) -> None:
    """Set the SDP address of ``endpoint`` (first answer/offer or a re-INVITE).

    A new address opens a latch window of ``latch_window`` seconds from
    ``now``. An existing latch stays valid until a packet from the new side
    latches (exact new address any time, other sources only in the window).
    ``None`` (port 0: stream refused or removed) forgets the address and the
    latch: nothing is accepted or sent until an address is set again.
    """
    endpoint.expected = expected
    if expected is None:
        endpoint.latched = None
        endpoint.latch_deadline = None
        endpoint.rebind_pending = False
        return
    endpoint.latch_deadline = now + endpoint.latch_window
    endpoint.rebind_pending = endpoint.latched is not None


def open_window(endpoint: Endpoint, now: float) -> bool:
    """Restart the latch window of an endpoint that has not latched yet.

    For a peer that starts sending only when the call is answered, long after
    its SDP was set (ringing). A latched endpoint is left strict. Returns
    whether a window was opened.
    """
    if endpoint.latched is not None or endpoint.expected is None:
        return False
    endpoint.latch_deadline = now + endpoint.latch_window
    return True


def forward(
    src_ep: Endpoint,
    dst_ep: Endpoint,
    data_len: int,
    src: tuple[Any, ...],
    now: float,
    first_byte: int,
) -> Address | None:
    """The per-packet step: where a packet received on ``src_ep`` goes.

    ``dst_ep`` is the same stream of the other leg; the packet leaves through
    its socket toward its peer. Returns the destination, or ``None`` when the
    packet is dropped (and counted on ``src_ep``). The caller sends and then
    counts ``packets_out``/``bytes_out`` on ``dst_ep``.
    """
    if data_len < src_ep.min_length or first_byte & _VERSION_MASK != _VERSION_2:
        count_drop(src_ep, DropReason.NOT_RTP)
        return None
    if decide(src_ep, src, now) is not ACCEPT:
        return None
    destination = dst_ep.latched if dst_ep.latched is not None else dst_ep.expected
    if destination is None:
        # Still latched above: the peer's real address is known once the other
        # side's SDP arrives.
        count_drop(src_ep, DropReason.NO_DESTINATION)
        return None
    src_ep.packets_in += 1
    src_ep.bytes_in += data_len
    return destination


def _other(leg: Leg) -> Leg:
    return "b" if leg == "a" else "a"


@dataclass(slots=True)
class SessionState:
    """The four endpoints of a relayed call: legs "a" and "b", RTP and RTCP."""

    a_rtp: Endpoint
    a_rtcp: Endpoint
    b_rtp: Endpoint
    b_rtcp: Endpoint

    @classmethod
    def create(cls, *, latch_window: float, symmetric_any_host: bool = True) -> SessionState:
        """Four fresh endpoints sharing one latching policy."""

        def make(min_length: int) -> Endpoint:
            return Endpoint(
                latch_window=latch_window,
                symmetric_any_host=symmetric_any_host,
                min_length=min_length,
            )

        return cls(
            a_rtp=make(RTP_MIN_LENGTH),
            a_rtcp=make(RTCP_MIN_LENGTH),
            b_rtp=make(RTP_MIN_LENGTH),
            b_rtcp=make(RTCP_MIN_LENGTH),
        )

    def endpoint(self, leg: Leg, stream: Stream) -> Endpoint:
        """The endpoint of ``leg`` for ``stream``."""
        if stream not in ("rtp", "rtcp"):
            raise ValueError(f"unknown stream {stream!r}: expected 'rtp' or 'rtcp'")
        if leg == "a":
            return self.a_rtp if stream == "rtp" else self.a_rtcp
        if leg == "b":
            return self.b_rtp if stream == "rtp" else self.b_rtcp
        raise ValueError(f"unknown leg {leg!r}: expected 'a' or 'b'")


def route(
    state: SessionState,
    leg: Leg,
    stream: Stream,
    data_len: int,
    src: tuple[Any, ...],
    now: float,
    first_byte: int,
) -> Address | None:
    """:func:`forward` for a packet that arrived on ``leg``/``stream`` of ``state``."""
    src_ep = state.endpoint(leg, stream)
    return forward(
        src_ep,
        state.endpoint(_other(leg), stream),
        data_len,
        src,
        now,
        first_byte,
    )
