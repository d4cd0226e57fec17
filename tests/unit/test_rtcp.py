"""Tests for gateway.media.rtcp: RTCP packets, reception/sender statistics, timing."""

from __future__ import annotations

import random
import struct

import pytest

from gateway.media.rtcp import (
    App,
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    RtcpScheduler,
    SdesChunk,
    SdesItem,
    SdesType,
    SenderInfo,
    SenderReport,
    SenderStats,
    SourceDescription,
    UnknownPacket,
    build_rtcp,
    ntp_short,
    ntp_timestamp,
    parse_rtcp,
    round_trip_time,
)

BLOCK = ReportBlock(
    ssrc=0x0A0B0C0D,
    fraction_lost=64,
    cumulative_lost=-2,
    highest_sequence=0x0001_0005,
    jitter=16,
    last_sr=0xC2A1_8000,
    delay_since_last_sr=0x0001_8000,
)
INFO = SenderInfo(
    ntp_timestamp=0xE8B5_C2A1_8000_0000,
    rtp_timestamp=123456,
    packet_count=1000,
    octet_count=160000,
)

# An SR with one report block and an SDES CNAME, as a softphone sends them,
# written out field by field.
CAPTURED = bytes.fromhex(
    "81c8000c"  # V=2 P=0 RC=1, PT=200 (SR), length 12 words (52 bytes)
    "1f2e3d4c"  # sender SSRC
    "e8b5c2a180000000"  # NTP timestamp: 3904225953.5 s
    "0001e240"  # RTP timestamp 123456
    "000003e8"  # sender's packet count 1000
    "00027100"  # sender's octet count 160000
    "0a0b0c0d"  # report block: source SSRC
    "40fffffe"  # fraction lost 64 (1/4), cumulative lost -2 (24-bit)
    "00010005"  # extended highest sequence: cycle 1, seq 5
    "00000010"  # jitter 16
    "c2a18000"  # LSR
    "00018000"  # DLSR 1.5 s
    "81ca0006"  # V=2 P=0 SC=1, PT=202 (SDES), length 6 words (28 bytes)
    "1f2e3d4c"  # chunk SSRC
    "0110" + b"user@example.com".hex() + "0000"  # CNAME, 16 bytes, end + pad
)


def rr(ssrc: int = 0x01020304, *, count: int = 0, words: int = 1, first: int = 0x80) -> bytes:
    return struct.pack("!BBHI", first | count, 201, words, ssrc)


class TestParseCaptured:
    def test_compound_sr_and_sdes(self) -> None:
        sr, sdes = parse_rtcp(CAPTURED)
        assert sr == SenderReport(ssrc=0x1F2E3D4C, sender_info=INFO, reports=(BLOCK,))
        assert isinstance(sdes, SourceDescription)
        (chunk,) = sdes.chunks
        assert chunk.ssrc == 0x1F2E3D4C
        assert chunk.cname == "user@example.com"
        assert chunk.items == (SdesItem(SdesType.CNAME, b"user@example.com"),)

    def test_building_the_same_packets_gives_the_same_bytes(self) -> None:
        packets: list[RtcpPacket] = [
            SenderReport(0x1F2E3D4C, INFO, (BLOCK,)),
            SourceDescription(
                (SdesChunk(0x1F2E3D4C, (SdesItem(SdesType.CNAME, b"user@example.com"),)),)
            ),
        ]
        assert build_rtcp(packets) == CAPTURED

    def test_lone_rr_is_accepted(self) -> None:
        # RFC 5506 reduced-size RTCP: no SDES needed.
        assert parse_rtcp(rr()) == [ReceiverReport(0x01020304)]

    def test_padding_on_the_last_packet_is_removed(self) -> None:
        padded = struct.pack("!BBHI", 0xA0, 201, 2, 7) + b"\x00\x00\x00\x04"
        assert parse_rtcp(padded) == [ReceiverReport(7)]


ROUND_TRIP: list[RtcpPacket] = [
    SenderReport(1, INFO),
    SenderReport(2, INFO, (BLOCK, BLOCK), extension=b"prof"),
    ReceiverReport(3),
    ReceiverReport(4, (BLOCK,)),
    ReceiverReport(
        5,
        (
            ReportBlock(6, 255, -0x80_0000, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF),
            ReportBlock(7, 0, 0x7F_FFFF, 0, 0, 0, 0),
        ),
    ),
    SourceDescription(()),
    SourceDescription(
        (
            SdesChunk(8, (SdesItem(SdesType.CNAME, b"a@b"),)),
            SdesChunk(
                9,
                (
                    SdesItem(SdesType.CNAME, b"gw-1"),
                    SdesItem(SdesType.TOOL, b"edgegw"),
                    SdesItem(SdesType.NOTE, b""),
                ),
            ),
            SdesChunk(10, ()),
        )
    ),
    Bye((11,)),
    Bye((12, 13), b"call ended"),
    Bye((), b"x"),
    App(3, 14, b"EDGE", b"\x00\x01\x02\x03"),
    App(0, 15, b"NONE"),
    UnknownPacket(207, 0, bytes(range(8))),
    UnknownPacket(205, 1, b""),
]


