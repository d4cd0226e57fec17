"""Tests for gateway.media.transcode and gateway.media.rtcp_session, sans-IO on a fake clock.

A test sender encodes a signal (a 1 kHz sine, or espeak speech) with the real codecs
into RTP packets with arrival times; `drive` plays the part of the relay's playout task:
it pushes each packet at its arrival time and pulls at each deadline the transcoder
names. What comes out is checked as RTP (count per second, timestamps in the target's
clock, sequence, SSRC, payload type, marker) and as audio, decoded by a fresh decoder
of the target codec (frequency, level, PESQ).
"""

from __future__ import annotations

import itertools
import math
import random
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from gateway.calls.negotiation import Codec
from gateway.media.codecs import AudioCodec, OpusSettings, make_codec, make_pair
from gateway.media.g711 import G711Codec
from gateway.media.jitter import Frame
from gateway.media.rtcp import (
    ReceiverReport,
    ReportBlock,
    SenderInfo,
    SenderReport,
    SourceDescription,
    build_rtcp,
    ntp_short,
    ntp_timestamp,
    parse_rtcp,
)
from gateway.media.rtcp_session import LegRtcp
from gateway.media.rtp import RtpHeader, parse_rtp_header
from gateway.media.transcode import JitterSettings, StreamFormat, Transcoder
from tests.speech import (
    Audio,
    dominant_frequency,
    pesq_detail,
    read_wav,
    reference_speech,
    rms_dbov,
    speech_tools_missing,
)

CODECS = {
    "PCMA": Codec("PCMA", 8, 8000),
    "PCMU": Codec("PCMU", 0, 8000),
    "G722": Codec("G722", 9, 8000),
    "G729": Codec("G729", 18, 8000, fmtp="annexb=no"),
    "opus": Codec("opus", 111, 48000, 2, "useinbandfec=1"),
}
TELEPHONE_EVENT = 101
COMFORT_NOISE = 13
TONE_HZ = 1000.0
TONE_DBOV = -16.0
SEED = 20240607

needs_speech = pytest.mark.skipif(
    speech_tools_missing() is not None, reason=f"reference speech: {speech_tools_missing()}"
)


# The gateway encodes with the config's defaults; the app as baresip sets up libopus
# (32 kb/s, complexity 10, FEC sized for 5 % loss).
GATEWAY_OPUS = OpusSettings()
APP_OPUS = OpusSettings(bitrate=32000, complexity=10, fec=True, packet_loss_percent=5)


def codec(name: str, opus: OpusSettings = GATEWAY_OPUS) -> AudioCodec:
    return make_codec(CODECS[name], opus)


def tone(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    amplitude = 32768 * math.sqrt(2) * 10 ** (TONE_DBOV / 20)
    return np.round(amplitude * np.sin(2 * math.pi * TONE_HZ * t)).astype("<i2")


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    header = struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, ts, ssrc)
    return header + payload


@dataclass
class Sender:
    """A peer encoding PCM into RTP packets of one codec at one ptime."""

    name: str
    ptime: int = 20
    ssrc: int = 0x5EED
    seq: int = 4000
    ts: int = 90000
    codec: AudioCodec = field(init=False)

    def __post_init__(self) -> None:
        self.codec = codec(self.name, APP_OPUS)

    @property
    def pt(self) -> int:
        return CODECS[self.name].payload_type

    def packets(self, signal: np.ndarray) -> list[bytes]:
        """One packet per ptime of ``signal`` (at the codec's pcm rate)."""
        step = self.codec.samples(self.ptime)
        ts_step = self.codec.rtp_clock * self.ptime // 1000
        out = []
        for start in range(0, len(signal) - step + 1, step):
            payload = self.codec.encode(signal[start : start + step].tobytes())
            out.append(rtp(self.pt, self.seq, self.ts, self.ssrc, payload))
            self.seq = (self.seq + 1) & 0xFFFF
            self.ts = (self.ts + ts_step) & 0xFFFF_FFFF
        return out


