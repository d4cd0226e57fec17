"""RTCP packets, reception and sender statistics, report timing (sans-IO).

Implements RFC 3550 section 6 and the algorithms of its appendix:

* 6.1, 6.4-6.6 and A.2: parse a compound RTCP packet into SR, RR, SDES, BYE,
  APP and unknown packets, and build them. Reduced-size RTCP (RFC 5506) and
  rtcp-mux (RFC 5761) mean a packet need not start with an SR or RR nor carry
  an SDES CNAME, so any sequence of well-formed packets is accepted; packet
  types must lie in RFC 5761's RTCP range 192-223. Malformed input raises
  :class:`RtcpError` naming the packet and what is wrong.
* A.1: per-source sequence validation with probation and the extended
  highest sequence number (wrap cycles); A.3: expected, cumulative lost
  (clamped to 24-bit signed) and the fraction lost per report interval; A.8:
  the interarrival jitter estimate in timestamp units; 6.4.1: LSR and DLSR
  from the last SR received and the round-trip time from a report block.
* 6.4.1 sender info: packet and octet counts and the NTP/RTP timestamp pair
  of an SR, the RTP timestamp extrapolated from the last packet sent.
* 6.2, 6.3 and A.7: the report interval (5 s minimum, halved before the
  first report, scaled by members and RTCP bandwidth, randomised over
  0.5..1.5 of itself and divided by e - 3/2), with timer reconsideration; a
  fixed interval can be configured instead.

Times are seconds on a clock the caller chooses; a wall clock (Unix seconds)
is asked for only where NTP timestamps are made.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "MAX_DROPOUT",
    "MAX_MISORDER",
    "MIN_SEQUENTIAL",
    "RTCP_VERSION",
    "App",
    "Bye",
    "PacketType",
    "ReceiverReport",
    "ReceptionStats",
    "ReportBlock",
    "RtcpError",
    "RtcpPacket",
    "RtcpScheduler",
    "SdesChunk",
    "SdesItem",
    "SdesType",
    "SenderInfo",
    "SenderReport",
    "SenderStats",
    "SourceDescription",
    "UnknownPacket",
    "build_rtcp",
    "ntp_short",
    "ntp_timestamp",
    "parse_rtcp",
    "round_trip_time",
]

RTCP_VERSION: Final = 2

# RFC 3550 A.1 constants.
MAX_DROPOUT: Final = 3000
MAX_MISORDER: Final = 100
MIN_SEQUENTIAL: Final = 2
_SEQ_MOD: Final = 1 << 16

# RFC 5761 4: RTCP packet types occupy 192-223.
_TYPE_FIRST: Final = 192
_TYPE_LAST: Final = 223
_MAX_COUNT: Final = 31
_MAX_LENGTH_WORDS: Final = 0xFFFF
_NTP_UNIX_OFFSET: Final = 2_208_988_800
_U32: Final = 0xFFFF_FFFF
_LOST_MAX: Final = 0x7F_FFFF
_LOST_MIN: Final = -0x80_0000

_HEADER: Final = struct.Struct("!BBH")
_WORD: Final = struct.Struct("!I")
_SENDER_INFO: Final = struct.Struct("!QIII")
_REPORT_BLOCK: Final = struct.Struct("!IIIIII")
_APP_HEAD: Final = struct.Struct("!I4s")


class RtcpError(ValueError):
    """Malformed RTCP, or a field out of range when building one."""


class PacketType(IntEnum):
    """RTCP packet types of RFC 3550 12.1."""

    SR = 200
    RR = 201
    SDES = 202
    BYE = 203
    APP = 204


class SdesType(IntEnum):
    """SDES item types of RFC 3550 12.2."""

    END = 0
    CNAME = 1
    NAME = 2
    EMAIL = 3
    PHONE = 4
    LOC = 5
    TOOL = 6
    NOTE = 7
    PRIV = 8


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 6.4.1)."""

    ssrc: int
    fraction_lost: int
    """Fraction of packets lost in the interval, in 1/256 (0-255)."""
    cumulative_lost: int
    """Packets lost since the start, 24-bit signed (duplicates can make it negative)."""
    highest_sequence: int
    """Extended highest sequence number: cycles in the high 16 bits."""
    jitter: int
    """Interarrival jitter in timestamp units."""
    last_sr: int
    """Middle 32 bits of the NTP timestamp of the last SR received, 0 if none."""
    delay_since_last_sr: int
    """Delay since that SR in 1/65536 s, 0 if none."""


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """The sender information of an SR (RFC 3550 6.4.1)."""

    ntp_timestamp: int
    """64-bit NTP timestamp: seconds since 1900 in the high 32 bits."""
    rtp_timestamp: int
    packet_count: int
    octet_count: int


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR: sender info and reception reports (RFC 3550 6.4.1)."""

    ssrc: int
    sender_info: SenderInfo
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""
    """Profile-specific extension after the report blocks, as received."""


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR: reception reports from a participant that sent no RTP (RFC 3550 6.4.2)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""


@dataclass(frozen=True, slots=True)
class SdesItem:
    """One SDES item; values are text in UTF-8 by RFC 3550 6.5, kept as bytes."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """The items describing one SSRC or CSRC."""

    ssrc: int
    items: tuple[SdesItem, ...]

    @property
    def cname(self) -> str | None:
        """The CNAME item as text, or None when the chunk has none."""
        for item in self.items:
            if item.type == SdesType.CNAME:
                return item.value.decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """SDES: source description chunks (RFC 3550 6.5)."""

    chunks: tuple[SdesChunk, ...]


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE: sources leaving, with an optional reason (RFC 3550 6.6)."""

    ssrcs: tuple[int, ...]
    reason: bytes = b""