class TestRoundTrip:
    @pytest.mark.parametrize("packet", ROUND_TRIP, ids=lambda p: type(p).__name__)
    def test_each_type(self, packet: RtcpPacket) -> None:
        data = build_rtcp([packet])
        assert len(data) % 4 == 0
        assert parse_rtcp(data) == [packet]

    def test_compound_of_all(self) -> None:
        assert parse_rtcp(build_rtcp(ROUND_TRIP)) == ROUND_TRIP

    def test_sdes_items_end_with_a_null_and_pad_to_32_bits(self) -> None:
        # 4 (SSRC) + 2 + 2 ("ab") = 8: a whole word of nulls must follow.
        data = build_rtcp([SourceDescription((SdesChunk(1, (SdesItem(1, b"ab"),)),))])
        assert data[4:] == bytes.fromhex("000000010102616200000000")

    def test_bye_reason_is_length_prefixed_and_padded(self) -> None:
        data = build_rtcp([Bye((1,), b"bye")])
        assert data == bytes.fromhex("81cb00020000000103627965")


class TestMalformed:
    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (b"", "Empty RTCP packet"),
            (rr(first=0x40), "version 1, expected 2"),
            (rr(first=0x00), "version 0, expected 2"),
            (rr(words=7), "length field says 32 bytes, only 8 remain"),
            (rr() + b"\x80\xc9", "2 trailing bytes, too short for a header"),
            (bytes.fromhex("80080001deadbeef"), "packet type 8 is not an RTCP type"),
            (rr(count=1), "RR with 1 report blocks needs 28 bytes after the header, packet has 4"),
            (
                struct.pack("!BBHI", 0x80, 200, 1, 1),
                "SR with 0 report blocks needs 24 bytes after the header, packet has 4",
            ),
            (
                struct.pack("!BBHI", 0x82, 202, 1, 1),
                "SDES chunk for SSRC 0x00000001 has no end-of-list null octet",
            ),
            (
                struct.pack("!BBHI", 0x82, 202, 2, 1) + b"\x00\x00\x00\x00",
                "SDES chunk 2 of 2 needs 12 bytes after the header, packet has 8",
            ),
            (
                struct.pack("!BBHI", 0x81, 202, 2, 1) + b"\x01\x0agw",
                "SDES item type 1 for SSRC 0x00000001 says 10 bytes, 2 remain",
            ),
            (
                struct.pack("!BBHI", 0x81, 202, 3, 1) + bytes(8),
                "SDES has 4 bytes after its 1 chunks",
            ),
            (
                struct.pack("!BBHI", 0x81, 203, 2, 1) + b"\x09bye",
                "BYE reason says 9 bytes, 3 remain",
            ),
            (struct.pack("!BBH", 0x82, 203, 1) + bytes(4), "BYE with 2 sources needs 8 bytes"),
            (struct.pack("!BBHI", 0x80, 204, 1, 1), "APP needs 8 bytes after the header"),
            (
                rr(first=0xA0) + rr(),
                "RTCP packet 0 at offset 0: padding bit set on a packet that is not the last",
            ),
            (
                rr() + rr(first=0xA0, words=2) + b"\x00\x00\x00\x00",
                "RTCP packet 1 at offset 8: padding count 0 does not fit a packet body of 8 bytes",
            ),
            (
                rr(first=0xA0, words=2) + b"\x00\x00\x00\x09",
                "padding count 9 does not fit a packet body of 8 bytes",
            ),
        ],
        ids=[
            "empty",
            "version-1",
            "version-0",
            "length-beyond-packet",
            "trailing-bytes",
            "rtp-not-rtcp",
            "rr-truncated-block",
            "sr-truncated-sender-info",
            "sdes-no-terminator",
            "sdes-missing-chunk",
            "sdes-truncated-item",
            "sdes-trailing-bytes",
            "bye-truncated-reason",
            "bye-truncated-ssrcs",
            "app-too-short",
            "padding-not-last",
            "padding-count-zero",
            "padding-count-too-big",
        ],
    )
    def test_rejected_with_message(self, data: bytes, message: str) -> None:
        with pytest.raises(RtcpError, match=message):
            parse_rtcp(data)

    def test_the_failing_packet_is_named_with_its_offset(self) -> None:
        with pytest.raises(RtcpError, match=r"RTCP packet 1 at offset 8: version 3"):
            parse_rtcp(rr() + rr(first=0xC0))

    @pytest.mark.parametrize(
        ("packet", "message"),
        [
            (ReceiverReport(1, (ReportBlock(2, 256, 0, 0, 0, 0, 0),)), "fraction lost 256"),
            (
                ReceiverReport(1, (ReportBlock(2, 0, 0x80_0000, 0, 0, 0, 0),)),
                "cumulative lost 8388608 out of range -8388608..8388607",
            ),
            (ReceiverReport(1 << 32), "SSRC 4294967296 out of range"),
            (ReceiverReport(1, (BLOCK,) * 32), "count 32 out of range 0..31"),
            (App(0, 1, b"AB"), "APP name must be 4 bytes, got 2"),
            (UnknownPacket(207, 0, b"abc"), "body of 3 bytes is not 32-bit aligned"),
            (UnknownPacket(100, 0, b""), "packet type 100 out of range 192..223"),
            (Bye((1,), b"x" * 256), "BYE reason length 256"),
            (SourceDescription((SdesChunk(1, (SdesItem(0, b"x"),)),)), "SDES item type 0"),
        ],
    )
    def test_build_rejects_fields_out_of_range(self, packet: RtcpPacket, message: str) -> None:
        with pytest.raises(RtcpError, match=message):
            build_rtcp([packet])

    def test_build_needs_a_packet(self) -> None:
        with pytest.raises(RtcpError, match="at least one packet"):
            build_rtcp([])


