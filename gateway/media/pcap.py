"""pcap files of packets as they were on the wire (sans-IO: bytes out into a given stream).

The per-call capture (``edgegw capture``) writes what the gateway received and sent as a
classic libpcap file (the "pcap" format of libpcap/tcpdump: a 24-byte global header, then
one 16-byte record header per packet, microsecond timestamps) with link type
``LINKTYPE_RAW`` (101): every record is an IPv4 or IPv6 packet, no link layer. The
gateway only ever sees UDP payloads and TCP stream data, so the IP and transport headers
are rebuilt here from the addresses the sockets reported:

* IPv4 (RFC 791 3.1) with the header checksum; IPv6 (RFC 8200 3);
* UDP (RFC 768) with its checksum over the pseudo-header, which IPv6 makes mandatory
  (RFC 8200 8.1) and which IPv4 gets too, so tools can check both alike;
* TCP (RFC 9293 3.1) segments carrying SIP over TCP, PSH+ACK with sequence and
  acknowledgement numbers that run on per direction of each connection, so a dissector
  reassembles the stream mid-connection (no handshake is made up).

Nothing here reads a clock or touches a file: the caller passes the timestamp of each
packet and the binary stream to append to.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import BinaryIO, Final

__all__ = [
    "LINKTYPE_RAW",
    "PCAP_MAGIC",
    "Address",
    "PcapError",
    "PcapWriter",
    "internet_checksum",
    "tcp_segment",
    "udp_datagram",
]

Address = tuple[str, int]

PCAP_MAGIC: Final = 0xA1B2C3D4  # microsecond timestamps
LINKTYPE_RAW: Final = 101
SNAPLEN: Final = 65535
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

_GLOBAL: Final = struct.Struct("<IHHiIII")
_RECORD: Final = struct.Struct("<IIII")
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_IPV6: Final = struct.Struct("!IHBB16s16s")
_UDP: Final = struct.Struct("!HHHH")
_TCP: Final = struct.Struct("!IIBBHHH")  # after the ports: seq, ack, offset, flags, ...
_PORTS: Final = struct.Struct("!HH")
_IPV4_HEADER: Final = 20
_IPV6_HEADER: Final = 40
_TCP_HEADER: Final = 20
_TTL: Final = 64
_DONT_FRAGMENT: Final = 0x4000
_TCP_PSH_ACK: Final = 0x18
_TCP_WINDOW: Final = 65535
# Largest UDP payload one IP packet can hold (IPv4's total length field is the limit).
MAX_UDP_PAYLOAD: Final = 65535 - _IPV4_HEADER - _UDP.size
# TCP stream data is cut into segments no longer than this, so each fits an IP packet.
MAX_SEGMENT: Final = 65535 - _IPV4_HEADER - _TCP_HEADER


class PcapError(ValueError):
    """A packet that cannot be written: a bad address, mixed families, a payload too long."""


@dataclass(frozen=True, slots=True)
class _Host:
    packed: bytes
    v6: bool


def _host(address: Address, what: str) -> _Host:
    host, port = address
    if not 0 <= port <= 65535:
        raise PcapError(f"{what} port {port} is out of range 0-65535")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise PcapError(f"{what} address {host!r} is not a numeric IPv4 or IPv6 address") from None
    return _Host(ip.packed, ip.version == 6)


def _hosts(source: Address, destination: Address) -> tuple[_Host, _Host]:
    src, dst = _host(source, "source"), _host(destination, "destination")
    if src.v6 != dst.v6:
        raise PcapError(
            f"source {source[0]} and destination {destination[0]} are of different IP families"
        )
    return src, dst


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement checksum of ``data`` (odd lengths padded with a zero byte).

    The ones' complement sum of 16-bit words equals the big-endian number mod 0xFFFF
    (2**16 = 1 mod 0xFFFF), with 0xFFFF rather than 0 for a nonzero sum: one big-integer
    operation in C instead of a Python loop over the words.
    """
    if len(data) % 2:
        data += b"\x00"
    number = int.from_bytes(data, "big")
    total = number % 0xFFFF
    if total == 0 and number:
        total = 0xFFFF
    return ~total & 0xFFFF


def _pseudo_header(src: _Host, dst: _Host, protocol: int, length: int) -> bytes:
    if src.v6:  # RFC 8200 8.1
        return src.packed + dst.packed + struct.pack("!IxxxB", length, protocol)
    return src.packed + dst.packed + struct.pack("!xBH", protocol, length)  # RFC 768


