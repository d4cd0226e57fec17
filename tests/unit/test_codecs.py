"""Tests for gateway.media.codecs: one interface over G.711, G.722, G.729 and Opus.

The registry builds each codec from a negotiated payload format and its fmtp; every codec
goes through the interface for real (sine in, sine out); concealment gives exactly the time
asked for; Opus rebuilds a lost packet from the next one's in-band FEC.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.calls.negotiation import Codec
from gateway.media.codecs import (
    G711,
    G722,
    G729,
    AudioCodec,
    Opus,
    OpusSettings,
    UnsupportedCodec,
    make_codec,
    make_pair,
    opus_has_fec,
    opus_packet_samples,
    parse_fmtp,
)
from gateway.media.opus import OpusDecoder, OpusEncoder
from tests.speech import Audio, dominant_frequency, rms_dbov


def tone(rate: int, seconds: float, hz: float = 1000.0, dbov: float = -16.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    amplitude = 32768 * math.sqrt(2) * 10 ** (dbov / 20)
    return np.round(amplitude * np.sin(2 * math.pi * hz * t)).astype("<i2")


def voice(rate: int, seconds: float) -> np.ndarray:
    """Harmonics of a gliding 100-220 Hz pitch: coded by Opus in SILK or hybrid mode."""
    t = np.arange(round(rate * seconds)) / rate
    pitch = 160 + 60 * np.sin(2 * math.pi * 1.3 * t)
    phase = 2 * math.pi * np.cumsum(pitch) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 12))
    return np.round(5000 * wave * (0.6 + 0.4 * np.sin(2 * math.pi * 3 * t))).astype("<i2")


# ---- registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("described", "kind", "name", "pcm_rate", "rtp_clock"),
    [
        (Codec("PCMA", 8, 8000), G711, "PCMA", 8000, 8000),
        (Codec("pcmu", 0, 8000), G711, "PCMU", 8000, 8000),
        (Codec("G722", 9, 8000), G722, "G722", 16000, 8000),
        (Codec("G729", 18, 8000), G729, "G729", 8000, 8000),
        (Codec("opus", 111, 48000, 2), Opus, "opus", 48000, 48000),
        (Codec("OPUS", 96, 48000, 1), Opus, "opus", 48000, 48000),
    ],
    ids=["pcma", "pcmu-lower-case", "g722", "g729", "opus-2ch", "opus-upper-mono"],
)
def test_registry_builds_every_codec(
    described: Codec, kind: type[AudioCodec], name: str, pcm_rate: int, rtp_clock: int
) -> None:
    made = make_codec(described)
    assert isinstance(made, kind)
    assert (made.name, made.pcm_rate, made.rtp_clock) == (name, pcm_rate, rtp_clock)


@pytest.mark.parametrize(
    ("fmtp", "annexb"),
    [(None, True), ("annexb=yes", True), ("annexb=no", False), ("annexb=NO ", False)],
)
def test_g729_annexb_defaults_to_yes(fmtp: str | None, annexb: bool) -> None:
    made = make_codec(Codec("G729", 18, 8000, fmtp=fmtp))
    assert isinstance(made, G729) and made.annexb is annexb


@pytest.mark.parametrize(
    ("fmtp", "settings", "fec", "dtx", "bitrate"),
    [
        (None, OpusSettings(), False, False, 32000),  # RFC 7587: both default to 0
        ("useinbandfec=1", OpusSettings(), True, False, 32000),
        ("useinbandfec=1", OpusSettings(fec=False), False, False, 32000),
        ("usedtx=1", OpusSettings(dtx=True), False, True, 32000),
        ("usedtx=1", OpusSettings(), False, False, 32000),
        ("maxaveragebitrate=20000; useinbandfec=1", OpusSettings(), True, False, 20000),
        ("maxaveragebitrate=64000", OpusSettings(bitrate=24000), False, False, 24000),
        ("maxaveragebitrate=1000", OpusSettings(), False, False, 6000),
        ("maxaveragebitrate=lots", OpusSettings(), False, False, 32000),
    ],
    ids=[
        "none",
        "fec",
        "fec-off-here",
        "dtx",
        "dtx-off-here",
        "cap",
        "cap-above",
        "cap-below-floor",
        "cap-not-a-number",
    ],
)
def test_opus_fmtp_and_settings(
    fmtp: str | None, settings: OpusSettings, fec: bool, dtx: bool, bitrate: int
) -> None:
    made = make_codec(Codec("opus", 111, 48000, 2, fmtp), settings)
    assert isinstance(made, Opus)
    assert (made.fec, made.dtx, made.bitrate) == (fec, dtx, bitrate)


@pytest.mark.parametrize(
    ("described", "message"),
    [
        (Codec("iLBC", 97, 8000), "No transcoder for iLBC/8000: expected PCMA"),
        (Codec("PCMA", 8, 16000), "PCMA runs at 8000 Hz"),
        (Codec("G722", 9, 16000), "G722 runs at 8000 Hz"),
        (Codec("opus", 111, 8000), "opus runs at 48000 Hz"),
        (Codec("PCMU", 0, 8000, 2), "PCMU/8000/2: mono only"),
    ],
    ids=["unknown", "pcma-16k", "g722-16k-clock", "opus-8k", "stereo-pcmu"],
)
def test_unsupported_formats_are_refused_by_name(described: Codec, message: str) -> None:
    with pytest.raises(UnsupportedCodec, match=message):
        make_codec(described)


@pytest.mark.parametrize(
    ("a", "b", "rates"),
    [
        (Codec("opus", 111, 48000, 2), Codec("PCMA", 8, 8000), (8000, 8000)),
        (Codec("G729", 18, 8000), Codec("opus", 111, 48000, 2), (8000, 8000)),
        (Codec("opus", 111, 48000, 2), Codec("G722", 9, 8000), (16000, 16000)),
        (Codec("G722", 9, 8000), Codec("PCMU", 0, 8000), (16000, 8000)),
    ],
    ids=["opus-pcma", "g729-opus", "opus-g722", "g722-pcmu"],
)
def test_pair_runs_opus_at_the_other_legs_rate(a: Codec, b: Codec, rates: tuple[int, int]) -> None:
    first, second = make_pair(a, b)
    assert (first.pcm_rate, second.pcm_rate) == rates
    assert {first.rtp_clock, second.rtp_clock} <= {8000, 48000}


@pytest.mark.parametrize("rate", [8000, 16000])
def test_opus_at_a_lower_rate_still_speaks_48khz_rtp(rate: int) -> None:
    codec = make_codec(Codec("opus", 111, 48000, 2), opus_rate=rate)
    payload = codec.encode(tone(rate, 0.02).tobytes())
    assert codec.duration(payload) == 960  # RTP clock 48000 (RFC 7587 4.1)
    assert len(codec.decode(payload)) == 2 * rate // 50
    assert len(codec.conceal(rate // 50 + 1)) == 2 * (rate // 50 + 1)
    with pytest.raises(UnsupportedCodec, match="Opus PCM rate 12000 Hz"):
        make_codec(Codec("opus", 111, 48000, 2), opus_rate=12000)


def test_parse_fmtp() -> None:
    assert parse_fmtp("useinbandfec=1; usedtx=0;MaxAverageBitrate = 20000;;") == {
        "useinbandfec": "1",
        "usedtx": "0",
        "maxaveragebitrate": "20000",
    }
    assert parse_fmtp(None) == {} and parse_fmtp("") == {}
    assert parse_fmtp("0-16") == {"0-16": ""}


# ---- round trips through the interface ---------------------------------------------------------


def round_trip(codec: AudioCodec, signal: np.ndarray, ms: int = 20) -> Audio:
    step = codec.samples(ms)
    out = []
    for start in range(0, len(signal) - step + 1, step):
        payload = codec.encode(signal[start : start + step].tobytes())
        assert codec.duration(payload) == codec.rtp_clock * ms // 1000
        out.append(codec.decode(payload))
    return Audio(np.frombuffer(b"".join(out), "<i2").astype(np.float64), codec.pcm_rate)


@pytest.mark.parametrize(
    "described",
    [
        Codec("PCMA", 8, 8000),
        Codec("PCMU", 0, 8000),
        Codec("G722", 9, 8000),
        Codec("G729", 18, 8000, fmtp="annexb=no"),
        Codec("opus", 111, 48000, 2),
    ],
    ids=["pcma", "pcmu", "g722", "g729", "opus"],
)
def test_sine_round_trip(described: Codec) -> None:
    codec = make_codec(described)
    decoded = round_trip(codec, tone(codec.pcm_rate, 1.0))
    steady = Audio(decoded.samples[codec.samples(100) :], decoded.rate)
    assert len(decoded.samples) == codec.pcm_rate
    assert dominant_frequency(steady) == pytest.approx(1000.0, abs=3)
    assert rms_dbov(steady) == pytest.approx(-16.0, abs=1.5)


@pytest.mark.parametrize(
    ("described", "samples"),
    [
        (Codec("PCMA", 8, 8000), 173),
        (Codec("G722", 9, 8000), 333),  # odd: rounded up to whole sample pairs, then cut
        (Codec("G729", 18, 8000), 100),  # not whole 10 ms frames
        (Codec("opus", 111, 48000), 1000),  # not whole 2.5 ms steps
        (Codec("opus", 111, 48000), 7000),  # longer than libopus's 120 ms
    ],
    ids=["pcma", "g722", "g729", "opus", "opus-long"],
)
def test_concealment_gives_exactly_the_time_asked(described: Codec, samples: int) -> None:
    codec = make_codec(described)
    codec.decode(codec.encode(tone(codec.pcm_rate, 0.02).tobytes()))
    concealed = codec.conceal(samples)
    assert len(concealed) == 2 * samples
    assert np.frombuffer(concealed, "<i2").any()  # it carries on the sine, not silence


def test_g711_concealment_continues_the_tone_then_fades() -> None:
    codec = make_codec(Codec("PCMA", 8, 8000))
    codec.decode(codec.encode(tone(8000, 0.02).tobytes()))
    first = np.frombuffer(codec.conceal(160), "<i2")
    later = np.frombuffer(codec.conceal(480), "<i2")
    assert rms_dbov(Audio(first.astype(np.float64), 8000)) > -20
    assert not later[-80:].any()  # spandsp fades to silence within 50 ms


def test_durations() -> None:
    g729 = make_codec(Codec("G729", 18, 8000))
    assert g729.duration(bytes(20)) == 160
    assert g729.duration(bytes(22)) == 240  # two frames and a SID
    assert g729.duration(bytes(2)) == 80
    assert g729.duration(bytes(13)) is None
    assert g729.duration(b"") is None
    g722 = make_codec(Codec("G722", 9, 8000))
    assert g722.duration(bytes(160)) == 160  # 320 samples, 160 clock ticks
    assert g722.duration(bytes(961)) is None
    pcmu = make_codec(Codec("PCMU", 0, 8000))
    assert pcmu.duration(bytes(240)) == 240
    assert pcmu.duration(bytes(961)) is None


@pytest.mark.parametrize("ms", [10, 20, 40, 60])
def test_opus_packet_samples_from_real_packets(ms: int) -> None:
    codec = make_codec(Codec("opus", 111, 48000, 2))
    payload = codec.encode(voice(48000, ms / 1000).tobytes())
    assert opus_packet_samples(payload) == 48 * ms


@pytest.mark.parametrize(
    ("payload", "samples"),
    [
        (bytes([0x00]), 480),  # config 0: SILK 10 ms, code 0: one frame
        (bytes([0x0B]), None),  # config 1: SILK 20 ms, code 3 without its count byte
        (bytes([0x0B, 0x02]), 1920),  # the same with a count of two frames
        (bytes([0x79]), 1920),  # config 15: hybrid 20 ms, code 1: two frames
        (bytes([0x80]), 120),  # config 16: CELT 2.5 ms
        (bytes([0xFB, 0x30]), None),  # CELT 20 ms x 48: longer than 120 ms
        (bytes([0xFB, 0x00]), None),  # code 3 with no frames
        (b"", None),
    ],
    ids=[
        "silk10",
        "code3-no-count",
        "silk20x2",
        "hybrid20x2",
        "celt2.5",
        "too-long",
        "zero",
        "empty",
    ],
)
def test_opus_toc(payload: bytes, samples: int | None) -> None:
    assert opus_packet_samples(payload) == samples


# ---- packet timing and DTX ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("described", "ptime", "sent"),
    [
        (Codec("opus", 111, 48000), 30, 20),
        (Codec("opus", 111, 48000), 60, 60),
        (Codec("opus", 111, 48000), 10, 10),
        (Codec("opus", 111, 48000), 5, 10),
        (Codec("G729", 18, 8000), 25, 20),
        (Codec("G729", 18, 8000), 5, 10),
        (Codec("PCMA", 8, 8000), 30, 30),
        (Codec("G722", 9, 8000), 30, 30),
    ],
)
def test_packet_durations_for_a_ptime(described: Codec, ptime: int, sent: int) -> None:
    assert make_codec(described).packet_ms(ptime) == sent


def test_opus_dtx_sends_nothing_for_silence() -> None:
    codec = make_codec(Codec("opus", 111, 48000, 2, "usedtx=1"), OpusSettings(dtx=True))
    quiet = bytes(2 * 960)
    results = [codec.encode_packets(quiet) for _ in range(30)]
    assert results[0]  # the first frames still go out
    assert [] in results[10:]


def test_g729_annexb_sends_sid_or_nothing_for_silence() -> None:
    codec = make_codec(Codec("G729", 18, 8000))
    quiet = bytes(2 * 160)
    sent = [codec.encode_packets(quiet) for _ in range(40)]
    later = sent[20:]
    assert [] in later
    assert all(len(payload) == 2 for packets in later for _, payload in packets)
    speech = codec.encode_packets(tone(8000, 0.02).tobytes())
    assert speech and all(offset in (0, 80) for offset, _ in speech)


# ---- FEC ---------------------------------------------------------------------------------------


def fec_stream(ms: int = 20, channels: int = 1) -> list[bytes]:
    """Voice coded as an app does, with FEC sized for 20 % loss."""
    sender = OpusEncoder(48000, channels, complexity=10, fec=True, packet_loss_percent=20)
    signal = np.repeat(voice(48000, 1.5), channels)
    step = 48 * ms * channels
    return [sender.encode(signal[i : i + step].tobytes()) for i in range(0, len(signal), step)]


def receive(packets: list[bytes], lost: int, use_fec: bool) -> np.ndarray:
    """Decode through the interface, losing packet ``lost``: FEC from the next, or PLC."""
    receiver = make_codec(Codec("opus", 111, 48000, 2))
    samples = opus_packet_samples(packets[0]) or 0
    out = []
    for i, payload in enumerate(packets):
        if i != lost:
            out.append(receiver.decode(payload))
            continue
        rebuilt = receiver.recover(packets[i + 1], samples) if use_fec else None
        out.append(rebuilt if rebuilt is not None else receiver.conceal(samples))
    return np.frombuffer(b"".join(out), "<i2").astype(np.float64)


def test_opus_recovers_a_lost_packet_from_the_next_ones_fec() -> None:
    packets = fec_stream()
    clean = receive(packets, -1, False)
    rebuilt = [i for i in range(10, 60) if opus_has_fec(packets[i + 1])]
    assert len(rebuilt) >= 20
    for lost in rebuilt[:5]:
        window = slice(lost * 960, (lost + 1) * 960)
        error_fec = np.sum((receive(packets, lost, True)[window] - clean[window]) ** 2)
        error_plc = np.sum((receive(packets, lost, False)[window] - clean[window]) ** 2)
        assert error_fec < 0.5 * error_plc


@pytest.mark.parametrize(("ms", "channels"), [(10, 1), (20, 1), (40, 1), (60, 1), (20, 2)])
def test_fec_flag_agrees_with_libopus(ms: int, channels: int) -> None:
    """Where the LBRR flag says no FEC, libopus's FEC decoding is plain concealment."""
    packets = fec_stream(ms, channels)
    samples = 48 * ms
    flagged = 0
    for lost in range(2, len(packets) - 1):
        following = packets[lost + 1]
        plain, fec = OpusDecoder(48000, 1), OpusDecoder(48000, 1)
        for payload in packets[:lost]:
            plain.decode(payload)
            fec.decode(payload)
        same = plain.conceal(samples) == fec.recover(following, samples)
        if opus_has_fec(following):
            flagged += 1
            assert not same, f"packet {lost + 1} flagged LBRR but carried none"
    assert flagged >= len(packets) // 3


def test_recover_is_none_where_there_can_be_no_fec() -> None:
    opus = make_codec(Codec("opus", 111, 48000, 2))
    assert opus.recover(bytes([0x80, 0x00]), 960) is None  # CELT-only: no LBRR
    assert opus.recover(b"", 960) is None
    assert opus.recover(bytes([0x08, 0x00]), 1000) is None  # not whole 2.5 ms steps
    for described in (Codec("PCMA", 8, 8000), Codec("G722", 9, 8000), Codec("G729", 18, 8000)):
        assert make_codec(described).recover(bytes(160), 160) is None


@pytest.mark.parametrize(
    ("described", "payload"),
    [
        (Codec("PCMA", 8, 8000), b""),
        (Codec("G722", 9, 8000), b""),
        (Codec("G729", 18, 8000), bytes(13)),
        (Codec("opus", 111, 48000), bytes([0xFB, 0x3F])),
    ],
    ids=["pcma-empty", "g722-empty", "g729-13-bytes", "opus-bad-count"],
)
def test_bad_payloads_raise_value_errors_with_the_reason(described: Codec, payload: bytes) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        make_codec(described).decode(payload)