def timed(packets: Sequence[bytes], ptime: int, start: float = 0.0) -> list[tuple[float, bytes]]:
    """Arrival times of packets sent every ``ptime`` ms without network delay."""
    return [(start + i * ptime / 1000, packet) for i, packet in enumerate(packets)]


def drive(
    transcoder: Transcoder, arrivals: Iterable[tuple[float, bytes]], until: float
) -> list[tuple[float, bytes]]:
    """Push each packet at its arrival, pull at each deadline, up to ``until`` (seconds)."""
    queue = sorted(arrivals, key=lambda item: item[0])
    out: list[tuple[float, bytes]] = []
    index = 0
    while True:
        arrival = queue[index][0] if index < len(queue) else math.inf
        deadline = transcoder.next_deadline()
        due = math.inf if deadline is None else deadline
        now = min(arrival, due)
        if now > until:
            return out
        if due <= arrival:
            out += [(now, packet) for packet in transcoder.pull(now)]
        else:
            transcoder.push(queue[index][1], now)
            index += 1


def make(
    source: str,
    target: str,
    *,
    in_ptime: int = 20,
    out_ptime: int = 20,
    jitter: JitterSettings | None = None,
) -> Transcoder:
    """One direction as a call sets it up (make_pair: Opus at the other leg's rate)."""
    decoder, encoder = make_pair(CODECS[source], CODECS[target], GATEWAY_OPUS)
    return Transcoder(
        decoder,
        encoder,
        StreamFormat(CODECS[source].payload_type, in_ptime, TELEPHONE_EVENT, COMFORT_NOISE),
        StreamFormat(CODECS[target].payload_type, out_ptime),
        jitter=jitter,
        rng=random.Random(SEED),
    )


def headers(out: Sequence[tuple[float, bytes]]) -> list[RtpHeader]:
    parsed = [parse_rtp_header(packet) for _, packet in out]
    assert all(h is not None for h in parsed)
    return [h for h in parsed if h is not None]


def decode_output(name: str, out: Sequence[tuple[float, bytes]]) -> Audio:
    decoder = codec(name)
    pcm = b"".join(decoder.decode(packet[12:]) for _, packet in out)
    return Audio(np.frombuffer(pcm, "<i2").astype(np.float64), decoder.pcm_rate)


def check_stream(
    out: Sequence[tuple[float, bytes]], target: str, packet_ms: int, transcoder: Transcoder
) -> list[RtpHeader]:
    """One SSRC, our PT, sequence +1 and timestamps +packet time in the target's clock."""
    found = headers(out)
    clock = CODECS[target].clock_rate
    step = clock * packet_ms // 1000
    assert {h.ssrc for h in found} == {transcoder.ssrc}
    assert {h.payload_type for h in found} == {CODECS[target].payload_type}
    for before, after in itertools.pairwise(found):
        assert after.sequence == (before.sequence + 1) & 0xFFFF
        assert after.timestamp == (before.timestamp + step) & 0xFFFF_FFFF
    assert found[0].marker
    assert not any(h.marker for h in found[1:])
    return found


def steady(audio: Audio, skip: float = 0.1) -> Audio:
    """The audio without its first ``skip`` seconds and the fade into silence at the end."""
    samples = audio.samples[round(skip * audio.rate) :]
    loud = np.nonzero(np.abs(samples) > 200)[0]
    end = int(loud[-1]) - round(0.12 * audio.rate) if len(loud) else len(samples)
    return Audio(samples[:end], audio.rate)


# ---- the sine through every pair ------------------------------------------------------------