def feed(stats: ReceptionStats, seqs: list[int]) -> list[bool]:
    return [stats.update(seq, seq * 160, seq * 0.02) for seq in seqs]


class TestReceptionStats:
    def test_probation_needs_two_sequential_packets(self) -> None:
        stats = ReceptionStats(0x55, 8000)
        assert feed(stats, [10, 12, 13, 14]) == [False, False, True, True]
        assert stats.received == 2
        assert stats.expected == 2  # counted from 13, the packet that ended probation

    def test_no_report_before_a_valid_packet(self) -> None:
        stats = ReceptionStats(0x55, 8000)
        stats.update(10, 0, 0.0)
        assert stats.report_block(1.0) is None

    def test_fraction_lost_one_in_four_is_64(self) -> None:
        # RFC 3550 A.3: 4 expected and 1 lost in the interval -> 256 / 4 = 64.
        stats = ReceptionStats(0x55, 8000)
        feed(stats, [100, 101])
        first = stats.report_block(1.0)
        assert first is not None
        assert (first.fraction_lost, first.cumulative_lost) == (0, 0)
        feed(stats, [102, 104, 105])
        block = stats.report_block(2.0)
        assert block is not None
        assert block.fraction_lost == 64
        assert block.cumulative_lost == 1
        assert block.highest_sequence == 105
        # An interval with nothing lost reports 0 again, the total stays.
        feed(stats, [106, 107])
        again = stats.report_block(3.0)
        assert again is not None
        assert (again.fraction_lost, again.cumulative_lost) == (0, 1)

    def test_duplicates_make_cumulative_lost_negative_and_fraction_zero(self) -> None:
        stats = ReceptionStats(0x55, 8000, min_sequential=1)
        feed(stats, [1, 2, 3, 3, 3])
        block = stats.report_block(1.0)
        assert block is not None
        assert (block.cumulative_lost, block.fraction_lost) == (-2, 0)

    def test_cumulative_lost_clamps_to_24_bits(self) -> None:
        stats = ReceptionStats(0x55, 8000, min_sequential=1)
        seq = 0
        for _ in range(2800):  # jumps of 2999 stay under MAX_DROPOUT: 2998 lost each
            stats.update(seq, 0, 0.0)
            seq = (seq + 2999) % 65536
        assert stats.expected - stats.received > 0x7F_FFFF
        block = stats.report_block(1.0)
        assert block is not None
        assert block.cumulative_lost == 0x7F_FFFF
        assert parse_rtcp(build_rtcp([ReceiverReport(1, (block,))]))[0] == ReceiverReport(
            1, (block,)
        )

    def test_sequence_wrap_counts_a_cycle(self) -> None:
        stats = ReceptionStats(0x55, 8000, min_sequential=1)
        assert feed(stats, [65534, 65535, 0, 1]) == [True] * 4
        assert stats.extended_max == 65536 + 1
        block = stats.report_block(1.0)
        assert block is not None
        assert block.highest_sequence == 0x0001_0001
        assert (block.cumulative_lost, block.fraction_lost) == (0, 0)

    def test_probation_passes_across_the_wrap(self) -> None:
        stats = ReceptionStats(0x55, 8000)
        assert feed(stats, [65535, 0, 1]) == [False, True, True]

    def test_jump_restarts_after_two_sequential_packets(self) -> None:
        stats = ReceptionStats(0x55, 8000, min_sequential=1)
        feed(stats, [100, 101, 102])
        assert feed(stats, [5000]) == [False]
        assert feed(stats, [5001, 5002]) == [True, True]
        assert (stats.received, stats.expected, stats.extended_max) == (2, 2, 5002)

    def test_one_stray_jump_is_ignored(self) -> None:
        stats = ReceptionStats(0x55, 8000, min_sequential=1)
        assert feed(stats, [100, 101, 40000, 102]) == [True, True, False, True]
        assert (stats.received, stats.expected) == (3, 3)

    def test_reordered_packet_within_misorder_is_counted(self) -> None:
        stats = ReceptionStats(0x55, 8000, min_sequential=1)
        assert feed(stats, [100, 102, 101, 103]) == [True] * 4
        assert (stats.received, stats.expected) == (4, 4)

    def test_jitter_of_a_known_arrival_pattern(self) -> None:
        # RFC 3550 A.8 at 8 kHz. Transit (arrival*8000 - ts): 0, 0, 40, 0, 0, so
        # |D| = 0, 40, 40, 0 and J = 0, 2.5, 4.84375, 4.541015625.
        stats = ReceptionStats(0x55, 8000, min_sequential=1)
        for seq, arrival in enumerate([0.000, 0.020, 0.045, 0.060, 0.080]):
            stats.update(seq, seq * 160, arrival)
        assert stats.jitter == pytest.approx(4.541015625)
        block = stats.report_block(1.0)
        assert block is not None
        assert block.jitter == 4

    def test_jitter_across_timestamp_wrap(self) -> None:
        stats = ReceptionStats(0x55, 8000, min_sequential=1)
        start = (1 << 32) - 320
        for seq in range(6):
            stats.update(seq, (start + seq * 160) % (1 << 32), seq * 0.020)
        assert stats.jitter == pytest.approx(0.0, abs=1e-6)

    def test_lsr_and_dlsr_from_the_last_sr(self) -> None:
        stats = ReceptionStats(0x1F2E3D4C, 8000)
        feed(stats, [1, 2])
        block = stats.report_block(5.0)
        assert block is not None
        assert (block.last_sr, block.delay_since_last_sr) == (0, 0)
        stats.on_sender_report(SenderReport(0x1F2E3D4C, INFO), arrival=10.0)
        block = stats.report_block(11.5)
        assert block is not None
        assert block.last_sr == 0xC2A1_8000  # middle 32 bits of 0xe8b5c2a1_80000000
        assert block.delay_since_last_sr == 98304  # 1.5 s in 1/65536 s

    def test_sr_from_another_source_is_refused(self) -> None:
        stats = ReceptionStats(1, 8000)
        with pytest.raises(ValueError, match="SR from SSRC 0x00000002"):
            stats.on_sender_report(SenderReport(2, INFO), arrival=0.0)


