"""Tests for gateway.media.jitter: the adaptive jitter buffer, driven in simulated time."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest

from gateway.media.jitter import Frame, FrameKind, JitterBuffer, JitterError, JitterStats

RATE = 8000
PTIME = 0.020
SAMPLES = 160
AUDIO, LOST, SILENCE = FrameKind.AUDIO, FrameKind.LOST, FrameKind.SILENCE


@dataclass(frozen=True)
class Sent:
    """One packet as the network delivers it."""

    seq: int
    timestamp: int
    arrival: float
    marker: bool = False
    samples: int | None = None

    @property
    def payload(self) -> bytes:
        return f"{self.seq}".encode()


def stream(
    count: int,
    *,
    first_seq: int = 0,
    first_ts: int = 0,
    start: float = 0.0,
    samples: int = SAMPLES,
    skip: Iterable[int] = (),
    jitter: Callable[[int], float] = lambda _i: 0.0,
) -> list[Sent]:
    """Packets i = 0..count-1 sent every ``samples`` at ``start``, less ``skip``."""
    skipped = set(skip)
    return [
        Sent(
            (first_seq + i) % 65536,
            (first_ts + i * samples) % (1 << 32),
            start + i * samples / RATE + jitter(i),
            samples=samples,
        )
        for i in range(count)
        if i not in skipped
    ]


def play(
    buffer: JitterBuffer,
    packets: Iterable[Sent],
    until: float,
    *,
    tick: float | None = None,
    observe: Callable[[float, JitterBuffer], None] | None = None,
) -> list[tuple[float, Frame]]:
    """Deliver packets at their arrival times and pop frames.

    With ``tick`` the playout timer fires on a fixed grid (as the pipeline's
    does) and pops until None; without, it fires at each ``next_deadline()``.
    """
    pending = sorted(packets, key=lambda p: p.arrival)
    frames: list[tuple[float, Frame]] = []
    index = 0
    ticks = 0
    while True:
        next_tick = ticks * tick if tick is not None else 0.0
        arrival = pending[index].arrival if index < len(pending) else math.inf
        deadline = buffer.next_deadline() if tick is None else next_tick
        wake = math.inf if deadline is None else deadline
        now = min(arrival, wake)
        if now > until:
            return frames
        if arrival <= wake:
            packet = pending[index]
            index += 1
            buffer.push(
                packet.seq,
                packet.timestamp,
                packet.payload,
                packet.arrival,
                marker=packet.marker,
                samples=packet.samples,
            )
            continue
        while (frame := buffer.pop(now)) is not None:
            frames.append((now, frame))
        if observe is not None:
            observe(now, buffer)
        ticks += 1


def kinds(frames: list[tuple[float, Frame]]) -> list[FrameKind]:
    return [frame.kind for _, frame in frames]


def audio(frames: list[tuple[float, Frame]]) -> list[int]:
    return [int(frame.payload) for _, frame in frames if frame.kind is AUDIO]


def fixed(delay: float, **kwargs: int) -> JitterBuffer:
    """A buffer whose delay cannot adapt: min = initial = max."""
    return JitterBuffer(
        RATE, SAMPLES, initial_delay=delay, min_delay=delay, max_delay=delay, **kwargs
    )


def accounted(stats: JitterStats) -> int:
    return (
        stats.played
        + stats.late
        + stats.duplicate
        + stats.overflow
        + stats.discarded
        + stats.buffered
    )


class TestPlayout:
    def test_nothing_before_the_first_packet(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        assert buffer.next_deadline() is None
        assert buffer.pop(100.0) is None

    def test_in_order_stream_plays_in_order_at_the_initial_delay(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        packets = stream(12, start=1.0, first_ts=5000)
        frames = play(buffer, packets, until=1.0 + 12 * PTIME + 0.039)
        assert kinds(frames) == [AUDIO] * 12
        for (when, frame), packet in zip(frames, packets, strict=True):
            assert when == pytest.approx(packet.arrival + 0.040)
            assert frame.timestamp == packet.timestamp
            assert frame.samples == SAMPLES
            assert frame.payload == packet.payload
        stats = buffer.stats
        assert (stats.received, stats.played, stats.lost, stats.concealed) == (12, 12, 0, 0)
        assert stats.delay == pytest.approx(0.040)

    def test_pop_before_the_deadline_gives_nothing(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        buffer.push(0, 0, b"a", 1.0)
        assert buffer.next_deadline() == pytest.approx(1.040)
        assert buffer.pop(1.039) is None
        frame = buffer.pop(1.040)
        assert frame is not None and frame.payload == b"a"

    def test_reordered_packets_play_in_timestamp_order(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        base = stream(6)
        # 2 overtakes 1 and 5 overtakes 4, each by 15 ms: within the 40 ms delay.
        swapped = [base[0], base[2], base[1], base[3], base[5], base[4]]
        packets = [
            Sent(p.seq, p.timestamp, b.arrival, samples=SAMPLES)
            for p, b in zip(swapped, sorted(base, key=lambda p: p.arrival), strict=True)
        ]
        frames = play(buffer, packets, until=0.2)
        assert audio(frames) == [0, 1, 2, 3, 4, 5]
        assert buffer.stats.late == 0

    def test_sequence_and_timestamp_wrap(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        packets = stream(40, first_seq=65520, first_ts=(1 << 32) - 10 * SAMPLES, skip=[25])
        frames = play(buffer, packets, until=40 * PTIME + 0.039)
        played = [frame for _, frame in frames]
        assert [int(f.payload) for f in played if f.kind is AUDIO] == [
            (65520 + i) % 65536 for i in range(40) if i != 25
        ]
        assert [f.timestamp for f in played] == [
            ((1 << 32) - 10 * SAMPLES + i * SAMPLES) % (1 << 32) for i in range(40)
        ]
        assert played[25].kind is LOST
        assert buffer.stats.lost == 1

    def test_packets_of_40_ms_with_a_20_ms_timer(self) -> None:
        # The buffer gives whole packets; the pipeline re-frames decoded PCM.
        buffer = JitterBuffer(RATE, SAMPLES)
        packets = stream(10, samples=320, skip=[4])
        frames = play(buffer, packets, until=10 * 0.040 + 0.05, tick=PTIME)
        assert [(f.kind, f.samples) for _, f in frames][:10] == [(AUDIO, 320)] * 4 + [
            (LOST, 320)
        ] + [(AUDIO, 320)] * 5
        lost = frames[4][1]
        assert lost.timestamp == 4 * 320
        assert lost.next_payload == b"5"
        # One frame every other 20 ms tick.
        times = [when for when, _ in frames[:10]]
        assert all(b - a == pytest.approx(0.040) for a, b in itertools.pairwise(times))

    def test_packets_of_10_ms_give_two_frames_per_20_ms_tick(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        packets = stream(20, samples=80)
        frames = play(buffer, packets, until=0.25, tick=PTIME)
        assert audio(frames) == list(range(20))
        per_tick: dict[float, int] = {}
        for when, _ in frames:
            per_tick[round(when, 6)] = per_tick.get(round(when, 6), 0) + 1
        assert set(list(per_tick.values())[1:-1]) == {2}


class TestLoss:
    def test_lost_packet_gives_lost_with_the_next_payload(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        frames = play(buffer, stream(6, skip=[2]), until=6 * PTIME + 0.039)
        assert kinds(frames) == [AUDIO, AUDIO, LOST, AUDIO, AUDIO, AUDIO]
        lost = frames[2][1]
        assert (lost.timestamp, lost.samples, lost.payload) == (2 * SAMPLES, SAMPLES, b"")
        assert lost.next_payload == b"3"
        stats = buffer.stats
        assert (stats.lost, stats.concealed, stats.played) == (1, 1, 5)

    def test_only_the_last_of_a_burst_gets_the_next_payload(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        frames = play(buffer, stream(6, skip=[2, 3]), until=6 * PTIME + 0.039)
        assert kinds(frames) == [AUDIO, AUDIO, LOST, LOST, AUDIO, AUDIO]
        assert [f.next_payload for _, f in frames[2:4]] == [None, b"4"]
        assert buffer.stats.lost == 2

    def test_duplicates_are_dropped_and_counted(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        packets = stream(5)
        again = [Sent(1, SAMPLES, 0.025), Sent(0, 0, 0.2), Sent(3, 3 * SAMPLES, 0.075)]
        frames = play(buffer, packets + again, until=0.2)
        assert audio(frames) == [0, 1, 2, 3, 4]
        stats = buffer.stats
        assert (stats.duplicate, stats.late, stats.received) == (3, 0, 8)
        assert accounted(stats) == stats.received

    def test_late_packet_is_counted_late_not_lost(self) -> None:
        buffer = fixed(0.040)
        packets = stream(6, jitter=lambda i: 0.050 if i == 2 else 0.0)
        frames = play(buffer, packets, until=0.15)
        assert kinds(frames) == [AUDIO, AUDIO, LOST, AUDIO, AUDIO, AUDIO]
        assert audio(frames) == [0, 1, 3, 4, 5]
        stats = buffer.stats
        assert (stats.late, stats.lost, stats.concealed) == (1, 0, 1)

    def test_packet_later_than_the_next_one_played_is_late_not_lost(self) -> None:
        buffer = fixed(0.040)
        packets = stream(6, jitter=lambda i: 0.090 if i == 2 else 0.0)
        frames = play(buffer, packets, until=0.3)
        assert audio(frames) == [0, 1, 3, 4, 5]
        stats = buffer.stats
        assert (stats.late, stats.lost) == (1, 0)

    def test_late_packet_after_its_concealed_slot_is_not_taken_for_a_pause(self) -> None:
        # Regression: seq 1 came after its slot was concealed, seq 2 is still in
        # flight when seq 3 is buffered. The one LOST frame stood for seq 1; the
        # late arrival of seq 1 must not count a second time, or the slot of seq 2
        # plays SILENCE (a sender pause) in the middle of a talkspurt.
        buffer = fixed(0.040)
        buffer.push(0, 0, b"0", 0.0)
        assert buffer.pop(0.040) == Frame(AUDIO, 0, SAMPLES, b"0")
        lost = buffer.pop(0.060)
        assert lost is not None and lost.kind is LOST
        buffer.push(1, SAMPLES, b"1", 0.061)
        buffer.push(3, 3 * SAMPLES, b"3", 0.062)
        assert buffer.next_deadline() == pytest.approx(0.080)
        frame = buffer.pop(0.080)
        assert frame == Frame(LOST, 2 * SAMPLES, SAMPLES, next_payload=b"3")
        assert buffer.pop(0.100) == Frame(AUDIO, 3 * SAMPLES, SAMPLES, b"3")
        stats = buffer.stats
        assert (stats.late, stats.lost, stats.concealed) == (1, 1, 2)

    def test_loss_accounting_matches_injected_loss_on_a_seeded_trace(self) -> None:
        for seed in range(4):
            rng = random.Random(seed)
            count = 1500
            dropped = {i for i in range(1, count - 1) if rng.random() < 0.08}
            spiky = {i for i in range(count) if rng.random() < 0.05}
            delays = [rng.uniform(0, 0.1 if i in spiky else 0.02) for i in range(count)]
            packets = stream(count, start=0.003, skip=dropped, jitter=delays.__getitem__)
            packets += [
                Sent(p.seq, p.timestamp, p.arrival + 0.01, samples=SAMPLES)
                for p in packets
                if rng.random() < 0.02
            ]
            buffer = JitterBuffer(RATE, SAMPLES)
            frames = play(buffer, packets, until=count * PTIME + 0.5)
            stats = buffer.stats
            assert stats.lost == len(dropped), seed
            assert stats.received == len(packets)
            assert accounted(stats) == stats.received
            played = audio(frames)
            assert played == sorted(set(played))
            assert stats.concealed >= stats.lost + stats.late


class TestDtx:
    def dtx_stream(self, *, gap: float, skip_after: int = 0) -> list[Sent]:
        """20 packets, a pause of ``gap`` with nothing sent, 20 more (marker on the first).

        ``skip_after`` packets at the start of the second talkspurt are lost.
        """
        first = stream(20)
        resume_ts = 20 * SAMPLES + round(gap * RATE)
        second = [
            Sent(
                20 + i,
                resume_ts + i * SAMPLES,
                20 * PTIME + gap + i * PTIME,
                marker=i == 0,
                samples=SAMPLES,
            )
            for i in range(20)
            if i >= skip_after
        ]
        return first + second

    def test_pause_in_sequence_is_silence_not_loss(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        frames = play(buffer, self.dtx_stream(gap=0.4), until=1.5)
        got = kinds(frames)
        assert audio(frames) == list(range(40))
        # Nothing after packet 19 is here yet: up to 100 ms concealed, then silence.
        assert got[20:25] == [LOST] * 5
        assert got[25] is SILENCE
        assert SILENCE not in got[:20]
        assert all(f.next_payload is None for _, f in frames[20:25])
        stats = buffer.stats
        assert (stats.lost, stats.late) == (0, 0)

    def test_pause_with_missing_sequence_numbers_is_loss(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        frames = play(buffer, self.dtx_stream(gap=0.4, skip_after=2), until=1.5)
        assert audio(frames) == list(range(20)) + list(range(22, 40))
        assert buffer.stats.lost == 2

    def test_pause_known_in_advance_plays_silence_at_once(self) -> None:
        # With 200 ms of delay the packet after a 60 ms pause is already here:
        # consecutive sequence numbers make it silence without any concealment.
        buffer = fixed(0.200)
        frames = play(buffer, self.dtx_stream(gap=0.060), until=1.05)
        got = kinds(frames)
        assert got == [AUDIO] * 20 + [SILENCE] * 3 + [AUDIO] * 20
        silence = [f for _, f in frames[20:23]]
        assert [f.timestamp for f in silence] == [20 * SAMPLES + i * SAMPLES for i in range(3)]
        stats = buffer.stats
        assert (stats.lost, stats.concealed) == (0, 0)


class TestPacketsWithoutAudio:
    """RFC 4733 events and RFC 3389 CN share the stream's sequence numbers, not its buffer."""

    def test_sequence_numbers_of_events_are_neither_lost_nor_concealed(self) -> None:
        # Audio 0-9 and 13-22 around three event packets (10-12), as a sender that
        # stops its audio while a digit's events go out: the clock moved 60 ms.
        buffer = fixed(0.200)
        first = stream(10)
        second = stream(10, first_seq=13, first_ts=13 * SAMPLES, start=13 * PTIME)
        for packet in first + second:
            if packet.seq == 13:
                for seq in (10, 11, 12):
                    buffer.skip(seq)
            buffer.push(packet.seq, packet.timestamp, packet.payload, packet.arrival)
        frames = play(buffer, [], until=0.2 + 22.5 * PTIME)
        assert kinds(frames) == [AUDIO] * 10 + [SILENCE] * 3 + [AUDIO] * 10
        stats = buffer.stats
        assert (stats.lost, stats.concealed, stats.received) == (0, 0, 20)

    def test_without_skip_the_same_numbers_are_lost(self) -> None:
        buffer = fixed(0.200)
        packets = stream(10) + stream(10, first_seq=13, first_ts=13 * SAMPLES, start=13 * PTIME)
        frames = play(buffer, packets, until=0.2 + 22.5 * PTIME)
        assert kinds(frames) == [AUDIO] * 10 + [LOST] * 3 + [AUDIO] * 10
        assert buffer.stats.lost == 3

    def test_cn_packet_before_a_pause_is_not_a_loss(self) -> None:
        # A CN packet (seq 20) after the talkspurt, then the sender is silent: the
        # first packet after the pause follows it in sequence, so the pause is silence.
        buffer = JitterBuffer(RATE, SAMPLES)
        packets = stream(20) + stream(10, first_seq=21, first_ts=40 * SAMPLES, start=40 * PTIME)
        frames: list[tuple[float, Frame]] = []
        frames += play(buffer, packets[:20], until=20 * PTIME)
        buffer.skip(20)
        frames += play(buffer, packets[20:], until=1.5)
        assert audio(frames) == list(range(20)) + list(range(21, 31))
        assert LOST not in kinds(frames)[:20]
        assert buffer.stats.lost == 0

    def test_skip_before_any_audio_or_out_of_the_stream_changes_nothing(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        buffer.skip(7)  # nothing to account yet
        frames = play(buffer, stream(5, first_seq=100), until=0.3)
        buffer.skip(30000)  # a jump out of the stream, not one of its packets
        assert audio(frames) == [100, 101, 102, 103, 104]
        with pytest.raises(JitterError, match="Sequence number 65536 is outside"):
            buffer.skip(65536)
        assert buffer.stats.lost == 0


class TestAdaptation:
    def run_jitter_then_calm(
        self, packets: list[Sent], until: float
    ) -> tuple[JitterBuffer, list[tuple[float, float]], list[tuple[float, Frame]]]:
        buffer = JitterBuffer(RATE, SAMPLES)
        delays: list[tuple[float, float]] = []
        frames = play(
            buffer,
            packets,
            until=until,
            tick=PTIME,
            observe=lambda now, b: delays.append((now, b.stats.delay)),
        )
        return buffer, delays, frames

    def test_delay_follows_uniform_jitter_and_comes_back(self) -> None:
        rng = random.Random(3)
        # 10 s of 0-80 ms uniform jitter from t = 1 s, then 25 s of a calm network.
        packets = stream(
            1800,
            start=0.005,
            jitter=lambda i: rng.uniform(0, 0.080) if 50 <= i < 550 else 0.0,
        )
        buffer, delays, frames = self.run_jitter_then_calm(packets, until=36.0)
        values = [d for _, d in delays]
        assert min(values) >= 0.020 - 1e-9
        assert max(values) <= 0.200
        during = [d for t, d in delays if 8.0 <= t <= 11.0]
        # About the 97th percentile of the spread (77.6 ms), within a frame.
        assert min(during) >= 0.060
        assert max(during) <= 0.100
        late_in_jitter = [f for t, f in frames if 6.0 <= t <= 11.0 and f.kind is LOST]
        assert len(late_in_jitter) <= 0.05 * 250
        calm = [d for t, d in delays if t >= 33.0]
        assert max(calm) <= 0.030
        stats = buffer.stats
        assert stats.lost == 0
        assert audio(frames) == sorted(audio(frames))

    def test_delay_adapts_at_talkspurts_without_cutting_speech(self) -> None:
        rng = random.Random(5)
        packets: list[Sent] = []
        seq, start = 0, 0.0
        # 1 s talkspurts and 0.5 s pauses; jitter 0-60 ms during the first 8 s.
        while start < 30.0:
            for i in range(50):
                sent = start + i * PTIME
                extra = rng.uniform(0, 0.060) if sent < 8.0 else 0.0
                packets.append(
                    Sent(seq, round(sent * RATE), sent + extra, marker=i == 0, samples=SAMPLES)
                )
                seq += 1
            start += 1.5
        buffer, delays, frames = self.run_jitter_then_calm(packets, until=31.0)
        peak = max(d for t, d in delays if t < 8.0)
        assert peak >= 0.045
        assert max(d for t, d in delays if t > 25.0) <= 0.030
        stats = buffer.stats
        # Adapting in the pauses never drops a packet of speech.
        assert (stats.discarded, stats.lost, stats.overflow) == (0, 0, 0)
        assert audio(frames) == sorted(audio(frames))

    def test_delay_stays_within_bounds_under_wild_jitter(self) -> None:
        rng = random.Random(9)
        packets = stream(600, jitter=lambda _i: rng.uniform(0, 0.5))
        buffer = JitterBuffer(RATE, SAMPLES)
        play(buffer, packets, until=13.0, tick=PTIME)
        assert buffer.stats.target_delay == pytest.approx(0.200)


class TestCapacityAndRestarts:
    def test_full_buffer_drops_the_oldest(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES, capacity=4)
        for packet in stream(6):
            buffer.push(packet.seq, packet.timestamp, packet.payload, 0.0)
        stats = buffer.stats
        assert (stats.overflow, stats.buffered) == (2, 4)
        frames = play(buffer, [], until=1.0)
        assert audio(frames) == [2, 3, 4, 5]

    def test_overflow_while_playing_skips_ahead(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES, capacity=4)
        # 3..12 arrive in one burst at 0.09 s, before slot 3 is due at 0.10 s.
        burst = [Sent(p.seq, p.timestamp, 0.09, samples=SAMPLES) for p in stream(13)[3:]]
        frames = play(buffer, stream(3) + burst, until=0.175)
        assert audio(frames) == [0, 1, 2, 9, 10, 11, 12]
        # The playout moved ahead: 9 plays in the slot 3 had.
        assert frames[3][0] == pytest.approx(0.100)
        stats = buffer.stats
        assert (stats.overflow, stats.lost, stats.concealed) == (6, 0, 0)
        assert accounted(stats) == stats.received

    def test_sequence_jump_restarts_once_confirmed(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        old = stream(10)
        new = stream(10, first_seq=30000, first_ts=9_000_000, start=10 * PTIME)
        frames = play(buffer, old + new, until=1.0)
        # The restart drops what was left of the old stream (packet 9).
        assert audio(frames) == list(range(9)) + [30000 + i for i in range(10)]
        stats = buffer.stats
        assert (stats.restarts, stats.discarded, stats.lost) == (1, 1, 0)

    def test_timestamp_running_backwards_restarts_once_confirmed(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        old = stream(10, first_ts=1_000_000)
        new = stream(10, first_seq=10, first_ts=0, start=10 * PTIME)
        frames = play(buffer, old + new, until=1.0)
        assert audio(frames) == list(range(9)) + list(range(10, 20))
        assert (buffer.stats.restarts, buffer.stats.discarded) == (1, 1)

    def test_single_stray_packet_is_discarded(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        packets = [*stream(10), Sent(40000, 123, 0.031)]
        frames = play(buffer, packets, until=1.0)
        assert audio(frames) == list(range(10))
        stats = buffer.stats
        assert (stats.discarded, stats.restarts, stats.lost) == (1, 0, 0)

    def test_reset_starts_a_new_stream(self) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        play(buffer, stream(5), until=0.065)
        assert (buffer.stats.played, buffer.stats.buffered) == (2, 2)
        buffer.reset()
        assert buffer.next_deadline() is None
        assert (buffer.stats.discarded, buffer.stats.buffered) == (2, 0)
        frames = play(buffer, stream(5, first_seq=777, first_ts=42, start=1.0), until=2.0)
        assert audio(frames) == [777 + i for i in range(5)]
        assert frames[0][0] == pytest.approx(1.040)
        assert buffer.stats.restarts == 1


class TestArguments:
    @pytest.mark.parametrize(
        ("make", "message"),
        [
            (lambda: JitterBuffer(0, SAMPLES), "clock_rate and frame_samples must be positive"),
            (lambda: JitterBuffer(RATE, -1), "clock_rate and frame_samples must be positive"),
            (
                lambda: JitterBuffer(RATE, SAMPLES, min_delay=0.05),
                r"0 < min_delay <= initial_delay <= max_delay, got 0.05, 0.04, 0.2",
            ),
            (
                lambda: JitterBuffer(RATE, SAMPLES, max_delay=0.03),
                "0 < min_delay <= initial_delay <= max_delay",
            ),
            (lambda: JitterBuffer(RATE, SAMPLES, capacity=1), "capacity must be at least 2"),
        ],
        ids=["rate", "frame", "min-above-initial", "max-below-initial", "capacity"],
    )
    def test_constructor_rejects(self, make: Callable[[], JitterBuffer], message: str) -> None:
        with pytest.raises(JitterError, match=message):
            make()

    @pytest.mark.parametrize(
        ("seq", "timestamp", "samples"),
        [(65536, 0, None), (-1, 0, None), (0, 1 << 32, None), (0, 0, 0)],
    )
    def test_push_rejects_fields_out_of_range(
        self, seq: int, timestamp: int, samples: int | None
    ) -> None:
        buffer = JitterBuffer(RATE, SAMPLES)
        with pytest.raises(JitterError, match="Packet fields out of range"):
            buffer.push(seq, timestamp, b"", 0.0, samples=samples)
        assert buffer.stats.received == 0