@dataclass(frozen=True, slots=True)
class App:
    """APP: application-defined packet (RFC 3550 6.7)."""

    subtype: int
    ssrc: int
    name: bytes
    """Four ASCII characters."""
    data: bytes = b""
    """Application data, a multiple of 4 bytes long."""


@dataclass(frozen=True, slots=True)
class UnknownPacket:
    """A packet of a type this module does not decode (feedback, XR, ...)."""

    packet_type: int
    count: int
    """The 5-bit field after the padding bit (RC, SC or subtype)."""
    body: bytes
    """Everything after the 4-byte header, padding removed."""


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | App | UnknownPacket


# ---------------------------------------------------------------------------
# Parsing


def parse_rtcp(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Split a compound RTCP packet into its packets (RFC 3550 6.1, A.2).

    Raises RtcpError for a version other than 2, a packet type outside
    192-223, a length field beyond the data, bytes left over that cannot
    hold a header, padding on a packet that is not the last or a padding
    count that does not fit, and blocks, chunks or items cut short.
    """
    raw = bytes(data)
    if not raw:
        raise RtcpError("Empty RTCP packet")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < len(raw):
        packet, size = _parse_packet(raw, offset, len(packets))
        packets.append(packet)
        offset += size
    return packets


def _parse_packet(raw: bytes, offset: int, index: int) -> tuple[RtcpPacket, int]:
    """The packet at ``offset`` of a compound packet, and its size in bytes."""
    remaining = len(raw) - offset
    where = f"RTCP packet {index} at offset {offset}"
    if remaining < _HEADER.size:
        raise RtcpError(f"{where}: {remaining} trailing bytes, too short for a header")
    first, packet_type, words = _HEADER.unpack_from(raw, offset)
    version = first >> 6
    if version != RTCP_VERSION:
        raise RtcpError(f"{where}: version {version}, expected {RTCP_VERSION}")
    if not _TYPE_FIRST <= packet_type <= _TYPE_LAST:
        raise RtcpError(f"{where}: packet type {packet_type} is not an RTCP type (192-223)")
    size = (words + 1) * 4
    if size > remaining:
        raise RtcpError(
            f"{where} (type {packet_type}): length field says {size} bytes, only {remaining} remain"
        )
    body = raw[offset + _HEADER.size : offset + size]
    if first & 0x20:
        body = _strip_padding(body, where, last=size == remaining)
    count = first & 0x1F
    try:
        return _PARSERS.get(packet_type, _parse_unknown)(packet_type, count, body), size
    except _Truncated as error:
        raise RtcpError(f"{where}: {error}") from None


def _strip_padding(body: bytes, where: str, *, last: bool) -> bytes:
    # RFC 3550 6.4.1 and A.2: only the last packet of a compound may be padded.
    if not last:
        raise RtcpError(f"{where}: padding bit set on a packet that is not the last")
    pad = body[-1] if body else 0
    if pad == 0 or pad > len(body):
        raise RtcpError(
            f"{where}: padding count {pad} does not fit a packet body of {len(body)} bytes"
        )
    return body[:-pad]


class _Truncated(Exception):
    """A structure inside one packet runs past its end (made into RtcpError)."""


def _need(body: bytes, needed: int, what: str) -> None:
    if len(body) < needed:
        raise _Truncated(f"{what} needs {needed} bytes after the header, packet has {len(body)}")


def _parse_blocks(body: bytes, start: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for index in range(count):
        ssrc, loss, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(
            body, start + index * _REPORT_BLOCK.size
        )
        lost = loss & 0xFF_FFFF
        if lost & 0x80_0000:
            lost -= 1 << 24
        blocks.append(ReportBlock(ssrc, loss >> 24, lost, highest, jitter, lsr, dlsr))
    return tuple(blocks)


def _parse_sr(_type: int, count: int, body: bytes) -> SenderReport:
    start = _WORD.size + _SENDER_INFO.size
    end = start + count * _REPORT_BLOCK.size
    _need(body, end, f"SR with {count} report blocks")
    (ssrc,) = _WORD.unpack_from(body)
    info = SenderInfo(*_SENDER_INFO.unpack_from(body, _WORD.size))
    return SenderReport(ssrc, info, _parse_blocks(body, start, count), body[end:])


def _parse_rr(_type: int, count: int, body: bytes) -> ReceiverReport:
    end = _WORD.size + count * _REPORT_BLOCK.size
    _need(body, end, f"RR with {count} report blocks")
    (ssrc,) = _WORD.unpack_from(body)
    return ReceiverReport(ssrc, _parse_blocks(body, _WORD.size, count), body[end:])


def _parse_sdes(_type: int, count: int, body: bytes) -> SourceDescription:
    chunks = []
    pos = 0
    for index in range(count):
        _need(body, pos + _WORD.size, f"SDES chunk {index + 1} of {count}")
        (ssrc,) = _WORD.unpack_from(body, pos)
        items, pos = _parse_items(body, pos + _WORD.size, ssrc)
        chunks.append(SdesChunk(ssrc, items))
    if pos != len(body):
        raise _Truncated(f"SDES has {len(body) - pos} bytes after its {count} chunks")
    return SourceDescription(tuple(chunks))


def _parse_items(body: bytes, pos: int, ssrc: int) -> tuple[tuple[SdesItem, ...], int]:
    items: list[SdesItem] = []
    while True:
        if pos >= len(body):
            raise _Truncated(f"SDES chunk for SSRC {ssrc:#010x} has no end-of-list null octet")
        item_type = body[pos]
        if item_type == SdesType.END:
            # Null octets pad the chunk to the next 32-bit boundary (RFC 3550 6.5);
            # the body starts on one, so do chunks.
            end = (pos + 4) & ~3
            if end > len(body):
                raise _Truncated(f"SDES chunk for SSRC {ssrc:#010x}: end padding runs past the end")
            return tuple(items), end
        if pos + 2 > len(body):
            raise _Truncated(f"SDES item type {item_type} for SSRC {ssrc:#010x} has no length")
        length = body[pos + 1]
        if pos + 2 + length > len(body):
            raise _Truncated(
                f"SDES item type {item_type} for SSRC {ssrc:#010x} says {length} bytes, "
                f"{len(body) - pos - 2} remain"
            )
        items.append(SdesItem(item_type, body[pos + 2 : pos + 2 + length]))
        pos += 2 + length


def _parse_bye(_type: int, count: int, body: bytes) -> Bye:
    end = count * _WORD.size
    _need(body, end, f"BYE with {count} sources")
    ssrcs = struct.unpack_from(f"!{count}I", body)
    if end == len(body):
        return Bye(ssrcs)
    length = body[end]
    if end + 1 + length > len(body):
        raise _Truncated(f"BYE reason says {length} bytes, {len(body) - end - 1} remain")
    return Bye(ssrcs, body[end + 1 : end + 1 + length])


def _parse_app(_type: int, count: int, body: bytes) -> App:
    _need(body, _APP_HEAD.size, "APP")
    ssrc, name = _APP_HEAD.unpack_from(body)
    return App(count, ssrc, name, body[_APP_HEAD.size :])


def _parse_unknown(packet_type: int, count: int, body: bytes) -> UnknownPacket:
    return UnknownPacket(packet_type, count, body)


_Parser = Callable[[int, int, bytes], RtcpPacket]

_PARSERS: Final[dict[int, _Parser]] = {
    PacketType.SR: _parse_sr,
    PacketType.RR: _parse_rr,
    PacketType.SDES: _parse_sdes,
    PacketType.BYE: _parse_bye,
    PacketType.APP: _parse_app,
}


# ---------------------------------------------------------------------------
# Building


def build_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """Serialize packets into one compound RTCP packet, without padding.

    RFC 3550 6.1 wants an SR or RR first and an SDES with a CNAME in every
    compound packet; RFC 5506 allows less, so the order given is kept.
    Raises RtcpError when a field does not fit its width.
    """
    out = b"".join(_encode(packet) for packet in packets)
    if not out:
        raise RtcpError("A compound RTCP packet needs at least one packet")
    return out


def _encode(packet: RtcpPacket) -> bytes:
    match packet:
        case SenderReport():
            return _encode_sr(packet)
        case ReceiverReport():
            return _encode_rr(packet)
        case SourceDescription():
            return _encode_sdes(packet)
        case Bye():
            return _encode_bye(packet)
        case App():
            return _encode_app(packet)
        case UnknownPacket():
            _check("packet type", packet.packet_type, _TYPE_LAST, _TYPE_FIRST)
            return _packet(packet.packet_type, packet.count, packet.body)


def _packet(packet_type: int, count: int, body: bytes) -> bytes:
    _check("count", count, _MAX_COUNT)
    if len(body) % 4:
        raise RtcpError(
            f"RTCP packet type {packet_type}: body of {len(body)} bytes is not 32-bit aligned"
        )
    words = len(body) // 4
    _check("length (32-bit words)", words, _MAX_LENGTH_WORDS)
    return _HEADER.pack(RTCP_VERSION << 6 | count, packet_type, words) + body


def _check(name: str, value: int, maximum: int, minimum: int = 0) -> None:
    if not minimum <= value <= maximum:
        raise RtcpError(f"RTCP {name} {value} out of range {minimum}..{maximum}")


def _encode_blocks(blocks: tuple[ReportBlock, ...]) -> bytes:
    out = []
    for block in blocks:
        _check("report block SSRC", block.ssrc, _U32)
        _check("fraction lost", block.fraction_lost, 0xFF)
        _check("cumulative lost", block.cumulative_lost, _LOST_MAX, _LOST_MIN)
        for name in ("highest_sequence", "jitter", "last_sr", "delay_since_last_sr"):
            _check(name.replace("_", " "), getattr(block, name), _U32)
        loss = block.fraction_lost << 24 | block.cumulative_lost & 0xFF_FFFF
        out.append(
            _REPORT_BLOCK.pack(
                block.ssrc,
                loss,
                block.highest_sequence,
                block.jitter,
                block.last_sr,
                block.delay_since_last_sr,
            )
        )
    return b"".join(out)


def _encode_sr(packet: SenderReport) -> bytes:
    _check("SSRC", packet.ssrc, _U32)
    info = packet.sender_info
    _check("NTP timestamp", info.ntp_timestamp, (1 << 64) - 1)
    _check("RTP timestamp", info.rtp_timestamp, _U32)
    _check("packet count", info.packet_count, _U32)
    _check("octet count", info.octet_count, _U32)
    body = (
        _WORD.pack(packet.ssrc)
        + _SENDER_INFO.pack(
            info.ntp_timestamp, info.rtp_timestamp, info.packet_count, info.octet_count
        )
        + _encode_blocks(packet.reports)
        + packet.extension
    )
    return _packet(PacketType.SR, len(packet.reports), body)


def _encode_rr(packet: ReceiverReport) -> bytes:
    _check("SSRC", packet.ssrc, _U32)
    body = _WORD.pack(packet.ssrc) + _encode_blocks(packet.reports) + packet.extension
    return _packet(PacketType.RR, len(packet.reports), body)


def _encode_sdes(packet: SourceDescription) -> bytes:
    out = []
    for chunk in packet.chunks:
        _check("SDES SSRC", chunk.ssrc, _U32)
        parts = [_WORD.pack(chunk.ssrc)]
        for item in chunk.items:
            _check("SDES item type", item.type, 0xFF, 1)
            _check("SDES item length", len(item.value), 0xFF)
            parts.append(bytes((item.type, len(item.value))) + item.value)
        size = sum(map(len, parts))
        # At least one null octet ends the list, more pad to 32 bits.
        parts.append(bytes(4 - size % 4))
        out.append(b"".join(parts))
    return _packet(PacketType.SDES, len(packet.chunks), b"".join(out))


def _encode_bye(packet: Bye) -> bytes:
    for ssrc in packet.ssrcs:
        _check("BYE SSRC", ssrc, _U32)
    body = b"".join(_WORD.pack(ssrc) for ssrc in packet.ssrcs)
    if packet.reason:
        _check("BYE reason length", len(packet.reason), 0xFF)
        reason = bytes((len(packet.reason),)) + packet.reason
        body += reason + bytes(-len(reason) % 4)
    return _packet(PacketType.BYE, len(packet.ssrcs), body)


def _encode_app(packet: App) -> bytes:
    _check("APP subtype", packet.subtype, _MAX_COUNT)
    _check("SSRC", packet.ssrc, _U32)
    if len(packet.name) != 4:
        raise RtcpError(f"APP name must be 4 bytes, got {len(packet.name)}")
    return _packet(
        PacketType.APP, packet.subtype, _APP_HEAD.pack(packet.ssrc, packet.name) + packet.data
    )


# ---------------------------------------------------------------------------
# Timestamps


def ntp_timestamp(wallclock: float) -> int:
    """The 64-bit NTP timestamp of a Unix time in seconds (RFC 3550 4)."""
    seconds = math.floor(wallclock)
    fraction = int((wallclock - seconds) * (1 << 32))
    return ((seconds + _NTP_UNIX_OFFSET) & _U32) << 32 | fraction


def ntp_short(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp, as LSR carries it (RFC 3550 6.4.1)."""
    return (ntp >> 16) & _U32


def round_trip_time(block: ReportBlock, arrival_ntp: int) -> int | None:
    """Round-trip time in 1/65536 s from a report block about our stream.

    RFC 3550 6.4.1: A - LSR - DLSR, with A the middle 32 bits of the NTP time
    the block arrived. None when the block carries no LSR (the peer has had no
    SR from us) or the result is negative (clocks or the report are off).
    """
    if block.last_sr == 0:
        return None
    rtt = (ntp_short(arrival_ntp) - block.last_sr - block.delay_since_last_sr) & _U32
    return None if rtt >= 1 << 31 else rtt


# ---------------------------------------------------------------------------
# Statistics


class ReceptionStats:
    """What we know about one source we receive RTP from (RFC 3550 A.1, A.3, A.8).

    Call :meth:`update` for each RTP packet of the source; a packet that does
    not pass sequence validation (probation, or a jump until two sequential
    packets confirm a restart) is not counted and :meth:`update` returns
    False. :meth:`report_block` closes the current report interval.
    """

    def __init__(self, ssrc: int, clock_rate: int, *, min_sequential: int = MIN_SEQUENTIAL) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate}")
        if min_sequential < 1:
            raise ValueError(f"min_sequential must be at least 1, got {min_sequential}")
        self.ssrc = ssrc
        self._rate = clock_rate
        self._min_sequential = min_sequential
        self._started = False
        self._probation = min_sequential
        self._max_seq = 0
        self._cycles = 0
        self._base_seq = 0
        self._bad_seq = _SEQ_MOD + 1
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter = 0.0
        self._last_arrival: float | None = None
        self._last_timestamp = 0
        self._last_sr = 0
        self._last_sr_arrival: float | None = None

    # A.1 -----------------------------------------------------------------

    def update(self, sequence: int, timestamp: int, arrival: float) -> bool:
        """Account one RTP packet; arrival in seconds. True if it was counted."""
        if not self._started:
            self._started = True
            self._init_seq(sequence)
            self._max_seq = (sequence - 1) & 0xFFFF
            self._probation = self._min_sequential
        if not self._update_seq(sequence):
            return False
        self._update_jitter(timestamp, arrival)
        return True

    def _init_seq(self, sequence: int) -> None:
        self._base_seq = sequence
        self._max_seq = sequence
        self._bad_seq = _SEQ_MOD + 1
        self._cycles = 0
        self._received = 0
        self._received_prior = 0
        self._expected_prior = 0
        self._last_arrival = None

    def _update_seq(self, sequence: int) -> bool:
        udelta = (sequence - self._max_seq) & 0xFFFF
        if self._probation:
            # Modular, unlike A.1's C, so that probation also passes across a wrap.
            if udelta == 1:
                self._probation -= 1
                self._max_seq = sequence
                if self._probation == 0:
                    self._init_seq(sequence)
                    self._received += 1
                    return True
            else:
                self._probation = self._min_sequential - 1
                self._max_seq = sequence
            return False
        if udelta < MAX_DROPOUT:
            if sequence < self._max_seq:
                self._cycles += _SEQ_MOD
            self._max_seq = sequence
        elif udelta <= _SEQ_MOD - MAX_MISORDER:
            if sequence != self._bad_seq:
                self._bad_seq = (sequence + 1) & 0xFFFF
                return False
            # Two sequential packets after a jump: the source restarted.
            self._init_seq(sequence)
        self._received += 1
        return True

    # A.8 -----------------------------------------------------------------

    def _update_jitter(self, timestamp: int, arrival: float) -> None:
        last = self._last_arrival
        self._last_arrival = arrival
        previous = self._last_timestamp
        self._last_timestamp = timestamp
        if last is None:
            return
        elapsed = (timestamp - previous) & _U32
        if elapsed >= 1 << 31:
            elapsed -= 1 << 32
        # D(i-1, i): difference of the relative transit times, in timestamp units.
        difference = abs((arrival - last) * self._rate - elapsed)
        self._jitter += (difference - self._jitter) / 16

    # 6.4.1 LSR/DLSR ------------------------------------------------------

    def on_sender_report(self, report: SenderReport, arrival: float) -> None:
        """Note an SR from this source for the LSR and DLSR of later reports."""
        if report.ssrc != self.ssrc:
            raise ValueError(
                f"SR from SSRC {report.ssrc:#010x} given to stats of {self.ssrc:#010x}"
            )
        self._last_sr = ntp_short(report.sender_info.ntp_timestamp)
        self._last_sr_arrival = arrival

    # A.3 -----------------------------------------------------------------

    @property
    def received(self) -> int:
        return self._received

    @property
    def extended_max(self) -> int:
        """Extended highest sequence number received (cycles + max_seq)."""
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self._base_seq + 1 if self._received else 0

    @property
    def cumulative_lost(self) -> int:
        """Expected minus received, clamped to the 24 bits of a report block."""
        return max(_LOST_MIN, min(_LOST_MAX, self.expected - self._received))

    @property
    def jitter(self) -> float:
        """Interarrival jitter estimate in timestamp units (RFC 3550 A.8)."""
        return self._jitter

    def report_block(self, now: float) -> ReportBlock | None:
        """The report block for this source, closing the interval (RFC 3550 A.3).

        None before a packet has passed validation. ``now`` is on the clock
        of the ``arrival`` given to :meth:`on_sender_report`.
        """
        if not self._received:
            return None
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self._received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self._received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = (lost_interval << 8) // expected_interval
        dlsr = 0
        if self._last_sr_arrival is not None:
            dlsr = min(_U32, max(0, int((now - self._last_sr_arrival) * 65536)))
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            cumulative_lost=self.cumulative_lost,
            highest_sequence=self.extended_max & _U32,
            jitter=min(_U32, int(self._jitter)),
            last_sr=self._last_sr,
            delay_since_last_sr=dlsr,
        )