PAIRS = [
    ("opus", "PCMA"),
    ("PCMA", "opus"),
    ("G722", "PCMU"),
    ("PCMU", "G722"),
    ("G729", "opus"),
    ("opus", "G729"),
]


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{s}-{t}" for s, t in PAIRS])
def test_sine_goes_through_with_its_frequency_and_level(source: str, target: str) -> None:
    sender = Sender(source)
    transcoder = make(source, target)
    packets = sender.packets(tone(sender.codec.pcm_rate, 2.0))
    out = drive(transcoder, timed(packets, 20), until=3.0)
    check_stream(out, target, 20, transcoder)
    sent_at = [t for t, _ in out]
    per_second = sum(1 for t in sent_at if 0.5 <= t < 1.5)
    assert per_second == 50
    # Every 20 ms of input comes out (the first after the 30 ms buffer delay), then
    # at most 100 ms concealed before the sender's pause is known...
    talk = [item for item in out if item[0] < 2.03 + 0.1]
    assert 100 <= len(talk) <= 105
    audio = steady(decode_output(target, talk))
    assert dominant_frequency(audio) == pytest.approx(TONE_HZ, abs=5)
    assert rms_dbov(audio) == pytest.approx(TONE_DBOV, abs=1.5)
    # ...then the pause is comfort noise, no louder than -40 dBov, as audio: the
    # target did not negotiate CN.
    pause = [item for item in out if item[0] >= 2.03 + 0.12]
    assert len(pause) >= 40
    noise = decode_output(target, pause)
    assert -48 <= rms_dbov(noise) <= -39
    stats = transcoder.stats
    assert (stats.packets_in, stats.decode_errors, stats.malformed) == (100, 0, 0)
    assert stats.noise_frames >= 40


def test_g722_timestamps_count_8000_per_second_for_16000_samples() -> None:
    transcoder = make("PCMU", "G722")
    out = drive(transcoder, timed(Sender("PCMU").packets(tone(8000, 0.5)), 20), until=1.0)
    found = check_stream(out, "G722", 20, transcoder)
    assert all(len(packet) - 12 == 160 for _, packet in out)  # 320 samples, 160 octets
    assert (found[1].timestamp - found[0].timestamp) % (1 << 32) == 160


@pytest.mark.parametrize(
    ("source", "target", "in_ptime", "out_ptime"),
    [("opus", "PCMA", 20, 30), ("PCMA", "PCMU", 40, 20), ("PCMU", "G729", 20, 30)],
    ids=["opus20-pcma30", "pcma40-pcmu20", "pcmu20-g729-30"],
)
def test_ptime_conversion(source: str, target: str, in_ptime: int, out_ptime: int) -> None:
    sender = Sender(source, ptime=in_ptime)
    transcoder = make(source, target, in_ptime=in_ptime, out_ptime=out_ptime)
    packets = sender.packets(tone(sender.codec.pcm_rate, 2.4))
    out = drive(transcoder, timed(packets, in_ptime), until=3.5)
    found = check_stream(out, target, out_ptime, transcoder)
    target_samples = CODECS[target].clock_rate * out_ptime // 1000
    assert all(len(codec(target).decode(p[12:])) == 2 * target_samples for _, p in out)
    per_second = sum(1 for t, _ in out if 0.6 <= t < 1.8) / 1.2
    assert per_second == pytest.approx(1000 / out_ptime, abs=1)
    assert len(found) >= 2400 // out_ptime
    audio = steady(decode_output(target, out))
    assert dominant_frequency(audio) == pytest.approx(TONE_HZ, abs=5)


def test_opus_sends_20ms_for_a_30ms_ptime() -> None:
    transcoder = make("PCMA", "opus", out_ptime=30)
    assert transcoder.packet_ms == 20
    out = drive(transcoder, timed(Sender("PCMA").packets(tone(8000, 0.6)), 20), until=1.0)
    check_stream(out, "opus", 20, transcoder)


# ---- loss, reordering, jitter, restarts -----------------------------------------------------


def lossy(arrivals: list[tuple[float, bytes]], share: float, seed: int = SEED) -> list[int]:
    """Indexes of packets to drop: ``share`` of them at random, never the first few."""
    rng = random.Random(seed)
    return [i for i in range(5, len(arrivals)) if rng.random() < share]


