"""gateway.media.pcap: files read back by the tests' own reader and by tshark.

Packets are built the way the capture writes them: SIP and RTP over UDP on IPv4 and IPv6,
SIP over TCP in segments whose sequence numbers run on per direction. The reader in
tests/pcap_reader.py checks every length and checksum; tshark (Debian package tshark,
installed by justw for the tests) must dissect SIP methods, RTP sequence numbers and the
TCP stream. Bad input is refused with PcapError naming what was wrong.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from gateway.media.pcap import (
    LINKTYPE_RAW,
    MAX_SEGMENT,
    PcapError,
    PcapWriter,
    internet_checksum,
    udp_datagram,
)
from tests.pcap_reader import ones_complement_sum, read_pcap, tshark_binary, tshark_fields

needs_tshark = pytest.mark.skipif(
    tshark_binary() is None, reason="tshark not installed (Debian package tshark)"
)

T0 = 1_714_564_800.25
APP = ("198.51.100.7", 5060)
GW = ("203.0.113.1", 5060)
APP6 = ("2001:db8::7", 5062)
GW6 = ("2001:db8::1", 5060)


def sip(method: str, call_id: str = "abc@app", body: bytes = b"") -> bytes:
    return (
        f"{method} sip:1002@203.0.113.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1\r\n"
        "From: <sip:1001@203.0.113.1>;tag=1\r\n"
        "To: <sip:1002@203.0.113.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        "Max-Forwards: 70\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def response(status: str, method: str) -> bytes:
    return (
        f"SIP/2.0 {status}\r\n"
        "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1\r\n"
        "From: <sip:1001@203.0.113.1>;tag=1\r\n"
        "To: <sip:1002@203.0.113.1>;tag=2\r\n"
        "Call-ID: abc@app\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def rtp(seq: int, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, 8, seq, 160 * seq, ssrc) + b"\xd5" * 160


def write(path: Path, fill: object) -> PcapWriter:
    with path.open("wb") as stream:
        writer = PcapWriter(stream)
        assert callable(fill)
        fill(writer)
    return writer


def test_global_header_is_classic_pcap_of_raw_ip() -> None:
    stream = io.BytesIO()
    PcapWriter(stream)
    magic, major, minor, zone, sigfigs, snaplen, link = struct.unpack("<IHHiIII", stream.getvalue())
    assert (magic, major, minor, zone, sigfigs) == (0xA1B2C3D4, 2, 4, 0, 0)
    assert (snaplen, link) == (65535, LINKTYPE_RAW)


def test_udp_over_ipv4_and_ipv6_reads_back_with_checksums(tmp_path: Path) -> None:
    path = tmp_path / "udp.pcap"

    def fill(writer: PcapWriter) -> None:
        writer.write_udp(T0, APP, GW, sip("INVITE"))
        writer.write_udp(T0 + 0.0004, ("203.0.113.1", 20000), ("198.51.100.7", 4000), rtp(7))
        writer.write_udp(T0 + 1.9999996, APP6, GW6, sip("OPTIONS"))  # usec rounds to next s

    writer = write(path, fill)
    first, second, third = read_pcap(path)  # the reader verifies every checksum
    assert (first.protocol, first.source, first.destination) == ("udp", APP, GW)
    assert first.payload == sip("INVITE")
    assert first.time == pytest.approx(T0, abs=1e-6)
    assert second.payload == rtp(7) and second.time == pytest.approx(T0 + 0.0004, abs=1e-6)
    assert (third.source, third.destination) == (APP6, GW6)
    assert third.time == pytest.approx(T0 + 2.0, abs=1e-6)
    assert writer.packets == 3
    assert writer.bytes == path.stat().st_size - 24 - 3 * 16


def test_ipv6_udp_checksum_is_never_zero() -> None:
    # RFC 8200 8.1: zero is not allowed over IPv6; a sum that comes out 0 is sent as 0xFFFF.
    for n in range(300):
        packet = udp_datagram(APP6, GW6, n.to_bytes(2, "big") * 3)
        assert struct.unpack_from("!H", packet, 46)[0] != 0


def test_checksum_matches_the_word_by_word_sum() -> None:
    for data in (b"", b"\x01", b"\xff\xff", b"\x45\x00\x00\x1c" * 5, bytes(range(255))):
        assert internet_checksum(data) == ~ones_complement_sum(data) & 0xFFFF


def test_tcp_segments_carry_consecutive_sequence_numbers(tmp_path: Path) -> None:
    path = tmp_path / "tcp.pcap"
    invite, ok, ack = sip("INVITE"), response("200 OK", "INVITE"), sip("ACK")
    big = sip("MESSAGE", body=b"x" * (MAX_SEGMENT + 10))

    def fill(writer: PcapWriter) -> None:
        writer.write_tcp(T0, APP, GW, invite)
        writer.write_tcp(T0 + 0.1, GW, APP, ok)
        writer.write_tcp(T0 + 0.2, APP, GW, ack)
        writer.write_tcp(T0 + 0.3, APP, GW, big)

    write(path, fill)
    records = read_pcap(path)
    assert [r.protocol for r in records] == ["tcp"] * 5  # the big message took two segments
    first, reply, third, part1, part2 = records
    assert (first.seq, first.ack) == (1, 1)
    assert (reply.seq, reply.ack) == (1, 1 + len(invite))
    assert (third.seq, third.ack) == (1 + len(invite), 1 + len(ok))
    assert third.seq is not None and part1.seq is not None
    assert part1.seq == third.seq + len(ack) and part2.seq == part1.seq + len(part1.payload)
    assert part1.payload + part2.payload == big


@pytest.mark.parametrize(
    ("source", "destination", "payload", "message"),
    [
        (("not-an-ip", 5060), GW, b"x", "source address 'not-an-ip' is not a numeric"),
        (APP, ("203.0.113.1", 70000), b"x", "destination port 70000 is out of range"),
        (APP, GW6, b"x", "different IP families"),
        (APP, GW, b"x" * 65508, "UDP payload of 65508 bytes is longer"),
    ],
)
def test_bad_packets_are_refused_with_the_reason(
    source: tuple[str, int], destination: tuple[str, int], payload: bytes, message: str
) -> None:
    stream = io.BytesIO()
    writer = PcapWriter(stream)
    with pytest.raises(PcapError, match=message):
        writer.write_udp(T0, source, destination, payload)
    assert stream.getvalue() == stream.getvalue()[:24]  # nothing half-written
    assert writer.packets == 0


def test_a_negative_timestamp_is_refused() -> None:
    writer = PcapWriter(io.BytesIO())
    with pytest.raises(PcapError, match="before 1970"):
        writer.write_udp(-1.0, APP, GW, b"x")


@needs_tshark
def test_tshark_dissects_sip_rtp_and_tcp(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pcap"
    media_a, media_b = ("198.51.100.7", 4000), ("203.0.113.1", 20000)

    def fill(writer: PcapWriter) -> None:
        writer.write_udp(T0, APP, GW, sip("INVITE"))
        writer.write_udp(T0 + 0.01, GW, APP, response("200 OK", "INVITE"))
        writer.write_udp(T0 + 0.02, media_a, media_b, rtp(100))
        writer.write_udp(T0 + 0.04, media_b, media_a, rtp(101))
        writer.write_udp(T0 + 0.05, APP6, GW6, sip("BYE"))
        writer.write_tcp(T0 + 0.06, APP, GW, sip("REGISTER"))
        writer.write_tcp(T0 + 0.07, GW, APP, response("200 OK", "REGISTER"))
        writer.write_tcp(T0 + 0.08, APP, GW, sip("OPTIONS"))

    write(path, fill)
    rows = tshark_fields(
        path,
        [
            *("ip.src", "ipv6.src", "udp.srcport", "tcp.srcport", "sip.Method"),
            *("sip.Status-Code", "rtp.seq", "tcp.seq", "ip.checksum.status"),
            "udp.checksum.status",
        ],
        "--enable-heuristic",
        "rtp_udp",
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "tcp.relative_sequence_numbers:FALSE",
    )
    assert len(rows) == 8
    ip4, ip6, udp, tcp, methods, status, rtp_seq, tcp_seq, ip_ok, udp_ok = zip(*rows, strict=True)
    assert methods == ("INVITE", "", "", "", "BYE", "REGISTER", "", "OPTIONS")
    assert status[1] == "200" and status[6] == "200"
    assert rtp_seq[2:4] == ("100", "101")
    assert (ip4[0], udp[0], ip6[4], tcp[5]) == ("198.51.100.7", "5060", "2001:db8::7", "5060")
    assert tcp_seq[5:] == ("1", "1", str(1 + len(sip("REGISTER"))))
    # Wireshark's checksum status: 0 bad, 1 good, 2 unverified.
    assert set(ip_ok[:4]) == {"1"} and set(udp_ok[:5]) == {"1"}, (ip_ok, udp_ok)
    tcp_checks = tshark_fields(path, ["tcp.checksum.status"], "-o", "tcp.check_checksum:TRUE")
    assert [row[0] for row in tcp_checks][5:] == ["1", "1", "1"]