class SenderStats:
    """Counts and the timestamp mapping for SRs about a stream we send (RFC 3550 6.4.1)."""

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate}")
        self.ssrc = ssrc
        self._rate = clock_rate
        self.packet_count = 0
        self.octet_count = 0
        self._last_timestamp = 0
        self._last_sent: float | None = None

    def on_sent(self, rtp_timestamp: int, payload_octets: int, now: float) -> None:
        """Account one RTP packet sent at ``now`` (payload octets only, RFC 3550 6.4.1)."""
        self.packet_count += 1
        self.octet_count += payload_octets
        self._last_timestamp = rtp_timestamp
        self._last_sent = now

    @property
    def has_sent(self) -> bool:
        """Whether an SR (rather than an RR) is due: we sent since the start."""
        return self._last_sent is not None

    def sender_info(self, now: float, wallclock: float) -> SenderInfo:
        """Sender info for an SR made at ``now`` (the on_sent clock), ``wallclock`` in Unix s.

        The RTP timestamp is the one a packet sampled at ``now`` would carry:
        the last one sent, advanced by the time since at the stream's rate.
        """
        rtp = self._last_timestamp
        if self._last_sent is not None:
            rtp += round((now - self._last_sent) * self._rate)
        return SenderInfo(
            ntp_timestamp=ntp_timestamp(wallclock),
            rtp_timestamp=rtp & _U32,
            packet_count=self.packet_count & _U32,
            octet_count=self.octet_count & _U32,
        )

    def sender_report(
        self, now: float, wallclock: float, reports: Iterable[ReportBlock] = ()
    ) -> SenderReport:
        return SenderReport(self.ssrc, self.sender_info(now, wallclock), tuple(reports))


