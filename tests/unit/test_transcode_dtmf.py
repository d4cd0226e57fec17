"""DTMF through the transcoder (gateway.media.dtmf_interworking), sans-IO on a fake clock.

A test peer sends the digits "0123456789*#" (100 ms each, 100 ms apart) over a -50 dBov
noise background: as RFC 4733 packets on the audio's SSRC and sequence (an update per
20 ms packet, the end three times), as in-band tones made by spandsp, or both. What
comes out is read as the far end would: RFC 4733 packets through a TelephoneEventReceiver,
audio decoded and run through spandsp's DTMF detector.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from gateway.calls.negotiation import Codec
from gateway.media.codecs import AudioCodec, OpusSettings, make_codec, make_pair
from gateway.media.dtmf import (
    EventEnded,
    TelephoneEventReceiver,
    build_block,
    digit_for_event,
    event_for_digit,
    parse_payload,
)
from gateway.media.dtmf_interworking import DtmfPath
from gateway.media.resample import Resampler
from gateway.media.rtp import RtpHeader, parse_rtp_header
from gateway.media.tones import (
    DtmfDetector,
    DtmfEvent,
    DtmfEventKind,
    DtmfGenerator,
    NoiseGenerator,
)
from gateway.media.transcode import StreamFormat, Transcoder
from tests.unit.test_transcode import drive

OPUS = Codec("opus", 111, 48000, 2, "useinbandfec=1")
PCMA = Codec("PCMA", 8, 8000)
CODECS = {"opus": OPUS, "PCMA": PCMA}
EVENT_PT = 101
DIGITS = "0123456789*#"
FIRST = 0.3
ON = 0.1
OFF = 0.1
SECONDS = 3.0
SSRC = 0x5EED
TS0 = 90000
SEQ0 = 4000


def schedule() -> list[tuple[str, float]]:
    """Each digit and when it starts, seconds into the stream."""
    return [(digit, FIRST + i * (ON + OFF)) for i, digit in enumerate(DIGITS)]


def peer_audio(rate: int, *, tones: bool) -> np.ndarray:
    """The peer's audio at ``rate``: noise, with the digits' tones (-10 dBm0) when ``tones``."""
    noise = NoiseGenerator(-50, seed=7, max_frame_samples=160)
    samples = round(8000 * SECONDS)
    pcm = np.frombuffer(b"".join(noise.generate(160) for _ in range(samples // 160)), "<i2")
    pcm = pcm.astype(np.int32)
    if tones:
        generator = DtmfGenerator(max_frame_samples=8000)
        for digit, start in schedule():
            generator.start(digit, -10)
            first = round(start * 8000)
            last = first + round(ON * 8000)
            pcm[first:last] += np.frombuffer(generator.generate(last - first), "<i2")
            generator.stop()
    narrow: np.ndarray = np.clip(pcm, -32768, 32767).astype("<i2")
    if rate == 8000:
        return narrow
    up = Resampler(8000, rate, max_input_samples=160)
    chunks = (up.process(narrow[i : i + 160].tobytes()) for i in range(0, len(narrow), 160))
    return np.frombuffer(b"".join(chunks), "<i2")


def rtp(pt: int, seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
    first = pt | (0x80 if marker else 0)
    return struct.pack("!BBHII", 0x80, first, seq & 0xFFFF, ts & 0xFFFF_FFFF, SSRC) + payload


def peer_packets(codec: Codec, *, tones: bool, events: bool) -> list[tuple[float, bytes]]:
    """20 ms audio packets and, while a digit lasts, RFC 4733 packets in the same sequence."""
    encoder = make_codec(codec, OpusSettings(complexity=10))
    signal = peer_audio(encoder.pcm_rate, tones=tones)
    clock, step = encoder.rtp_clock, encoder.samples(20)
    ts_step = clock // 50
    out: list[tuple[float, bytes]] = []
    seq = SEQ0
    for k in range(len(signal) // step):
        at, ts = k * 0.02, TS0 + k * ts_step
        payload = encoder.encode(signal[k * step : (k + 1) * step].tobytes())
        out.append((at, rtp(codec.payload_type, seq, ts, payload)))
        seq += 1
        if not events:
            continue
        for digit, start in schedule():
            onset = TS0 + round(start * clock)
            end = onset + round(ON * clock)
            if not onset < ts + ts_step <= end:
                continue
            duration = ts + ts_step - onset
            last = duration == end - onset
            block = build_block(event_for_digit(digit), end=last, volume=10, duration=duration)
            out.append((at, rtp(EVENT_PT, seq, onset, block, marker=duration == ts_step)))
            seq += 1
            for repeat in (1, 2) if last else ():
                out.append((at + 0.02 * repeat, rtp(EVENT_PT, seq, onset, block)))
                seq += 1
    return out


def lossy(arrivals: list[tuple[float, bytes]], share: float) -> list[tuple[float, bytes]]:
    rng = random.Random(20240607)
    return [item for i, item in enumerate(arrivals) if i < 10 or rng.random() >= share]


def transcoder(source: str, target: str, *, source_events: bool, target_events: bool) -> Transcoder:
    decoder, encoder = make_pair(CODECS[source], CODECS[target])
    return Transcoder(
        decoder,
        encoder,
        StreamFormat(CODECS[source].payload_type, 20, EVENT_PT if source_events else None),
        StreamFormat(CODECS[target].payload_type, 20, EVENT_PT if target_events else None),
        rng=random.Random(1),
    )


@dataclass
class Output:
    """What the target leg received."""

    headers: list[RtpHeader]
    audio: list[tuple[float, RtpHeader, bytes]]
    events: list[tuple[float, RtpHeader, bytes]]

    @classmethod
    def of(cls, out: Sequence[tuple[float, bytes]]) -> Output:
        headers = [parse_rtp_header(packet) for _, packet in out]
        assert all(h is not None for h in headers)
        found = [h for h in headers if h is not None]
        audio: list[tuple[float, RtpHeader, bytes]] = []
        events: list[tuple[float, RtpHeader, bytes]] = []
        for (at, packet), header in zip(out, found, strict=True):
            (events if header.payload_type == EVENT_PT else audio).append((at, header, packet[12:]))
        return cls(found, audio, events)

    def ended(self) -> list[EventEnded]:
        receiver = TelephoneEventReceiver()
        ended = []
        for _, header, payload in self.events:
            for item in receiver.receive(
                header.sequence, header.timestamp, payload, marker=header.marker
            ):
                if isinstance(item, EventEnded):
                    ended.append(item)
        return ended

    def decoded(self, codec: AudioCodec) -> np.ndarray:
        pcm = b"".join(codec.decode(payload) for _, _, payload in self.audio)
        return np.frombuffer(pcm, "<i2")


def detected(pcm: np.ndarray) -> list[DtmfEvent]:
    detector = DtmfDetector(max_frame_samples=160)
    found: list[DtmfEvent] = []
    for i in range(0, len(pcm) - 159, 160):
        found += detector.feed(pcm[i : i + 160].tobytes())
    return found


def starts(events: list[DtmfEvent]) -> str:
    return "".join(e.digit for e in events if e.kind is DtmfEventKind.START)


def check_one_stream(output: Output, transcoder: Transcoder) -> None:
    """Events and audio share our SSRC and one sequence, with no gap."""
    assert {h.ssrc for h in output.headers} == {transcoder.ssrc}
    for before, after in itertools.pairwise(output.headers):
        assert after.sequence == (before.sequence + 1) & 0xFFFF


def test_the_peer_audio_carries_the_tones_a_detector_hears() -> None:
    # The control for the tests below: what they must not find in the output is there.
    assert starts(detected(peer_audio(8000, tones=True))) == DIGITS
    assert starts(detected(peer_audio(8000, tones=False))) == ""


# ---- events in, events out ---------------------------------------------------------------


@pytest.mark.parametrize("loss", [0.0, 0.05], ids=["clean", "5%-loss"])
@pytest.mark.parametrize(
    ("source", "target", "clock"), [("opus", "PCMA", 8000), ("PCMA", "opus", 48000)]
)
def test_events_are_relayed_with_the_target_clock(
    source: str, target: str, clock: int, loss: float
) -> None:
    # The peer sends the digits both ways at once, as events and as tones in its audio.
    arrivals = lossy(peer_packets(CODECS[source], tones=True, events=True), loss)
    direction = transcoder(source, target, source_events=True, target_events=True)
    assert direction.dtmf_path is DtmfPath.RELAY
    output = Output.of(drive(direction, arrivals, until=SECONDS + 0.5))
    check_one_stream(output, direction)
    ended = output.ended()
    assert "".join(digit_for_event(e.event) or "?" for e in ended) == DIGITS
    assert all(e.end_seen and e.volume == 10 for e in ended)
    # On the target's timeline: the first audio packet carries the peer's first
    # frame, so each event starts where its digit did, within a packet (here exactly),
    # and lasts its 100 ms in the target's clock.
    first_audio = output.audio[0][1].timestamp
    packet = clock // 50
    for event, (_, start) in zip(ended, schedule(), strict=True):
        assert abs((event.timestamp - first_audio) % (1 << 32) - round(start * clock)) <= packet
        assert abs(event.duration - round(ON * clock)) <= packet
    # RFC 4733 2.5.1: the marker on each event's first packet, the end sent three times.
    firsts = Counter(h.timestamp for _, h, _ in output.events if h.marker)
    final = Counter(h.timestamp for _, h, p in output.events if parse_payload(p)[0].end)
    assert len(firsts) == len(DIGITS) and set(firsts.values()) == {1}
    assert len(final) == len(DIGITS) and set(final.values()) == {3}
    # Each event's first packet leaves with the audio packet its onset falls in.
    sent = {h.timestamp: at for at, h, _ in output.audio}
    for at, header, _ in output.events:
        if header.marker:
            frame = header.timestamp - (header.timestamp - first_audio) % packet
            assert at == pytest.approx(sent[frame % (1 << 32)], abs=0.0201)
    # RFC 4733 2.6: the tones in the peer's audio are muted, not sent as audio too.
    assert starts(detected(output.decoded(make_codec(CODECS[target], opus_rate=8000)))) == ""
    snapshot = direction.snapshot()
    assert snapshot["events_sent"] == len(DIGITS)
    # Event packets are not audio: they never reach the jitter buffer, and their
    # sequence numbers are not losses.
    audio_in = sum(1 for _, p in arrivals if p[1] & 0x7F == CODECS[source].payload_type)
    assert direction.stats.packets_in == audio_in
    assert direction.stats.telephone_events == len(arrivals) - audio_in
    dropped_audio = sum(1 for _, p in peer_packets(CODECS[source], tones=True, events=True))
    dropped_audio -= len(arrivals)
    assert snapshot["lost"] <= dropped_audio
    if loss == 0.0:
        assert snapshot["lost"] == 0


def test_events_and_audio_of_another_ssrc_are_kept_apart() -> None:
    # A new SSRC from the peer restarts its timeline: a digit playing then ends at once.
    arrivals = peer_packets(OPUS, tones=False, events=True)
    cut = next(i for i, (at, _) in enumerate(arrivals) if at >= FIRST + 0.05)
    moved = [
        (at, packet[:8] + struct.pack("!I", 0xBEEF) + packet[12:]) for at, packet in arrivals[cut:]
    ]
    direction = transcoder("opus", "PCMA", source_events=True, target_events=True)
    output = Output.of(drive(direction, arrivals[:cut] + moved, until=SECONDS + 0.5))
    ended = output.ended()
    digits = "".join(digit_for_event(e.event) or "?" for e in ended)
    # The first digit was cut short by the restart; the others arrive whole, once each.
    assert digits == DIGITS
    assert ended[0].duration < 800
    assert direction.stats.ssrc_changes == 1


def test_an_event_whose_end_packets_are_all_lost_ends_all_the_same() -> None:
    arrivals = peer_packets(OPUS, tones=False, events=True)
    last_digit = event_for_digit("#")
    kept = [
        (at, p)
        for at, p in arrivals
        if not (p[1] & 0x7F == EVENT_PT and p[12] == last_digit and p[13] & 0x80)
    ]
    assert len(kept) == len(arrivals) - 3
    direction = transcoder("opus", "PCMA", source_events=True, target_events=True)
    output = Output.of(drive(direction, kept, until=SECONDS + 0.5))
    ended = output.ended()
    assert "".join(digit_for_event(e.event) or "?" for e in ended) == DIGITS
    # Ended after the playout ran 250 ms past its last update: the end reports the
    # longest duration heard (80 ms of its 100), sent three times as ever.
    assert ended[-1].end_seen and ended[-1].duration == 640


def test_an_event_that_arrives_after_its_time_plays_at_once() -> None:
    arrivals = peer_packets(OPUS, tones=False, events=True)
    # Of the first digit only the end packets come, 80 ms late: by then its whole
    # time has played (RFC 4733 2.5.2.1: an event is known by its timestamp).
    first = event_for_digit("0")
    late = []
    for at, p in arrivals:
        if p[1] & 0x7F != EVENT_PT or p[12] != first:
            late.append((at, p))
        elif p[13] & 0x80:
            late.append((at + 0.08, p))
    direction = transcoder("opus", "PCMA", source_events=True, target_events=True)
    output = Output.of(drive(direction, late, until=SECONDS + 0.5))
    ended = output.ended()
    assert "".join(digit_for_event(e.event) or "?" for e in ended) == DIGITS
    assert ended[0].duration == 800
    assert direction.snapshot()["late_events"] == 1
    # The next digit, due while that one played, starts when it ended (a far end
    # drops an event older than the last one) and still ends on time.
    first_audio = output.audio[0][1].timestamp
    assert ended[1].timestamp == (ended[0].timestamp + 800) % (1 << 32)
    next_end = (ended[1].timestamp + ended[1].duration - first_audio) % (1 << 32)
    assert next_end == round((schedule()[1][1] + ON) * 8000)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x01\x0a\x00", b"\x01\x0a\x00\xa0\x02"],
    ids=["empty", "three-bytes", "five-bytes"],
)
def test_malformed_event_payload_is_counted_and_dropped(payload: bytes) -> None:
    direction = transcoder("opus", "PCMA", source_events=True, target_events=True)
    arrivals = peer_packets(OPUS, tones=False, events=False)[:20]
    arrivals.insert(5, (0.1, rtp(EVENT_PT, 1, TS0, payload, marker=True)))
    output = Output.of(drive(direction, arrivals, until=0.5))
    assert direction.stats.malformed == 1
    assert output.events == []
    assert len(output.audio) >= 19


# ---- events in, tones out --------------------------------------------------------------


@pytest.mark.parametrize("loss", [0.0, 0.05], ids=["clean", "5%-loss"])
@pytest.mark.parametrize("tones", [False, True], ids=["events", "events-and-tones"])
def test_events_become_tones_toward_a_leg_without_telephone_event(tones: bool, loss: float) -> None:
    arrivals = lossy(peer_packets(OPUS, tones=tones, events=True), loss)
    direction = transcoder("opus", "PCMA", source_events=True, target_events=False)
    assert direction.dtmf_path is DtmfPath.GENERATE
    output = Output.of(drive(direction, arrivals, until=SECONDS + 0.5))
    assert output.events == []
    check_one_stream(output, direction)
    heard = detected(output.decoded(make_codec(PCMA)))
    # The carrier's IVR hears every digit once (a tone the peer left in its audio is
    # replaced, not added to), where the event put it: the detector's onset estimate
    # is within 7 ms, so within a 20 ms packet of the truth.
    assert starts(heard) == DIGITS
    onsets = [e.sample for e in heard if e.kind is DtmfEventKind.START]
    for onset, (_, start) in zip(onsets, schedule(), strict=True):
        assert abs(onset - round(start * 8000)) <= 160
    lengths = [e.duration for e in heard if e.kind is DtmfEventKind.END]
    assert all(abs(length - 800) <= 160 for length in lengths)
    # At the volume the events said: -10 dBm0.
    levels = [e.level_dbm0 for e in heard if e.kind is DtmfEventKind.START]
    assert all(-13 <= level <= -7 for level in levels)
    assert direction.snapshot()["tones_played"] == len(DIGITS)


def test_tones_play_while_the_peer_sends_only_events() -> None:
    # A peer that stops its audio while a digit's events go out (the buffer then plays
    # the pause): the tone must still reach a carrier without telephone-event.
    arrivals = [
        (at, p)
        for at, p in peer_packets(OPUS, tones=False, events=True)
        if p[1] & 0x7F == EVENT_PT or not FIRST <= at < FIRST + ON
    ]
    direction = transcoder("opus", "PCMA", source_events=True, target_events=False)
    output = Output.of(drive(direction, arrivals, until=SECONDS + 0.5))
    assert starts(detected(output.decoded(make_codec(PCMA)))) == DIGITS


# ---- tones in, events out --------------------------------------------------------------


@pytest.mark.parametrize("loss", [0.0, 0.05], ids=["clean", "5%-loss"])
def test_tones_heard_from_a_leg_without_telephone_event_become_events(loss: float) -> None:
    arrivals = lossy(peer_packets(PCMA, tones=True, events=False), loss)
    direction = transcoder("PCMA", "opus", source_events=False, target_events=True)
    assert direction.dtmf_path is DtmfPath.DETECT
    output = Output.of(drive(direction, arrivals, until=SECONDS + 0.5))
    check_one_stream(output, direction)
    ended = output.ended()
    # Every digit once, even where a lost packet was concealed in the middle of a tone.
    assert "".join(digit_for_event(e.event) or "?" for e in ended) == DIGITS
    assert all(e.end_seen for e in ended)
    final = Counter(h.timestamp for _, h, p in output.events if parse_payload(p)[0].end)
    assert set(final.values()) == {3}
    assert direction.snapshot()["tones_detected"] == len(DIGITS)
    # The -10 dBm0 of the tones, as RFC 4733 volume (-dBm0).
    assert all(8 <= e.volume <= 12 for e in ended)
    if loss:
        return
    # Onset and end estimated back to where the tone was: within a packet (960 at
    # the Opus leg's 48 kHz clock) of the truth.
    first_audio = output.audio[0][1].timestamp
    for event, (_, start) in zip(ended, schedule(), strict=True):
        assert abs((event.timestamp - first_audio) % (1 << 32) - round(start * 48000)) <= 960
        assert abs(event.duration - round(ON * 48000)) <= 960
    # The tone is muted toward the app once heard: what is left is its head, shorter
    # than the 40 ms a digit lasts at the least, never the whole 100 ms tone.
    leaked = detected(output.decoded(make_codec(OPUS, opus_rate=8000)))
    assert all(e.duration < 320 for e in leaked if e.kind is DtmfEventKind.END)
    unmuted = detected(peer_audio(8000, tones=True))
    assert all(e.duration >= 640 for e in unmuted if e.kind is DtmfEventKind.END)


def test_no_dtmf_work_when_neither_leg_has_telephone_event() -> None:
    direction = transcoder("PCMA", "opus", source_events=False, target_events=False)
    assert direction.dtmf_path is None
    arrivals = peer_packets(PCMA, tones=True, events=False)
    output = Output.of(drive(direction, arrivals, until=SECONDS + 0.5))
    # The tones simply pass as audio.
    assert starts(detected(output.decoded(make_codec(OPUS, opus_rate=8000)))) == DIGITS
    assert output.events == []


def test_a_flood_of_events_is_bounded() -> None:
    direction = transcoder("opus", "PCMA", source_events=True, target_events=True)
    arrivals = peer_packets(OPUS, tones=False, events=False)[:5]
    # 100 one-packet events (each ends the one before, RFC 4733 2.5.2.2) at once.
    flood = [
        (0.05, rtp(EVENT_PT, 9000 + i, TS0 + 48000 + 4800 * i, build_block(i % 16, duration=960)))
        for i in range(100)
    ]
    drive(direction, arrivals + flood, until=0.1)
    snapshot = direction.snapshot()
    assert snapshot["dropped_events"] == 100 - 32
    assert direction.stats.telephone_events == 100