@pytest.mark.parametrize(("source", "target"), [("opus", "PCMA"), ("PCMA", "opus")])
def test_five_percent_loss_is_concealed_without_gaps(source: str, target: str) -> None:
    sender = Sender(source)
    transcoder = make(source, target)
    arrivals = timed(sender.packets(tone(sender.codec.pcm_rate, 4.0)), 20)
    dropped = lossy(arrivals, 0.05)
    assert 6 <= len(dropped) <= 16
    kept = [item for i, item in enumerate(arrivals) if i not in set(dropped)]
    out = drive(transcoder, kept, until=5.0)
    found = check_stream(out, target, 20, transcoder)  # no timestamp jump: no gap
    assert len(found) >= 200
    stats = transcoder.stats
    assert transcoder.snapshot()["lost"] == len(dropped)
    assert stats.concealed + stats.recovered >= len(dropped)
    audio = steady(decode_output(target, out))
    assert dominant_frequency(audio) == pytest.approx(TONE_HZ, abs=5)
    assert rms_dbov(audio) == pytest.approx(TONE_DBOV, abs=2.0)


def test_reordered_packets_play_in_timestamp_order() -> None:
    sender = Sender("PCMA")
    signal = tone(8000, 2.0)
    arrivals = timed(sender.packets(signal), 20)
    # Swap every fourth pair: the later packet overtakes by 20 ms.
    shuffled = list(arrivals)
    for i in range(10, len(shuffled) - 1, 4):
        (t1, p1), (t2, p2) = shuffled[i], shuffled[i + 1]
        shuffled[i], shuffled[i + 1] = (t1, p2), (t2, p1)
    transcoder = make("PCMA", "PCMU")
    out = drive(transcoder, shuffled, until=3.0)
    check_stream(out, "PCMU", 20, transcoder)
    snapshot = transcoder.snapshot()
    assert (snapshot["lost"], snapshot["late"]) == (0, 0)
    # G.711 both ways is sample for sample: the output is the input, in order.
    decoded = decode_output("PCMU", out).samples
    law = G711Codec("PCMA", max_samples=len(signal))
    reference = np.frombuffer(law.decode(law.encode(signal.tobytes())), "<i2")
    start = int(np.argmax(np.abs(decoded) > 0))
    # Only the µ-law step (at most 128 at this level) between what went in and came out.
    assert np.max(np.abs(decoded[start : start + 15000] - reference[:15000])) <= 128


