"""Tests for RFC 3389 comfort noise pieces (gateway.media.comfort_noise)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.media.comfort_noise import (
    CN_PAYLOAD_TYPE,
    MIN_LEVEL_DBOV,
    CnAction,
    ComfortNoise,
    ComfortNoiseError,
    ComfortNoiseSource,
    SilenceDecision,
    SilenceDetector,
    build_cn,
    level_dbov,
    parse_cn,
)
from gateway.media.opus import OpusEncoder
from gateway.media.tones import NoiseGenerator

RATE = 8000
FRAME = 160  # 20 ms

Samples = NDArray[np.int16]


def pcm(values: NDArray[np.generic]) -> bytes:
    return np.asarray(values).astype("<i2").tobytes()


def sine(amplitude: float, count: int, freq: float = 1000.0) -> Samples:
    t = np.arange(count)
    return np.round(amplitude * np.sin(2 * np.pi * freq * t / RATE)).astype(np.int16)


def noise_frames(level: float, count: int, seed: int = 5) -> list[bytes]:
    generator = NoiseGenerator(level, seed=seed)
    return [generator.generate(FRAME) for _ in range(count)]


def measured_dbov(frames: list[bytes]) -> float:
    samples = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64)
    return float(10 * np.log10(np.mean(samples * samples) / 32768.0**2))


# --- payload (RFC 3389 3) ----------------------------------------------------


def test_cn_payload_round_trip() -> None:
    assert CN_PAYLOAD_TYPE == 13
    assert build_cn(-45) == b"\x2d"
    assert parse_cn(b"\x2d") == ComfortNoise(-45)
    assert parse_cn(build_cn(0)) == ComfortNoise(0)
    assert parse_cn(build_cn(-127)) == ComfortNoise(-127)
    spectral = build_cn(-60, bytes([127, 0, 254, 191]))
    assert spectral == bytes([60, 127, 0, 254, 191])
    parsed = parse_cn(spectral)
    assert parsed.level_dbov == -60 and parsed.coefficients == bytes([127, 0, 254, 191])
    assert parsed.reflection_coefficients == (0.0, -127 / 128, 127 / 128, 0.5)
    assert parse_cn(memoryview(spectral)) == parsed


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "Empty CN payload"),
        (bytes([0x80 | 40]), "level byte 0xa8 has its unused top bit set"),
        (bytes([0xFF, 1, 2]), "level byte 0xff has its unused top bit set"),
    ],
    ids=["empty", "top-bit-set", "top-bit-set-with-spectrum"],
)
def test_malformed_cn_payloads_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(ComfortNoiseError, match=message):
        parse_cn(payload)


def test_cn_build_refuses_out_of_range_values() -> None:
    with pytest.raises(ComfortNoiseError, match=r"level 1 dBov is outside -127\.\.0"):
        build_cn(1)
    with pytest.raises(ComfortNoiseError, match="level -128 dBov"):
        build_cn(-128)
    with pytest.raises(ComfortNoiseError, match="256 reflection coefficients"):
        build_cn(-50, bytes(256))


# --- level measurement -------------------------------------------------------


def test_level_dbov_of_known_signals() -> None:
    square = np.tile(np.array([32767, -32768]), FRAME // 2)
    assert level_dbov(pcm(square)) == 0
    assert level_dbov(pcm(sine(32767, FRAME))) == -3  # full-scale sine: -3.01 dBov
    # 1000 peak: 707 RMS, 20 log10(707.1 / 32768) = -33.3 dBov.
    assert level_dbov(pcm(sine(1000, FRAME))) == -33
    assert level_dbov(pcm(sine(10, 8 * FRAME))) == -73
    assert level_dbov(bytes(2 * FRAME)) == MIN_LEVEL_DBOV
    assert level_dbov(b"") == MIN_LEVEL_DBOV
    assert level_dbov(pcm(np.array([1]))) == -90
    with pytest.raises(ComfortNoiseError, match="PCM length 3 is odd"):
        level_dbov(b"abc")


# --- noise from a CN level ---------------------------------------------------


@pytest.mark.parametrize("colour", ["white", "hoth"])
@pytest.mark.parametrize("level", [-30, -50, -70])
def test_comfort_noise_has_the_level_asked(colour: str, level: int) -> None:
    source = ComfortNoiseSource(colour=colour)  # type: ignore[arg-type]
    assert source.receive(build_cn(level)) == ComfortNoise(level)
    assert source.level_dbov == level
    frames = [source.generate(FRAME) for _ in range(50)]
    assert abs(measured_dbov(frames) - level) <= 3
    assert all(abs(level_dbov(frame) - level) <= 3 for frame in frames)


def test_comfort_noise_source_follows_level_changes() -> None:
    source = ComfortNoiseSource(-40, max_frame_samples=960)
    loud = source.generate(960)  # 20 ms at 48 kHz, for the Opus side
    source.level_dbov = -60
    quiet = source.generate(960)
    assert abs(level_dbov(loud) + 40) <= 3 and abs(level_dbov(quiet) + 60) <= 3
    with pytest.raises(ComfortNoiseError, match=r"level 5 dBov is outside -127\.\.0"):
        source.level_dbov = 5
    with pytest.raises(ComfortNoiseError, match="unused top bit"):
        source.receive(b"\x90")
    assert source.level_dbov == -60  # a refused payload changes nothing
    with pytest.raises(ComfortNoiseError, match="Frame of 961 samples"):
        source.generate(961)
    with pytest.raises(ComfortNoiseError, match="level -200 dBov"):
        ComfortNoiseSource(-200)
    with pytest.raises(ComfortNoiseError, match="Unknown noise colour 'blue'"):
        ComfortNoiseSource(colour="blue")  # type: ignore[arg-type]
    source.close()
    with pytest.raises(ComfortNoiseError, match="closed"):
        source.generate(160)


# --- silence detector ----------------------------------------------------------


def actions(decisions: list[SilenceDecision]) -> str:
    return "".join(
        {"audio": "a", "send-cn": "c", "nothing": "."}[d.action.value] for d in decisions
    )


def test_hangover_then_one_cn_packet_then_nothing() -> None:
    detector = SilenceDetector(threshold_dbov=-50, hangover_ms=200, refresh_ms=1000)
    talk = [detector.feed(pcm(sine(8000, FRAME))) for _ in range(25)]
    quiet = [detector.feed(frame) for frame in noise_frames(-65, 40)]
    assert actions(talk) == "a" * 25
    # Ten frames (200 ms) of hangover still sent as audio, then one CN packet.
    assert actions(quiet) == "a" * 10 + "c" + "." * 29
    assert abs(quiet[10].level_dbov + 65) <= 1
    assert detector.suppressing
    assert not any(d.marker for d in talk + quiet)


def test_short_pauses_stay_audio() -> None:
    detector = SilenceDetector(hangover_ms=200)
    decisions = []
    for _ in range(5):
        decisions += [detector.feed(pcm(sine(8000, FRAME))) for _ in range(10)]
        decisions += [detector.feed(frame) for frame in noise_frames(-70, 9)]  # 180 ms
    assert actions(decisions) == "a" * 95
    assert not detector.suppressing


def test_cn_refresh_on_interval_and_on_level_change() -> None:
    detector = SilenceDetector(hangover_ms=200, refresh_ms=1000, level_step_db=3)
    steady = [detector.feed(frame) for frame in noise_frames(-65, 70)]
    # CN after the hangover, then one refresh 1000 ms (50 frames) later.
    assert actions(steady) == "a" * 10 + "c" + "." * 49 + "c" + "." * 9
    louder = [detector.feed(frame) for frame in noise_frames(-55, 20, seed=9)]
    refreshes = [d for d in louder if d.action is CnAction.SEND_CN]
    # The smoothed level crosses the 3 dB step within a few frames: one update
    # at first, more as it settles, never one per frame.
    assert 1 <= len(refreshes) <= 4
    assert louder.index(refreshes[0]) <= 5
    assert abs(detector.noise_level_dbov + 55) <= 1


def test_speech_after_cn_is_sent_at_once_with_the_marker() -> None:
    detector = SilenceDetector(hangover_ms=100)
    for frame in noise_frames(-70, 20):
        detector.feed(frame)
    assert detector.suppressing
    first = detector.feed(pcm(sine(3000, FRAME)))
    second = detector.feed(pcm(sine(3000, FRAME)))
    assert (first.action, first.marker) == (CnAction.AUDIO, True)
    assert (second.action, second.marker) == (CnAction.AUDIO, False)
    assert first.level_dbov == level_dbov(pcm(sine(3000, FRAME)))


def test_detector_refuses_bad_settings_and_frames() -> None:
    with pytest.raises(ComfortNoiseError, match="threshold_dbov 0 is outside"):
        SilenceDetector(threshold_dbov=0)
    with pytest.raises(ComfortNoiseError, match="hangover_ms must be positive, got 0"):
        SilenceDetector(hangover_ms=0)
    detector = SilenceDetector()
    with pytest.raises(ComfortNoiseError, match="Empty frame"):
        detector.feed(b"")
    with pytest.raises(ComfortNoiseError, match="PCM length 321 is odd"):
        detector.feed(bytes(321))


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian packages espeak-ng, sox)")
    folder = tmp_path_factory.mktemp("speech")
    wav, raw = folder / "speech.wav", folder / "speech.raw"
    text = "Comfort noise keeps a quiet line from sounding dead. Silence stays silence."
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(wav), "-r", "8000", "-b", "16", "-c", "1", "-e", "signed-integer", str(raw)],
        check=True,
        capture_output=True,
    )
    return np.frombuffer(Path(raw).read_bytes(), dtype="<i2").astype(np.int16)


def test_speech_in_room_noise_round_trips_through_cn(speech: Samples) -> None:
    """G.711 side: speech in -60 dBov noise; silence becomes CN, CN becomes noise again."""
    background = np.frombuffer(
        b"".join(noise_frames(-60, (len(speech) + 2 * RATE) // FRAME + 1)), dtype="<i2"
    ).astype(np.float64)
    signal = background[: len(speech) + 2 * RATE].copy()
    signal[RATE // 2 : RATE // 2 + len(speech)] += speech
    mixed = np.clip(signal, -32768, 32767).astype(np.int16)
    detector = SilenceDetector()
    frames = [pcm(mixed[i : i + FRAME]) for i in range(0, len(mixed) - FRAME + 1, FRAME)]
    decisions = [detector.feed(frame) for frame in frames]
    # No frame above the threshold is ever withheld.
    for frame, decision in zip(frames, decisions, strict=True):
        if level_dbov(frame) > detector.threshold_dbov:
            assert decision.action is CnAction.AUDIO
    # The trailing 1.5 s of noise costs a handful of packets, not 75.
    tail = decisions[-60:]
    assert sum(d.action is not CnAction.NOTHING for d in tail) <= 3
    cn_levels = [d.level_dbov for d in decisions if d.action is CnAction.SEND_CN]
    assert cn_levels and all(abs(level + 60) <= 2 for level in cn_levels)
    # The receiving side fills the gap at the level within 3 dB of the real noise.
    source = ComfortNoiseSource()
    source.receive(build_cn(cn_levels[-1]))
    filled = [source.generate(FRAME) for _ in range(50)]
    assert abs(measured_dbov(filled) - measured_dbov(frames[-50:])) <= 3


# --- Opus DTX, the other side of the interworking ----------------------------


def opus_frames_sent(encoder: OpusEncoder, frames: list[bytes]) -> list[int]:
    """Indices of the frames whose packet must be sent (DTX: more than 2 bytes)."""
    return [i for i, frame in enumerate(frames) if len(encoder.encode(frame)) > 2]


def test_opus_dtx_sends_an_update_about_every_400_ms() -> None:
    encoder = OpusEncoder(48000, dtx=True)
    tone = np.round(8000 * np.sin(2 * np.pi * 200 * np.arange(48000) / 48000)).astype(np.int16)
    talk = [pcm(tone[i : i + 960]) for i in range(0, 48000, 960)]
    sent = opus_frames_sent(encoder, talk + [bytes(1920)] * 150)
    quiet_sent = [i - 50 for i in sent if i >= 50]
    gaps = np.diff(quiet_sent)
    # About 200 ms of silence is still coded before DTX starts...
    assert 8 <= int(np.argmax(gaps > 1)) <= 12
    # ...then 20 frames are skipped and one update sent: every 420 ms at 20 ms.
    assert set(gaps[-5:].tolist()) == {21}


def test_noise_from_a_cn_level_lets_opus_fall_into_dtx() -> None:
    source = ComfortNoiseSource(-70, max_frame_samples=960)
    encoder = OpusEncoder(48000, dtx=True)
    sent = opus_frames_sent(encoder, [source.generate(960) for _ in range(150)])
    # 3 s of comfort noise: after DTX sets in, one packet per 400 ms or so.
    assert len([i for i in sent if i >= 50]) <= 6