class TestTimestampsAndRtt:
    def test_ntp_timestamp_of_unix_times(self) -> None:
        assert ntp_timestamp(0.0) == 2_208_988_800 << 32
        assert ntp_timestamp(1.5) == (2_208_988_801 << 32) | 0x8000_0000
        assert ntp_short(0xE8B5_C2A1_8000_0000) == 0xC2A1_8000

    def test_rtt_of_the_rfc_example(self) -> None:
        # RFC 3550 6.4.1 figure 2: A 0xb710:8000, LSR 0xb705:2000, DLSR 0x0005:4000
        # -> 0x0006:2000, 6.125 s.
        block = ReportBlock(1, 0, 0, 0, 0, 0xB705_2000, 0x0005_4000)
        rtt = round_trip_time(block, 0xB710_8000 << 16)
        assert rtt == 0x0006_2000
        assert rtt / 65536 == 6.125

    def test_rtt_across_the_ntp_short_wrap(self) -> None:
        block = ReportBlock(1, 0, 0, 0, 0, 0xFFFF_0000, 0x0000_8000)  # LSR, DLSR 0.5 s
        assert round_trip_time(block, 0x0001_0000 << 16) == 0x0001_8000  # 1.5 s

    def test_no_rtt_without_lsr_or_when_negative(self) -> None:
        assert round_trip_time(ReportBlock(1, 0, 0, 0, 0, 0, 0), 1 << 48) is None
        block = ReportBlock(1, 0, 0, 0, 0, 0x0010_0000, 0x0001_0000)
        assert round_trip_time(block, 0x0010_8000 << 16) is None