# ---------------------------------------------------------------------------
# Report timing


class RtcpScheduler:
    """When to send the next RTCP report (RFC 3550 6.2, 6.3, A.7).

    With ``fixed_interval`` unset, the interval is A.7's ``rtcp_interval``:
    the RTCP bandwidth (5 % of ``session_bandwidth``, a quarter of it for
    senders when they are at most a quarter of the members) shared by the
    members at the average compound size, at least ``min_interval`` (5 s,
    halved before the first report), times a random factor 0.5..1.5 and
    divided by e - 3/2. With ``fixed_interval`` set, reports are that far
    apart exactly. ``rng`` is the random source, for repeatable tests.

    Use: sleep until :attr:`next_report`, call :meth:`poll`; when it returns
    True, send a report and call :meth:`sent`. Sizes are octets including
    UDP and IP headers (RFC 3550 6.2).
    """

    _SENDER_FRACTION: Final = 0.25
    _RTCP_FRACTION: Final = 0.05
    _COMPENSATION: Final = math.e - 1.5

    def __init__(
        self,
        now: float,
        *,
        session_bandwidth: float = 64_000.0,
        min_interval: float = 5.0,
        fixed_interval: float | None = None,
        initial_size: int = 128,
        rng: random.Random | None = None,
    ) -> None:
        if session_bandwidth <= 0:
            raise ValueError(f"session_bandwidth must be positive, got {session_bandwidth}")
        if min_interval <= 0:
            raise ValueError(f"min_interval must be positive, got {min_interval}")
        if fixed_interval is not None and fixed_interval <= 0:
            raise ValueError(f"fixed_interval must be positive, got {fixed_interval}")
        self._rtcp_bandwidth = session_bandwidth * self._RTCP_FRACTION / 8  # octets/s
        self._min_interval = min_interval
        self._fixed = fixed_interval
        self._rng = rng if rng is not None else random.Random()
        self.avg_size = float(initial_size)
        self._initial = True
        self._last_sent = now
        self.next_report = now + self.interval(members=2, senders=1, we_sent=False)

    def interval(self, *, members: int, senders: int, we_sent: bool) -> float:
        """One randomised report interval T (A.7 ``rtcp_interval``), or the fixed one."""
        if self._fixed is not None:
            return self._fixed
        minimum = self._min_interval / 2 if self._initial else self._min_interval
        bandwidth = self._rtcp_bandwidth
        share = max(1, members)
        if senders <= members * self._SENDER_FRACTION:
            if we_sent:
                bandwidth *= self._SENDER_FRACTION
                share = max(1, senders)
            else:
                bandwidth *= 1 - self._SENDER_FRACTION
                share = max(1, members - senders)
        deterministic = max(minimum, self.avg_size * share / bandwidth)
        return deterministic * (self._rng.random() + 0.5) / self._COMPENSATION

    def poll(
        self, now: float, *, members: int = 2, senders: int = 1, we_sent: bool = False
    ) -> bool:
        """At or after :attr:`next_report`: True when a report is due now.

        Timer reconsideration (A.7 OnExpire): the interval is recomputed with
        the current membership; if the last report plus it is still ahead,
        the report is rescheduled there and False returned.
        """
        if now < self.next_report:
            return False
        due = self._last_sent + self.interval(members=members, senders=senders, we_sent=we_sent)
        if due > now:
            self.next_report = due
            return False
        return True

    def sent(
        self, size: int, now: float, *, members: int = 2, senders: int = 1, we_sent: bool = False
    ) -> None:
        """A report of ``size`` octets went out at ``now``: schedule the next."""
        self.received(size)
        self._initial = False
        self._last_sent = now
        self.next_report = now + self.interval(members=members, senders=senders, we_sent=we_sent)

    def received(self, size: int) -> None:
        """Fold a compound RTCP packet's size into the average (A.7: gain 1/16)."""
        self.avg_size += (size - self.avg_size) / 16