def jittery(seconds: float, spread: float, seed: int) -> list[tuple[float, bytes]]:
    rng = random.Random(seed)
    packets = Sender("opus").packets(tone(48000, seconds))
    return [(t + rng.uniform(0.0, spread), p) for t, p in timed(packets, 20)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_jitter_up_to_60ms_is_learnt_in_the_first_second(seed: int) -> None:
    arrivals = jittery(4.0, 0.060, seed)
    transcoder = make("opus", "PCMA")  # starts at 30 ms: below the jitter
    learning = drive(transcoder, [a for a in arrivals if a[0] < 1.0], until=1.0)
    late_while_learning = transcoder.snapshot()["late"]
    out = drive(transcoder, [a for a in arrivals if a[0] >= 1.0], until=5.0)
    snapshot = transcoder.snapshot()
    assert late_while_learning <= 15
    # The buffer aims at the 97th percentile of the delay: a few percent may still come
    # late (and are concealed), uniform jitter being the worst case.
    assert snapshot["late"] - late_while_learning <= 0.04 * 150
    assert snapshot["lost"] == 0
    # Once learnt, playout is continuous (late packets early on were concealed, so the
    # first second may hold a pause: see the report on gateway.media.jitter).
    found = headers(out)
    assert not any(h.marker for h in found)
    for before, after in itertools.pairwise(found):
        assert after.timestamp == (before.timestamp + 160) & 0xFFFF_FFFF
    assert len(learning) >= 45
    assert 0.05 <= snapshot["buffer_delay"] <= 0.09
    assert snapshot["jitter"] > 0.01


def test_jitter_up_to_60ms_with_a_buffer_started_at_60ms_loses_nothing() -> None:
    transcoder = make("opus", "PCMA", jitter=JitterSettings(initial=0.06))
    out = drive(transcoder, jittery(4.0, 0.060, SEED), until=5.0)
    check_stream(out, "PCMA", 20, transcoder)
    snapshot = transcoder.snapshot()
    assert (snapshot["lost"], snapshot["late"]) == (0, 0)
    # Every packet played, or one was dropped to bring the delay down to the target.
    assert transcoder.stats.decoded + snapshot["discarded"] == 200


def test_ssrc_change_restarts_the_buffer_and_the_output_goes_on() -> None:
    first, second = Sender("PCMA"), Sender("PCMA", ssrc=0xBEEF, seq=60000, ts=7)
    arrivals = timed(first.packets(tone(8000, 1.0)), 20)
    arrivals += timed(second.packets(tone(8000, 1.0)), 20, start=1.0)
    transcoder = make("PCMA", "opus")
    out = drive(transcoder, arrivals, until=3.0)
    found = headers(out)
    assert {h.ssrc for h in found} == {transcoder.ssrc}
    for before, after in itertools.pairwise(found):
        assert after.sequence == (before.sequence + 1) & 0xFFFF
        assert 0 < (after.timestamp - before.timestamp) % (1 << 32) < 48000
    assert transcoder.stats.ssrc_changes == 1
    assert transcoder.stats.decoded >= 95
    assert transcoder.snapshot()["source_ssrc"] == 0xBEEF
    audio = steady(decode_output("opus", out))
    assert dominant_frequency(audio) == pytest.approx(TONE_HZ, abs=5)


def paused_talk() -> list[tuple[float, bytes]]:
    """600 ms of tone, 500 ms of DTX (the sequence goes on, the clock moved), 600 ms more."""
    sender = Sender("PCMA")
    talk = timed(sender.packets(tone(8000, 0.6)), 20)
    sender.ts += 8000 * 500 // 1000
    return talk + timed(sender.packets(tone(8000, 0.6)), 20, start=1.1)


def test_pause_toward_a_cn_target_sends_cn_then_marks_the_next_packet_and_keeps_time() -> None:
    decoder, encoder = make_pair(CODECS["PCMA"], CODECS["PCMU"], GATEWAY_OPUS)
    transcoder = Transcoder(
        decoder,
        encoder,
        StreamFormat(8, 20, TELEPHONE_EVENT, COMFORT_NOISE),
        StreamFormat(0, 30, comfort_noise=COMFORT_NOISE),
        rng=random.Random(SEED),
    )
    out = drive(transcoder, paused_talk(), until=2.5)
    every = headers(out)
    assert all(b.sequence == (a.sequence + 1) & 0xFFFF for a, b in itertools.pairwise(every))
    cn = [(t, h) for (t, _), h in zip(out, every, strict=True) if h.payload_type == COMFORT_NOISE]
    found = [h for h in every if h.payload_type == 0]
    markers = [i for i, h in enumerate(found) if h.marker]
    assert markers[0] == 0 and len(markers) == 2
    resumed = markers[1]
    # 600 ms of talk, then concealment (the buffer cannot tell a pause from a loss for
    # 100 ms) until G.711's concealer has faded under the background (50 ms): 660 ms in
    # 30 ms packets, the last one padded; the rest of it counts as the pause.
    assert resumed == 22
    assert transcoder.stats.concealed == 5 + 5  # and 100 ms again after the end
    # The resumed talk starts 1100 ms into the source's timeline, the last packet before
    # it at 630 ms: 470 ms at 8 kHz, give or take what the buffer re-anchored (<= 20 ms).
    jump = (found[resumed].timestamp - found[resumed - 1].timestamp) % (1 << 32)
    assert abs(jump - 3760) <= 160
    # The pause: one CN packet where the audio stopped (none carries the marker), none
    # while the talk goes on, and after the end of the talk one every 500 ms.
    first_cn = cn[0][1]
    assert not any(h.marker for _, h in cn)
    assert (first_cn.timestamp - found[resumed - 1].timestamp) % (1 << 32) == 240
    during = [t for t, _ in cn if t < out[every.index(found[resumed])][0]]
    assert len(during) == 1
    after = [t for t, _ in cn if t > 1.8]
    assert all(0.49 <= b - a <= 0.51 for a, b in itertools.pairwise(after))
    assert transcoder.stats.comfort_noise_sent == len(cn)
    # Only the tone's own level was heard, so the CN level is capped at -40 dBov.
    assert {packet[12] for _, packet in out if packet[1] & 0x7F == COMFORT_NOISE} == {40}


def test_pause_toward_a_target_without_cn_is_filled_with_noise() -> None:
    transcoder = make("PCMA", "PCMU", out_ptime=30)
    out = drive(transcoder, paused_talk(), until=2.5)
    found = check_stream(out, "PCMU", 30, transcoder)  # continuous: no marker, no jump
    assert len(found) >= 2400 // 30 - 2
    assert transcoder.stats.noise_frames >= 15
    decoded = decode_output("PCMU", out).samples
    # Where the 100 ms of concealment ends and the noise begins, nothing clicks: the
    # largest step there is within what the noise itself makes.
    pause = decoded[round(0.8 * 8000) : round(1.05 * 8000)]
    assert -46 <= rms_dbov(Audio(pause, 8000)) <= -39
    assert np.max(np.abs(np.diff(pause))) < 2500


# ---- what is not audio -----------------------------------------------------------------------


def test_other_payload_types_go_to_their_hooks_or_are_dropped() -> None:
    transcoder = make("PCMA", "PCMU")
    transcoder.push(rtp(TELEPHONE_EVENT, 1, 0, 5, bytes([1, 0x8A, 0, 160])), 0.0)
    transcoder.push(rtp(COMFORT_NOISE, 2, 0, 5, bytes([40])), 0.0)
    transcoder.push(rtp(96, 3, 0, 5, bytes(20)), 0.0)
    stats = transcoder.stats
    assert (stats.telephone_events, stats.comfort_noise, stats.unknown_payload_type) == (1, 1, 1)
    assert stats.packets_in == 0
    assert transcoder.next_deadline() is None  # nothing reached the jitter buffer


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x80\x08\x00",  # shorter than the fixed header
        b"\x40" + bytes(171),  # version 1
        rtp(8, 1, 0, 5, b""),  # no payload: no duration
        bytes([0xA0]) + rtp(8, 1, 0, 5, bytes(160))[1:-1] + b"\xff",  # padding past the end
        bytes([0xA0]) + rtp(8, 1, 0, 5, bytes(160))[1:-1] + b"\x00",  # padding count 0
        rtp(8, 1, 0, 5, bytes(2000)),  # 250 ms of G.711: longer than any packet
    ],
    ids=["empty", "short", "version-1", "no-payload", "padding-overrun", "padding-zero", "huge"],
)
def test_malformed_packets_are_counted_and_dropped(packet: bytes) -> None:
    transcoder = make("PCMA", "PCMU")
    transcoder.push(packet, 0.0)
    assert (transcoder.stats.malformed, transcoder.stats.packets_in) == (1, 0)
    assert transcoder.next_deadline() is None