def _ip_packet(src: _Host, dst: _Host, protocol: int, segment: bytes, ident: int = 0) -> bytes:
    """``segment`` (a UDP datagram or TCP segment) inside an IPv4 or IPv6 header."""
    if src.v6:
        return _IPV6.pack(6 << 28, len(segment), protocol, _TTL, src.packed, dst.packed) + segment
    header = _IPV4.pack(
        0x45,
        0,
        _IPV4_HEADER + len(segment),
        ident & 0xFFFF,
        _DONT_FRAGMENT,
        _TTL,
        protocol,
        0,
        src.packed,
        dst.packed,
    )
    checksum = internet_checksum(header)
    return header[:10] + checksum.to_bytes(2, "big") + header[12:] + segment


def udp_datagram(source: Address, destination: Address, payload: bytes, ident: int = 0) -> bytes:
    """The IP packet that carried ``payload`` from ``source`` to ``destination`` over UDP."""
    if len(payload) > MAX_UDP_PAYLOAD:
        raise PcapError(
            f"UDP payload of {len(payload)} bytes is longer than an IP packet holds "
            f"({MAX_UDP_PAYLOAD})"
        )
    src, dst = _hosts(source, destination)
    length = _UDP.size + len(payload)
    header = _UDP.pack(source[1], destination[1], length, 0)
    checksum = internet_checksum(_pseudo_header(src, dst, PROTO_UDP, length) + header + payload)
    # RFC 768: a computed zero goes out as all ones (zero means "no checksum").
    header = _UDP.pack(source[1], destination[1], length, checksum or 0xFFFF)
    return _ip_packet(src, dst, PROTO_UDP, header + payload, ident)


def tcp_segment(
    source: Address,
    destination: Address,
    payload: bytes,
    *,
    seq: int,
    ack: int,
    ident: int = 0,
) -> bytes:
    """The IP packet of one PSH+ACK TCP segment carrying ``payload``."""
    if len(payload) > MAX_SEGMENT:
        raise PcapError(
            f"TCP segment of {len(payload)} bytes is longer than an IP packet holds ({MAX_SEGMENT})"
        )
    src, dst = _hosts(source, destination)
    ports = _PORTS.pack(source[1], destination[1])
    fields = (seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (_TCP_HEADER // 4) << 4, _TCP_PSH_ACK)
    header = ports + _TCP.pack(*fields, _TCP_WINDOW, 0, 0)
    length = len(header) + len(payload)
    checksum = internet_checksum(_pseudo_header(src, dst, PROTO_TCP, length) + header + payload)
    header = ports + _TCP.pack(*fields, _TCP_WINDOW, checksum, 0)
    return _ip_packet(src, dst, PROTO_TCP, header + payload, ident)


def _split_time(timestamp: float) -> tuple[int, int]:
    if timestamp < 0:
        raise PcapError(f"timestamp {timestamp} is before 1970")
    seconds = int(timestamp)
    micros = round((timestamp - seconds) * 1_000_000)
    if micros >= 1_000_000:  # rounding carried into the next second
        seconds, micros = seconds + 1, micros - 1_000_000
    return seconds, micros


class PcapWriter:
    """Appends packets to ``stream`` as a libpcap file; writes the global header at once.

    ``packets`` and ``bytes`` count the records written and the IP bytes in them. TCP
    sequence numbers are kept per (source, destination): each direction's next byte, and
    the acknowledgement is what the other direction has sent so far.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.packets = 0
        self.bytes = 0
        self._ident = 0
        self._next_seq: dict[tuple[Address, Address], int] = {}
        stream.write(_GLOBAL.pack(PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW))

    def write_udp(
        self, timestamp: float, source: Address, destination: Address, payload: bytes
    ) -> None:
        """One UDP datagram (SIP over UDP, RTP, RTCP) as a record."""
        self._record(timestamp, udp_datagram(source, destination, payload, self._next_ident()))

    def write_tcp(
        self, timestamp: float, source: Address, destination: Address, data: bytes
    ) -> None:
        """Stream data (a SIP message over TCP) as one or more segments of its connection."""
        for start in range(0, len(data), MAX_SEGMENT):
            chunk = data[start : start + MAX_SEGMENT]
            seq = self._next_seq.setdefault((source, destination), 1)
            ack = self._next_seq.setdefault((destination, source), 1)
            packet = tcp_segment(
                source, destination, chunk, seq=seq, ack=ack, ident=self._next_ident()
            )
            self._record(timestamp, packet)
            self._next_seq[(source, destination)] = (seq + len(chunk)) & 0xFFFFFFFF

    def _next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def _record(self, timestamp: float, packet: bytes) -> None:
        seconds, micros = _split_time(timestamp)
        self._stream.write(_RECORD.pack(seconds, micros, len(packet), len(packet)) + packet)
        self.packets += 1
        self.bytes += len(packet)
