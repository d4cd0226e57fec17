"""Tests for gateway.media.rtp: RTP header parse/build and RTCP demultiplexing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.media.rtp import (
    RTP_HEADER_LENGTH,
    RtpError,
    RtpHeader,
    build_rtp_header,
    is_rtcp,
    parse_rtp_header,
)

# A PCMA packet as a phone sends it: V=2, PT 8, seq 0x1234, ts 0xDEADBEEF,
# SSRC 0x01020304, 160 bytes of payload.
PCMA_PACKET = bytes.fromhex("80081234deadbeef01020304") + b"\xd5" * 160


def rtcp_rr(packet_type: int = 201) -> bytes:
    """An empty receiver report (RFC 3550 6.4.2): header and SSRC."""
    return struct.pack("!BBHI", 0x80, packet_type, 1, 0x01020304)


class TestParse:
    def test_plain_packet(self) -> None:
        assert parse_rtp_header(PCMA_PACKET) == RtpHeader(
            payload_type=8,
            marker=False,
            sequence=0x1234,
            timestamp=0xDEADBEEF,
            ssrc=0x01020304,
            csrc_count=0,
            has_extension=False,
            padding=False,
            header_length=12,
        )

    def test_marker_and_high_payload_type(self) -> None:
        header = parse_rtp_header(bytes([0x80, 0x80 | 101]) + bytes(10))
        assert header is not None
        assert header.marker is True
        assert header.payload_type == 101

    def test_max_field_values(self) -> None:
        header = parse_rtp_header(bytes([0x80, 0x7F]) + b"\xff" * 10)
        assert header is not None
        assert (header.payload_type, header.sequence, header.timestamp, header.ssrc) == (
            127,
            0xFFFF,
            0xFFFF_FFFF,
            0xFFFF_FFFF,
        )

    def test_csrc_list_counts_into_header(self) -> None:
        data = bytes([0x82, 0]) + bytes(10) + struct.pack("!II", 7, 8) + b"payload"
        header = parse_rtp_header(data)
        assert header is not None
        assert header.csrc_count == 2
        assert header.header_length == 20
        assert data[header.header_length :] == b"payload"

    def test_extension_counts_into_header(self) -> None:
        extension = struct.pack("!HH", 0xBEDE, 2) + bytes(8)
        data = bytes([0x91, 0]) + bytes(10) + struct.pack("!I", 9) + extension + b"x"
        header = parse_rtp_header(data)
        assert header is not None
        assert header.has_extension is True
        assert header.csrc_count == 1
        assert header.header_length == 12 + 4 + 4 + 8
        assert data[header.header_length :] == b"x"

    def test_empty_extension(self) -> None:
        data = bytes([0x90, 0]) + bytes(10) + struct.pack("!HH", 0xBEDE, 0)
        header = parse_rtp_header(data)
        assert header is not None
        assert header.header_length == 16

    def test_padding_flag_without_reading_payload(self) -> None:
        # The padding count sits in the (possibly encrypted) last octet; a
        # nonsense count must not make the header unreadable.
        data = bytes([0xA0, 0]) + bytes(10) + b"\xff"
        header = parse_rtp_header(data)
        assert header is not None
        assert header.padding is True

    def test_header_only_packet(self) -> None:
        header = parse_rtp_header(PCMA_PACKET[:RTP_HEADER_LENGTH])
        assert header is not None
        assert header.header_length == len(PCMA_PACKET[:RTP_HEADER_LENGTH])

    def test_accepts_memoryview_and_bytearray(self) -> None:
        expected = parse_rtp_header(PCMA_PACKET)
        assert parse_rtp_header(bytearray(PCMA_PACKET)) == expected
        assert parse_rtp_header(memoryview(PCMA_PACKET)) == expected
        assert is_rtcp(memoryview(rtcp_rr()))

    def test_frozen(self) -> None:
        header = parse_rtp_header(PCMA_PACKET)
        assert header is not None
        with pytest.raises(AttributeError):
            header.ssrc = 1  # type: ignore[misc]


class TestNotRtp:
    @pytest.mark.parametrize("length", [0, 1, 11])
    def test_too_short(self, length: int) -> None:
        assert parse_rtp_header(PCMA_PACKET[:length]) is None

    @pytest.mark.parametrize("first", [0x00, 0x40, 0xC0])
    def test_wrong_version(self, first: int) -> None:
        assert parse_rtp_header(bytes([first]) + PCMA_PACKET[1:]) is None

    def test_csrc_list_past_end(self) -> None:
        assert parse_rtp_header(bytes([0x8F, 0]) + bytes(10) + bytes(59)) is None

    def test_csrc_list_exactly_fits(self) -> None:
        header = parse_rtp_header(bytes([0x8F, 0]) + bytes(10) + bytes(60))
        assert header is not None
        assert header.header_length == 72

    def test_extension_header_past_end(self) -> None:
        assert parse_rtp_header(bytes([0x90, 0]) + bytes(10) + b"\xbe\xde\x00") is None

    def test_extension_body_past_end(self) -> None:
        data = bytes([0x90, 0]) + bytes(10) + struct.pack("!HH", 0xBEDE, 3) + bytes(11)
        assert parse_rtp_header(data) is None

    def test_stun_is_not_rtp(self) -> None:
        # STUN binding request (RFC 5389 6): top two bits are zero.
        stun = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + bytes(12)
        assert parse_rtp_header(stun) is None
        assert not is_rtcp(stun)

    @given(st.binary(max_size=128))
    def test_arbitrary_bytes_never_raise(self, data: bytes) -> None:
        header = parse_rtp_header(data)
        if header is not None:
            assert RTP_HEADER_LENGTH <= header.header_length <= len(data)
            assert data[0] >> 6 == 2


class TestIsRtcp:
    @pytest.mark.parametrize("packet_type", [192, 200, 201, 202, 203, 204, 205, 206, 223])
    def test_rtcp_types(self, packet_type: int) -> None:
        assert is_rtcp(rtcp_rr(packet_type))

    @pytest.mark.parametrize("second", [0, 8, 0x80 | 0, 0x80 | 63, 224, 255, 191])
    def test_rtp_payload_types(self, second: int) -> None:
        assert not is_rtcp(bytes([0x80, second]) + bytes(10))

    def test_rtp_packet(self) -> None:
        assert not is_rtcp(PCMA_PACKET)

    def test_wrong_version(self) -> None:
        assert not is_rtcp(bytes([0x40]) + rtcp_rr()[1:])

    def test_shorter_than_report_header(self) -> None:
        assert not is_rtcp(rtcp_rr()[:7])
        assert not is_rtcp(b"")

    def test_report_count_bits_ignored(self) -> None:
        # RC in the low 5 bits of the first byte (RFC 3550 6.4.1).
        assert is_rtcp(bytes([0x81]) + rtcp_rr()[1:])


class TestBuild:
    def test_plain(self) -> None:
        built = build_rtp_header(
            payload_type=8, sequence=0x1234, timestamp=0xDEADBEEF, ssrc=0x01020304
        )
        assert built == PCMA_PACKET[:12]

    def test_marker_and_csrcs(self) -> None:
        built = build_rtp_header(
            payload_type=0, sequence=1, timestamp=2, ssrc=3, marker=True, csrcs=[4, 5]
        )
        assert built == bytes([0x82, 0x80]) + struct.pack("!HIIII", 1, 2, 3, 4, 5)

    @given(
        payload_type=st.integers(0, 127),
        sequence=st.integers(0, 0xFFFF),
        timestamp=st.integers(0, 0xFFFF_FFFF),
        ssrc=st.integers(0, 0xFFFF_FFFF),
        marker=st.booleans(),
        csrcs=st.lists(st.integers(0, 0xFFFF_FFFF), max_size=15),
    )
    def test_round_trip(
        self,
        payload_type: int,
        sequence: int,
        timestamp: int,
        ssrc: int,
        marker: bool,
        csrcs: list[int],
    ) -> None:
        built = build_rtp_header(
            payload_type=payload_type,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            marker=marker,
            csrcs=csrcs,
        )
        assert parse_rtp_header(built + b"payload") == RtpHeader(
            payload_type=payload_type,
            marker=marker,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            csrc_count=len(csrcs),
            has_extension=False,
            padding=False,
            header_length=len(built),
        )

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("payload_type", 128, "RTP payload_type 128 out of range 0..127"),
            ("payload_type", -1, "RTP payload_type -1 out of range 0..127"),
            ("sequence", 0x10000, "RTP sequence 65536 out of range 0..65535"),
            ("timestamp", 1 << 32, "RTP timestamp 4294967296 out of range 0..4294967295"),
            ("ssrc", -5, "RTP ssrc -5 out of range 0..4294967295"),
        ],
    )
    def test_field_out_of_range(self, field: str, value: int, message: str) -> None:
        fields = {"payload_type": 0, "sequence": 0, "timestamp": 0, "ssrc": 0, field: value}
        with pytest.raises(RtpError, match=message.replace(".", r"\.")):
            build_rtp_header(
                payload_type=fields["payload_type"],
                sequence=fields["sequence"],
                timestamp=fields["timestamp"],
                ssrc=fields["ssrc"],
            )

    def test_too_many_csrcs(self) -> None:
        with pytest.raises(RtpError, match="Too many CSRCs: 16, at most 15"):
            build_rtp_header(payload_type=0, sequence=0, timestamp=0, ssrc=0, csrcs=[0] * 16)

    def test_bad_csrc(self) -> None:
        with pytest.raises(RtpError, match="RTP csrc 4294967296 out of range"):
            build_rtp_header(payload_type=0, sequence=0, timestamp=0, ssrc=0, csrcs=[1 << 32])

    def test_rtp_error_is_value_error(self) -> None:
        assert issubclass(RtpError, ValueError)
