"""A small pcap reader for the tests, written from the formats (not from gateway.media.pcap).

It reads classic libpcap files of LINKTYPE_RAW (101) records, decodes IPv4 and IPv6 packets
with UDP or TCP inside, and checks every length and checksum on the way (RFC 791, 768,
8200 8.1, 9293), so that a test learns of a bad header here and not only from tshark. It
also runs tshark, when installed, to read fields the way Wireshark does.
"""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

Address = tuple[str, int]


class BadCapture(AssertionError):
    """The file is not what a pcap of raw IP packets must be."""


@dataclass(frozen=True)
class Captured:
    time: float
    protocol: str  # "udp" or "tcp"
    source: Address
    destination: Address
    payload: bytes
    seq: int | None = None  # TCP only
    ack: int | None = None


def ones_complement_sum(data: bytes) -> int:
    """Sum of 16-bit big-endian words with end-around carry (RFC 1071), word by word."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def read_pcap(path: Path) -> list[Captured]:
    data = path.read_bytes()
    if len(data) < 24:
        raise BadCapture(f"{path}: {len(data)} bytes, shorter than the pcap global header")
    magic, major, minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    if magic != 0xA1B2C3D4 or (major, minor) != (2, 4):
        raise BadCapture(f"{path}: magic {magic:#x} version {major}.{minor}")
    if linktype != 101:
        raise BadCapture(f"{path}: link type {linktype}, expected LINKTYPE_RAW (101)")
    offset, records = 24, []
    while offset < len(data):
        seconds, micros, included, original = struct.unpack_from("<IIII", data, offset)
        offset += 16
        if micros >= 1_000_000 or included != original or offset + included > len(data):
            raise BadCapture(f"{path}: bad record header at {offset - 16}")
        records.append(_packet(seconds + micros / 1e6, data[offset : offset + included]))
        offset += included
    return records


def _packet(time: float, packet: bytes) -> Captured:
    version = packet[0] >> 4
    if version == 4:
        header_length = (packet[0] & 0x0F) * 4
        total, protocol = struct.unpack_from("!H", packet, 2)[0], packet[9]
        if total != len(packet):
            raise BadCapture(f"IPv4 total length {total} != {len(packet)}")
        if ones_complement_sum(packet[:header_length]) != 0xFFFF:
            raise BadCapture("IPv4 header checksum is wrong")
        src, dst = packet[12:16], packet[16:20]
        pseudo = src + dst + struct.pack("!xBH", protocol, total - header_length)
        body = packet[header_length:]
    elif version == 6:
        length, protocol = struct.unpack_from("!HB", packet, 4)
        if length != len(packet) - 40:
            raise BadCapture(f"IPv6 payload length {length} != {len(packet) - 40}")
        src, dst = packet[8:24], packet[24:40]
        pseudo = src + dst + struct.pack("!IxxxB", length, protocol)
        body = packet[40:]
    else:
        raise BadCapture(f"IP version {version}")
    source_host = str(ipaddress.ip_address(src))
    destination_host = str(ipaddress.ip_address(dst))
    checksum_field = struct.unpack_from("!H", body, 6 if protocol == 17 else 16)[0]
    if (checksum_field or version == 6) and ones_complement_sum(pseudo + body) != 0xFFFF:
        raise BadCapture(f"{'UDP' if protocol == 17 else 'TCP'} checksum is wrong")
    sport, dport = struct.unpack_from("!HH", body)
    if protocol == 17:
        if struct.unpack_from("!H", body, 4)[0] != len(body):
            raise BadCapture("UDP length does not match the IP payload")
        return Captured(time, "udp", (source_host, sport), (destination_host, dport), body[8:])
    if protocol == 6:
        seq, ack, offset_byte = struct.unpack_from("!IIB", body, 4)
        payload = body[(offset_byte >> 4) * 4 :]
        source, destination = (source_host, sport), (destination_host, dport)
        return Captured(time, "tcp", source, destination, payload, seq, ack)
    raise BadCapture(f"IP protocol {protocol}")


def tshark_binary() -> str | None:
    return shutil.which("tshark")


def tshark_fields(path: Path, fields: list[str], *options: str) -> list[list[str]]:
    """``tshark -r FILE OPTIONS -T fields -e F...``: one list of field texts per packet.

    RTP on ports no SDP in the file names needs ``--enable-heuristic rtp_udp``.
    """
    tshark = tshark_binary()
    assert tshark is not None, "tshark not installed (Debian package tshark)"
    command = [tshark, "-n", "-r", str(path), *options, "-T", "fields", "-E", "separator=\t"]
    for field in fields:
        command += ["-e", field]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"tshark failed: {done.stderr}"
    return [line.split("\t") for line in done.stdout.splitlines()]