def test_padding_is_stripped() -> None:
    transcoder = make("PCMA", "PCMU")
    payload = codec("PCMA").encode(tone(8000, 0.02).tobytes())
    padded = bytes([0xA0]) + rtp(8, 1, 0, 5, payload)[1:] + b"\x00\x00\x03"
    transcoder.push(padded, 0.0)
    out = drive(transcoder, [], until=0.1)
    assert len(out[0][1]) == 12 + 160


def test_corrupt_opus_payload_is_concealed() -> None:
    sender = Sender("opus")
    packets = sender.packets(tone(48000, 0.4))
    broken = bytearray(packets[8])
    broken[12:] = bytes([0xFF]) * (len(broken) - 12)  # a TOC of code 3 with an impossible count
    packets[8] = bytes(broken)
    transcoder = make("opus", "PCMA")
    out = drive(transcoder, timed(packets, 20), until=1.0)
    check_stream(out, "PCMA", 20, transcoder)
    assert transcoder.stats.malformed + transcoder.stats.decode_errors == 1


def test_pcm_taps_see_every_frame_and_may_replace_it() -> None:
    seen: list[tuple[int, int]] = []

    def listen(pcm: bytes, timestamp: int) -> bytes:
        seen.append((len(pcm), timestamp))
        return pcm

    def mute(pcm: bytes, timestamp: int) -> bytes:
        return bytes(len(pcm))

    sender = Sender("opus")
    transcoder = make("opus", "PCMA")
    transcoder.pcm_taps += [listen, mute]
    out = drive(transcoder, timed(sender.packets(tone(48000, 0.4)), 20), until=0.8)
    # Decoded PCM (Opus runs at the G.711 side's 8 kHz), with the source's RTP timestamp.
    assert seen[0] == (2 * 160, 90000)
    assert [ts for _, ts in seen[:3]] == [90000, 90960, 91920]
    # A-law has no zero: silence decodes to +-8.
    assert np.max(np.abs(decode_output("PCMA", out).samples)) == 8