class TestSenderStats:
    def test_counts_and_timestamp_mapping(self) -> None:
        sender = SenderStats(0xABCD, 8000)
        assert not sender.has_sent
        for index in range(3):
            sender.on_sent(1000 + index * 160, 160, now=5.0 + index * 0.02)
        assert sender.has_sent
        report = sender.sender_report(now=5.54, wallclock=1.5, reports=[BLOCK])
        assert report.ssrc == 0xABCD
        assert report.reports == (BLOCK,)
        # Last packet ts 1320 at 5.04 s; 0.5 s later at 8 kHz is 4000 more.
        assert report.sender_info == SenderInfo(
            ntp_timestamp=(2_208_988_801 << 32) | 0x8000_0000,
            rtp_timestamp=5320,
            packet_count=3,
            octet_count=480,
        )

    def test_timestamp_wraps(self) -> None:
        sender = SenderStats(1, 48000)
        sender.on_sent(0xFFFF_FF00, 100, now=0.0)
        assert sender.sender_info(now=0.01, wallclock=0.0).rtp_timestamp == 480 - 256


class _Fixed(random.Random):
    """A random source pinned to one value, so the interval is exact."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


COMPENSATION = 2.718281828459045 - 1.5


class TestScheduler:
    def test_fixed_interval(self) -> None:
        sched = RtcpScheduler(10.0, fixed_interval=1.0)
        assert sched.next_report == 11.0
        assert not sched.poll(10.5)
        assert sched.poll(11.0)
        sched.sent(100, 11.0)
        assert sched.next_report == 12.0

    def test_minimum_halved_before_the_first_report(self) -> None:
        sched = RtcpScheduler(0.0, rng=_Fixed(0.5))
        # 2.5 s minimum, factor 1.0, divided by e - 3/2.
        assert sched.next_report == pytest.approx(2.5 / COMPENSATION)
        assert sched.poll(sched.next_report)
        sched.sent(100, sched.next_report)
        assert sched.next_report - 2.5 / COMPENSATION == pytest.approx(5.0 / COMPENSATION)

    def test_randomised_between_half_and_one_and_a_half(self) -> None:
        sched = RtcpScheduler(0.0, rng=random.Random(7))
        sched.sent(100, 0.0)
        intervals = [sched.interval(members=2, senders=1, we_sent=True) for _ in range(200)]
        assert min(intervals) >= 5.0 * 0.5 / COMPENSATION
        assert max(intervals) <= 5.0 * 1.5 / COMPENSATION
        assert max(intervals) - min(intervals) > 2.0

    def test_bandwidth_share_above_the_minimum(self) -> None:
        # 8 kb/s session -> 50 octets/s of RTCP; 1000-octet reports, 2 members of
        # whom 1 sends (not <= 25 %, so no sender share): 1000 * 2 / 50 = 40 s.
        sched = RtcpScheduler(0.0, session_bandwidth=8000, initial_size=1000, rng=_Fixed(0.5))
        assert sched.interval(members=2, senders=1, we_sent=True) == pytest.approx(
            40 / COMPENSATION
        )
        # 8 members, 1 sender: the sender gets 25 % for itself alone.
        assert sched.interval(members=8, senders=1, we_sent=True) == pytest.approx(
            1000 * 1 / 12.5 / COMPENSATION
        )
        # A receiver shares 75 % with the 6 other receivers.
        assert sched.interval(members=8, senders=1, we_sent=False) == pytest.approx(
            1000 * 7 / 37.5 / COMPENSATION
        )

    def test_reconsideration_reschedules_when_members_grow(self) -> None:
        # 50-octet reports over 50 octets/s for 2 members: 2 s, under the minimum.
        sched = RtcpScheduler(0.0, session_bandwidth=8000, initial_size=50, rng=_Fixed(0.5))
        first = sched.next_report
        assert first == pytest.approx(2.5 / COMPENSATION)
        assert not sched.poll(first, members=20, senders=1)
        assert sched.next_report > first

    def test_average_size_follows_packets(self) -> None:
        sched = RtcpScheduler(0.0, initial_size=100)
        sched.received(260)
        assert sched.avg_size == 110.0
