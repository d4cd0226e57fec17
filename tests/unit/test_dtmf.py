"""Tests for RFC 4733 telephone-event payloads, sender and receiver (gateway.media.dtmf)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.media.dtmf import (
    DTMF_EVENT_CODES,
    MAX_DURATION,
    EventBlock,
    EventEnded,
    EventPacket,
    EventStarted,
    ReceivedEvent,
    TelephoneEventError,
    TelephoneEventReceiver,
    TelephoneEventSender,
    build_block,
    build_payload,
    digit_for_event,
    event_for_digit,
    parse_payload,
)
from gateway.media.tones import DTMF_END_LATENCY, DtmfDetector, DtmfEventKind, DtmfGenerator

PTIME = 160  # 20 ms at 8 kHz
WRAP = 1 << 32

# --- payload format (RFC 4733 2.3) -------------------------------------------


def test_block_wire_format() -> None:
    # Event 5, E bit, volume 10 (-10 dBm0), duration 1600 (200 ms at 8 kHz).
    assert build_block(5, end=True, volume=10, duration=1600) == bytes([5, 0x80 | 10, 0x06, 0x40])
    assert parse_payload(bytes([5, 0x8A, 0x06, 0x40])) == [EventBlock(5, True, 10, 1600)]
    assert build_block(255, volume=63, duration=MAX_DURATION) == bytes([255, 63, 0xFF, 0xFF])


def test_payload_round_trip_with_packed_events() -> None:
    blocks = [
        EventBlock(1, True, 10, 800),
        EventBlock(11, False, 0, 0),
        EventBlock(36, True, 63, MAX_DURATION),
    ]
    payload = build_payload(*blocks)
    assert len(payload) == 12
    assert parse_payload(payload) == blocks
    assert parse_payload(bytearray(payload)) == blocks
    assert parse_payload(memoryview(payload)[4:8]) == [blocks[1]]


def test_reserved_bit_is_ignored_on_receipt_and_zero_when_sent() -> None:
    # 2.3.3: the sender sets R to zero, the receiver ignores it.
    assert parse_payload(bytes([3, 0x40 | 7, 0, 160])) == [EventBlock(3, False, 7, 160)]
    assert parse_payload(bytes([3, 0xC0 | 7, 0, 160])) == [EventBlock(3, True, 7, 160)]
    assert build_block(3, end=True, volume=63)[1] & 0x40 == 0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "Empty telephone-event payload"),
        (b"\x01\x0a\x00", "payload of 3 bytes is not a whole number of 4-byte event reports"),
        (b"\x01\x0a\x00\xa0\x02", "payload of 5 bytes is not a whole number"),
    ],
    ids=["empty", "too-short", "trailing-byte"],
)
def test_malformed_payloads_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(TelephoneEventError, match=message):
        parse_payload(payload)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"event": 256}, "event 256 is outside 0..255"),
        ({"event": -1}, "event -1 is outside 0..255"),
        ({"event": 1, "volume": 64}, "volume 64 is outside 0..63"),
        ({"event": 1, "duration": 0x10000}, "duration 65536 is outside 0..65535"),
    ],
    ids=["event-over-255", "event-negative", "volume-over-63", "duration-over-16-bits"],
)
def test_out_of_range_fields_are_refused(fields: dict[str, int], message: str) -> None:
    with pytest.raises(TelephoneEventError, match=message):
        build_block(**fields)  # type: ignore[arg-type]


def test_empty_payload_cannot_be_built() -> None:
    with pytest.raises(TelephoneEventError, match="at least one event report"):
        build_payload()


def test_dtmf_digit_mapping() -> None:
    # RFC 4733 3.2 Table 1.
    assert [event_for_digit(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert event_for_digit("a") == 12 and event_for_digit("d") == 15
    assert [digit_for_event(code) for code in range(16)] == list("0123456789*#ABCD")
    assert digit_for_event(16) is None and digit_for_event(36) is None
    assert DTMF_EVENT_CODES["#"] == 11
    with pytest.raises(TelephoneEventError, match="Not a DTMF digit: 'E'"):
        event_for_digit("E")


# --- sender (RFC 4733 2.5.1) -------------------------------------------------


def send_digit(
    sender: TelephoneEventSender, event: int, start: int, length: int, step: int = PTIME
) -> list[EventPacket]:
    """Drive the sender frame by frame, as the pipeline does, and three intervals past the end."""
    packets = sender.begin(event, start % WRAP)
    elapsed = step
    while elapsed < length:
        packets += sender.advance((start + elapsed) % WRAP)
        elapsed += step
    packets += sender.end((start + length) % WRAP)
    for extra in range(1, 4):
        packets += sender.advance((start + length + extra * sender.packet_interval) % WRAP)
    return packets


def test_sender_packets_for_a_200_ms_digit_at_20_ms() -> None:
    sender = TelephoneEventSender(packet_interval=PTIME)
    packets = send_digit(sender, 5, 1000, 1600)
    # Nine updates (20 to 180 ms), then the end packet three times (2.5.1.4).
    assert len(packets) == 12
    assert {p.timestamp for p in packets} == {1000}
    assert [p.marker for p in packets] == [True] + [False] * 11
    assert [p.block.duration for p in packets] == [160 * k for k in range(1, 10)] + [1600] * 3
    assert [p.block.end for p in packets] == [False] * 9 + [True] * 3
    assert all(p.block.event == 5 and p.block.volume == 10 for p in packets)
    assert packets[-1].payload == packets[-2].payload == packets[-3].payload
    assert [parse_payload(p.payload) for p in packets] == [[p.block] for p in packets]
    assert not sender.busy


def test_sender_with_10_ms_frames_still_updates_per_packet_interval() -> None:
    packets = send_digit(TelephoneEventSender(packet_interval=PTIME), 1, 0, 1600, step=80)
    assert [p.block.duration for p in packets] == [160 * k for k in range(1, 10)] + [1600] * 3


def test_sender_end_repeats_wait_for_the_packet_interval() -> None:
    sender = TelephoneEventSender(packet_interval=PTIME)
    sender.begin(2, 0)
    assert sender.advance(100) == []
    first = sender.end(100)  # shorter than one interval: the end packet is the first
    assert [(p.marker, p.block.end, p.block.duration) for p in first] == [(True, True, 100)]
    assert sender.busy and sender.event is None
    assert sender.advance(200) == []
    again = sender.advance(260)
    assert [(p.marker, p.block.end, p.block.duration) for p in again] == [(False, True, 100)]
    assert sender.advance(420) == again
    assert sender.advance(580) == []


def test_sender_begin_in_the_past_reports_at_once() -> None:
    # A detected digit starts about 30 ms before the detector confirms it.
    sender = TelephoneEventSender(packet_interval=PTIME)
    assert sender.begin(9, 10_000, volume=7) == []
    packets = sender.advance(10_240)
    assert [(p.marker, p.timestamp, p.block.duration, p.block.volume) for p in packets] == [
        (True, 10_000, 240, 7)
    ]


def test_new_event_flushes_the_end_repeats_still_owed() -> None:
    sender = TelephoneEventSender(packet_interval=PTIME)
    sender.begin(1, 0)
    ended = sender.end(800)
    owed = sender.begin(2, 800)
    assert owed == [ended[0].__class__(False, 0, ended[0].payload, ended[0].block)] * 2
    packets = sender.advance(960)
    assert [(p.marker, p.timestamp, p.block.event) for p in packets] == [(True, 800, 2)]


def test_sender_splits_long_events_into_segments() -> None:
    # 2.5.1.3: at 0xFFFF the segment is reported without E and a new one
    # starts where it stopped, without the marker; here across the 32-bit wrap.
    start = WRAP - 1000
    packets = send_digit(TelephoneEventSender(packet_interval=PTIME), 11, start, 70_000)
    first_segment = [p for p in packets if p.timestamp == start]
    second = (start + MAX_DURATION) % WRAP
    second_segment = [p for p in packets if p.timestamp == second]
    assert len(first_segment) + len(second_segment) == len(packets)
    assert first_segment[-1].block.duration == MAX_DURATION
    assert not any(p.block.end for p in first_segment)
    assert [p.marker for p in packets].count(True) == 1 and packets[0].marker
    assert [p.block.duration for p in second_segment[-3:]] == [70_000 - MAX_DURATION] * 3
    assert all(p.block.end for p in second_segment[-3:])
    durations = [p.block.duration for p in second_segment]
    assert durations == sorted(durations)


def test_sender_end_never_shrinks_the_duration() -> None:
    sender = TelephoneEventSender(packet_interval=PTIME)
    sender.begin(4, 0)
    sender.advance(320)
    (final,) = sender.end(300)
    assert (final.block.end, final.block.duration) == (True, 320)


def test_sender_refuses_misuse() -> None:
    sender = TelephoneEventSender()
    with pytest.raises(TelephoneEventError, match="No event is running to end"):
        sender.end(0)
    sender.begin(1, 1000)
    with pytest.raises(TelephoneEventError, match="Event 1 is still running"):
        sender.begin(2, 1200)
    with pytest.raises(TelephoneEventError, match="Media time 900 is before the event's start"):
        sender.advance(900)
    with pytest.raises(TelephoneEventError, match="not a 32-bit RTP timestamp"):
        sender.advance(WRAP)
    with pytest.raises(TelephoneEventError, match=r"volume 64 is outside 0\.\.63"):
        TelephoneEventSender().begin(1, 0, volume=64)
    with pytest.raises(TelephoneEventError, match="packet_interval 0"):
        TelephoneEventSender(packet_interval=0)
    with pytest.raises(TelephoneEventError, match="end_repeats must be at least 1"):
        TelephoneEventSender(end_repeats=0)


# --- receiver (RFC 4733 2.5.2) -----------------------------------------------


def receive_all(
    receiver: TelephoneEventReceiver, packets: list[EventPacket], first_sequence: int = 100
) -> list[ReceivedEvent]:
    events: list[ReceivedEvent] = []
    for index, packet in enumerate(packets):
        sequence = (first_sequence + index) % 65536
        events += receiver.receive(sequence, packet.timestamp, packet.payload, marker=packet.marker)
    return events


def digit_packets(event: int, start: int, length: int) -> list[EventPacket]:
    return send_digit(TelephoneEventSender(packet_interval=PTIME), event, start, length)


def test_receiver_reports_one_start_and_one_end() -> None:
    receiver = TelephoneEventReceiver()
    events = receive_all(receiver, digit_packets(5, 1000, 1600))
    assert events == [EventStarted(5, 1000, 10), EventEnded(5, 1000, 1600, 10, True)]
    assert receiver.stale == 2  # the two end repeats
    assert receiver.current is None


def test_receiver_reports_the_start_before_the_end() -> None:
    receiver = TelephoneEventReceiver()
    packets = digit_packets(7, 0, 1600)
    assert receiver.receive(1, 0, packets[0].payload, marker=True) == [EventStarted(7, 0, 10)]
    assert receiver.current == EventStarted(7, 0, 10)
    assert receiver.receive(2, 0, packets[1].payload) == []


def test_receiver_drops_duplicated_packets() -> None:
    receiver = TelephoneEventReceiver()
    packets = digit_packets(3, 0, 800)
    doubled = [p for p in packets for _ in range(2)]
    events: list[ReceivedEvent] = []
    for index, packet in enumerate(doubled):
        events += receiver.receive(10 + index // 2, packet.timestamp, packet.payload)
    assert events == [EventStarted(3, 0, 10), EventEnded(3, 0, 800, 10, True)]
    assert receiver.duplicates == len(packets)


def test_receiver_handles_reordering() -> None:
    packets = digit_packets(8, 5000, 1600)
    order = np.random.default_rng(7).permutation(len(packets))
    receiver = TelephoneEventReceiver()
    events: list[ReceivedEvent] = []
    for index in order:
        packet = packets[int(index)]
        events += receiver.receive(200 + int(index), packet.timestamp, packet.payload)
    assert events == [EventStarted(8, 5000, 10), EventEnded(8, 5000, 1600, 10, True)]


def test_receiver_starts_an_event_whose_first_packets_were_lost() -> None:
    packets = digit_packets(4, 2000, 1600)
    events = receive_all(TelephoneEventReceiver(), packets[3:])
    # The event is known by its timestamp, not by the marker (2.5.2.1).
    assert events == [EventStarted(4, 2000, 10), EventEnded(4, 2000, 1600, 10, True)]
    only_end = receive_all(TelephoneEventReceiver(), packets[-1:])
    assert only_end == [EventStarted(4, 2000, 10), EventEnded(4, 2000, 1600, 10, True)]


def test_lost_end_packets_end_the_event_at_the_next_one() -> None:
    first = [p for p in digit_packets(1, 0, 1600) if not p.block.end]
    second = digit_packets(2, 3200, 800)
    receiver = TelephoneEventReceiver()
    events = receive_all(receiver, first + second)
    assert events == [
        EventStarted(1, 0, 10),
        EventEnded(1, 0, 1440, 10, False),  # the last duration that arrived
        EventStarted(2, 3200, 10),
        EventEnded(2, 3200, 800, 10, True),
    ]


def test_expire_ends_an_event_whose_end_never_came() -> None:
    receiver = TelephoneEventReceiver()
    receive_all(receiver, [p for p in digit_packets(6, 0, 1600) if not p.block.end])
    assert receiver.expire() == [EventEnded(6, 0, 1440, 10, False)]
    assert receiver.expire() == []
    # A late end packet of the expired event does not start it again.
    late = digit_packets(6, 0, 1600)[-1]
    assert receiver.receive(999, late.timestamp, late.payload) == []


def test_same_digit_pressed_twice_is_two_events() -> None:
    packets = digit_packets(0, 0, 800) + digit_packets(0, 1600, 800)
    events = receive_all(TelephoneEventReceiver(), packets)
    assert events == [
        EventStarted(0, 0, 10),
        EventEnded(0, 0, 800, 10, True),
        EventStarted(0, 1600, 10),
        EventEnded(0, 1600, 800, 10, True),
    ]


def test_late_packet_of_an_older_event_is_dropped() -> None:
    old = digit_packets(1, 0, 800)
    new = digit_packets(2, 1600, 800)
    receiver = TelephoneEventReceiver()
    events = receive_all(receiver, [old[0], *new[:3], old[2]])
    assert events == [
        EventStarted(1, 0, 10),
        EventEnded(1, 0, 160, 10, False),
        EventStarted(2, 1600, 10),
    ]
    assert receiver.stale == 1
    # And once the new one has ended, anything before it is stale too.
    receive_all(receiver, new[3:], first_sequence=500)
    assert receiver.receive(600, 800, build_block(9, duration=160)) == []


@pytest.mark.parametrize("lose_segment_end", [False, True])
def test_receiver_joins_the_segments_of_a_long_event(lose_segment_end: bool) -> None:
    start = WRAP - 1000
    packets = digit_packets(11, start, 70_000)
    if lose_segment_end:
        packets = [p for p in packets if p.block.duration != MAX_DURATION]
    events = receive_all(TelephoneEventReceiver(), packets)
    assert events == [EventStarted(11, start, 10), EventEnded(11, start, 70_000, 10, True)]


def test_packed_events_start_one_after_the_other() -> None:
    # 2.5.1.5: the end of digit 1 (800 units) and the start of digit 2 in one packet.
    payload = build_payload(EventBlock(1, True, 10, 800), EventBlock(2, False, 12, 160))
    receiver = TelephoneEventReceiver()
    assert receiver.receive(1, 4000, payload, marker=True) == [
        EventStarted(1, 4000, 10),
        EventEnded(1, 4000, 800, 10, True),
        EventStarted(2, 4800, 12),
    ]


def test_malformed_packet_is_refused_and_changes_nothing() -> None:
    receiver = TelephoneEventReceiver()
    with pytest.raises(TelephoneEventError, match="payload of 3 bytes"):
        receiver.receive(1, 0, b"\x01\x0a\x00")
    with pytest.raises(TelephoneEventError, match="sequence number 65536"):
        receiver.receive(65536, 0, build_block(1))
    with pytest.raises(TelephoneEventError, match="RTP timestamp -1"):
        receiver.receive(1, -1, build_block(1))
    # Sequence 1 was not used up by the refused packet.
    assert receiver.receive(1, 0, build_block(1, duration=160)) == [EventStarted(1, 0, 10)]
    assert receiver.duplicates == 0


# --- in-band tones to RFC 4733 and back --------------------------------------


def test_detected_tones_become_events_and_tones_again() -> None:
    """The interworking the pipeline does, on real tones, in 20 ms frames."""
    generator = DtmfGenerator()
    digits, lengths, gap = "159#", [800, 1280, 640, 2400], 800
    script: list[str | None] = []  # which digit, if any, each 20 ms frame carries
    for key, length in zip(digits, lengths, strict=True):
        script += [None] * (gap // PTIME) + [key] * (length // PTIME)
    script += [None] * 5
    audio = []
    for playing in script:
        if playing is None:
            generator.stop()
        else:
            generator.start(playing)
        audio.append(generator.generate(PTIME))

    detector, sender = DtmfDetector(), TelephoneEventSender(packet_interval=PTIME)
    packets: list[EventPacket] = []
    for index, frame in enumerate(audio):
        frame_end = (index + 1) * PTIME
        for tone in detector.feed(frame):
            code = event_for_digit(tone.digit)
            if tone.kind is DtmfEventKind.START:
                packets += sender.begin(code, tone.sample, volume=-tone.level_dbm0)
            else:
                packets += sender.end(tone.sample)
        # What the detector can vouch for lags the frame by its end latency.
        packets += sender.advance(max(0, frame_end - DTMF_END_LATENCY))

    received = receive_all(TelephoneEventReceiver(), packets)
    ended = [e for e in received if isinstance(e, EventEnded)]
    assert "".join(digit_for_event(e.event) or "?" for e in ended) == digits
    onset = 0
    for event, length in zip(ended, lengths, strict=True):
        onset += gap
        assert abs(event.timestamp - onset) <= 120
        assert abs(event.duration - length) <= 120
        assert event.end_seen and 7 <= event.volume <= 13
        onset += length

    # Back to tones for a leg without telephone-event, and heard again.
    playback = DtmfGenerator(max_frame_samples=4000)
    tones = b""
    cursor = 0
    for event in ended:
        tones += bytes(2 * (event.timestamp - cursor))
        playback.start(digit_for_event(event.event) or "", -event.volume)
        tones += playback.generate(event.duration)
        playback.stop()
        cursor = event.timestamp + event.duration
    tones += bytes(1600)
    listener = DtmfDetector()
    heard = [e for i in range(0, len(tones), 2 * PTIME) for e in listener.feed(tones[i : i + 320])]
    assert "".join(e.digit for e in heard if e.kind is DtmfEventKind.END) == digits