def test_silence_hook_fills_a_pause() -> None:
    class Filling(Transcoder):
        def silence(self, frame: Frame) -> bytes | None:
            return bytes(2 * frame.samples)

    sender = Sender("PCMA")
    talk = timed(sender.packets(tone(8000, 0.4)), 20)
    sender.ts += 8000 * 400 // 1000
    talk += timed(sender.packets(tone(8000, 0.4)), 20, start=0.8)
    transcoder = Filling(
        codec("PCMA"), codec("PCMU"), StreamFormat(8), StreamFormat(0), rng=random.Random(SEED)
    )
    out = drive(transcoder, talk, until=1.6)
    check_stream(out, "PCMU", 20, transcoder)  # continuous: the hook's audio filled the pause


# ---- speech quality ---------------------------------------------------------------------------


def speech_through_opus_to_pcma(loss: float) -> tuple[float, Transcoder]:
    reference_8k = read_wav(reference_speech(8000))
    source = read_wav(reference_speech(48000))
    signal = np.round(source.samples).astype("<i2")
    sender = Sender("opus")
    arrivals = timed(sender.packets(signal), 20)
    if loss:
        dropped = set(lossy(arrivals, loss))
        arrivals = [item for i, item in enumerate(arrivals) if i not in dropped]
    transcoder = make("opus", "PCMA")
    out = drive(transcoder, arrivals, until=len(signal) / 48000 + 1.0)
    check_stream(out, "PCMA", 20, transcoder)
    result = pesq_detail(reference_8k, decode_output("PCMA", out))
    print(f"PESQ opus->PCMA, {loss:.0%} loss: {result.score:.2f}, {transcoder.stats}")
    return result.score, transcoder


@needs_speech
def test_speech_quality_clean() -> None:
    score, transcoder = speech_through_opus_to_pcma(0.0)
    assert score >= 4.0
    assert transcoder.stats.concealed <= 5  # only the tail after the last packet


@needs_speech
def test_speech_quality_with_five_percent_loss() -> None:
    score, transcoder = speech_through_opus_to_pcma(0.05)
    assert score >= 3.2
    # Speech is coded in SILK or hybrid mode, whose packets carry the FEC of the one before.
    assert transcoder.stats.recovered > 0


# ---- RTCP of a transcoded leg ---------------------------------------------------------------


def rtcp_pair() -> tuple[Transcoder, Transcoder, LegRtcp]:
    """Leg a speaks opus; its RTCP reads a_to_b (what a sends us) and b_to_a (what we send a)."""
    a_codec, b_codec = codec("opus"), codec("PCMA")
    a_to_b = Transcoder(a_codec, b_codec, StreamFormat(111), StreamFormat(8), rng=random.Random(1))
    b_to_a = Transcoder(b_codec, a_codec, StreamFormat(8), StreamFormat(111), rng=random.Random(2))
    leg = LegRtcp(a_to_b, b_to_a, 0.0, fixed_interval=1.0, rng=random.Random(3))
    return a_to_b, b_to_a, leg


def test_rtcp_report_before_sending_is_rr_with_cname() -> None:
    _, b_to_a, leg = rtcp_pair()
    assert leg.next_deadline() == 1.0
    assert leg.poll(0.5, 1e9) is None
    packets = parse_rtcp(leg.poll(1.0, 1e9) or b"")
    assert isinstance(packets[0], ReceiverReport)
    assert packets[0].ssrc == b_to_a.ssrc and packets[0].reports == ()
    assert isinstance(packets[1], SourceDescription)
    assert packets[1].chunks[0].ssrc == b_to_a.ssrc
    assert (packets[1].chunks[0].cname or "").startswith("edgegw-")
    assert leg.next_deadline() == 2.0


def test_rtcp_sr_reports_what_we_sent_and_a_block_about_what_we_received() -> None:
    a_to_b, b_to_a, leg = rtcp_pair()
    app = Sender("opus")
    arrivals = timed(app.packets(tone(48000, 1.0)), 20)
    del arrivals[20]  # one lost from the app
    drive(a_to_b, arrivals, until=1.2)
    carrier = Sender("PCMA")
    out = drive(b_to_a, timed(carrier.packets(tone(8000, 1.0)), 20), until=1.2)
    packets = parse_rtcp(leg.report(1.2, 1_700_000_000.0))
    sr = packets[0]
    assert isinstance(sr, SenderReport) and sr.ssrc == b_to_a.ssrc
    assert sr.sender_info.packet_count == len(out)
    assert sr.sender_info.octet_count == sum(len(p) - 12 for _, p in out)
    assert sr.sender_info.ntp_timestamp == ntp_timestamp(1_700_000_000.0)
    (block,) = sr.reports
    assert block.ssrc == app.ssrc
    assert block.cumulative_lost == 1
    assert block.highest_sequence == 4000 + 49
    assert block.last_sr == 0  # no SR from the app yet


def test_rtcp_from_the_peer_gives_lsr_loss_jitter_and_rtt() -> None:
    a_to_b, b_to_a, leg = rtcp_pair()
    app = Sender("opus")
    drive(a_to_b, timed(app.packets(tone(48000, 0.5)), 20), until=0.6)
    # The app's SR: our next block carries its middle NTP bits and the delay since.
    app_sr = SenderReport(app.ssrc, SenderInfo(ntp_timestamp(5000.0), 1234, 25, 2000))
    leg.receive(build_rtcp([app_sr]), 0.6, 1_700_000_000.0)
    block = parse_rtcp(leg.report(0.85, 1_700_000_000.25))[0]
    assert isinstance(block, ReceiverReport)
    assert block.reports[0].last_sr == ntp_short(ntp_timestamp(5000.0))
    assert block.reports[0].delay_since_last_sr == round(0.25 * 65536)
    # The app's RR about our stream: 1/4 lost, jitter 480 (10 ms), RTT 50 ms.
    sent_at = 1_700_000_000.0
    about_us = ReportBlock(
        ssrc=b_to_a.ssrc,
        fraction_lost=64,
        cumulative_lost=3,
        highest_sequence=100,
        jitter=480,
        last_sr=ntp_short(ntp_timestamp(sent_at)),
        delay_since_last_sr=round(0.2 * 65536),
    )
    other = ReportBlock(0x1111, 255, 99, 0, 0, 0, 0)
    leg.receive(build_rtcp([ReceiverReport(app.ssrc, (other, about_us))]), 1.0, sent_at + 0.25)
    stats = leg.stats
    assert stats.remote_fraction_lost == 0.25
    assert stats.remote_cumulative_lost == 3
    assert stats.remote_jitter == pytest.approx(0.010)
    assert stats.rtt == pytest.approx(0.05, abs=1e-3)
    assert (stats.packets_received, stats.sender_reports) == (2, 1)


def test_malformed_rtcp_is_counted_and_changes_nothing() -> None:
    _, _, leg = rtcp_pair()
    leg.receive(b"\x80\xc9\x00\x09" + bytes(8), 0.0, 0.0)  # RR whose length runs past the end
    leg.receive(b"\x80\x10\x00\x00", 0.0, 0.0)  # packet type 16 is not RTCP
    assert (leg.stats.malformed, leg.stats.packets_received) == (2, 0)
