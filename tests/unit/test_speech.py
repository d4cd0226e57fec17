"""tests/speech.py: reference speech, alignment, PESQ, tone detection and levels.

Speech comes from the real espeak-ng and sox; PESQ from the real P.862 implementation.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.speech import (
    Audio,
    SpeechError,
    align,
    dominant_frequency,
    find_delay,
    pesq_detail,
    pesq_score,
    read_wav,
    reference_speech,
    rms_dbov,
    sine,
    speech_tools_missing,
    tone_frames,
    tone_present,
    tone_seconds,
    write_wav,
)

needs_speech = pytest.mark.skipif(
    speech_tools_missing() is not None, reason=f"reference speech: {speech_tools_missing()}"
)


@pytest.fixture(scope="module")
def speech_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="module")
def speech8(speech_cache: Path) -> Audio:
    if speech_tools_missing():
        pytest.skip(f"reference speech: {speech_tools_missing()}")
    return read_wav(reference_speech(8000, speech_cache))


@pytest.fixture(scope="module")
def speech16(speech_cache: Path) -> Audio:
    if speech_tools_missing():
        pytest.skip(f"reference speech: {speech_tools_missing()}")
    return read_wav(reference_speech(16000, speech_cache))


def shifted(audio: Audio, seconds: float, *, tail: float = 0.5) -> Audio:
    """`audio` starting `seconds` late after low noise, with `tail` s of noise after it, as
    a recording that began before the speech arrived and ran on after it."""
    noise = np.random.default_rng(7).normal(0.0, 3.0, round((seconds + tail) * audio.rate))
    lead = round(seconds * audio.rate)
    samples = np.concatenate([noise[:lead], audio.samples, noise[lead:]])
    return Audio(samples, audio.rate, "shifted")


def frames_zeroed(audio: Audio, fraction: float, *, frame_seconds: float = 0.02) -> Audio:
    """A copy with `fraction` of its 20 ms frames (chosen at random, fixed seed) zeroed."""
    size = round(frame_seconds * audio.rate)
    count = len(audio.samples) // size
    samples = audio.samples.copy()
    rng = np.random.default_rng(11)
    for frame in rng.choice(count, size=round(fraction * count), replace=False):
        samples[frame * size : (frame + 1) * size] = 0.0
    return Audio(samples, audio.rate, "frames zeroed")


# ---- reference speech ----------------------------------------------------------------------


@needs_speech
def test_reference_speech_is_mono_16bit_about_8s_and_cached(speech_cache: Path) -> None:
    for rate in (8000, 16000):
        path = reference_speech(rate, speech_cache)
        with wave.open(str(path), "rb") as wav:
            assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, rate)
            seconds = wav.getnframes() / rate
        assert 6.0 <= seconds <= 11.0, seconds
        # Speech, not silence: a normal level and no clipping.
        assert -30.0 < rms_dbov(path) < -10.0
        assert np.abs(read_wav(path).samples).max() < 32767
        stamp = path.stat().st_mtime_ns
        assert reference_speech(rate, speech_cache) == path
        assert path.stat().st_mtime_ns == stamp, "the cached file was made again"


def test_reference_speech_refuses_an_unsupported_rate(tmp_path: Path) -> None:
    with pytest.raises(SpeechError, match="rate must be 8000, 16000 or 48000, got 11025"):
        reference_speech(11025, tmp_path)


# ---- PESQ and alignment --------------------------------------------------------------------


def test_pesq_of_speech_against_itself_is_the_maximum(speech8: Audio, speech16: Audio) -> None:
    # P.862 maps a perfect nb score to MOS-LQO 4.549, P.862.2 a perfect wb one to 4.644.
    assert pesq_score(speech8, speech8, "nb") == pytest.approx(4.549, abs=0.01)
    assert pesq_score(speech16, speech16, "wb") == pytest.approx(4.644, abs=0.01)
    assert pesq_score(speech16, speech16, "nb") == pytest.approx(4.549, abs=0.05)


def test_pesq_drops_clearly_when_5_percent_of_frames_are_zeroed(speech8: Audio) -> None:
    clean = pesq_score(speech8, speech8, "nb")
    lossy = pesq_score(speech8, frames_zeroed(speech8, 0.05), "nb")
    print(f"PESQ nb: clean {clean:.3f}, 5 % of 20 ms frames zeroed {lossy:.3f}")
    assert lossy < clean - 0.5
    assert lossy > 1.5, "5 % loss still leaves intelligible speech"


def test_alignment_recovers_a_known_123_ms_shift(speech8: Audio) -> None:
    late = shifted(speech8, 0.123)
    assert find_delay(speech8, late) == round(0.123 * 8000)
    # The other way round: the recording started 123 ms into the speech.
    early = Audio(speech8.samples[round(0.123 * 8000) :], 8000, "early")
    assert find_delay(speech8, early) == -round(0.123 * 8000)
    ref, deg, delay = align(speech8, late)
    assert delay == 984
    assert len(ref.samples) == len(deg.samples) == len(speech8.samples)
    np.testing.assert_array_equal(ref.samples, deg.samples)


def test_pesq_of_a_shifted_longer_recording_matches_the_aligned_one(speech8: Audio) -> None:
    result = pesq_detail(speech8, shifted(speech8, 0.123, tail=1.0), "nb")
    assert result.delay_seconds == pytest.approx(0.123)
    assert result.overlap_seconds == pytest.approx(speech8.seconds)
    assert result.score == pytest.approx(4.549, abs=0.01)


def test_pesq_refuses_mismatched_rates_silence_and_wb_at_8k(
    speech8: Audio, speech16: Audio
) -> None:
    with pytest.raises(SpeechError, match=r"is 8000 Hz but .* is 16000 Hz"):
        pesq_score(speech8, speech16)
    silence = Audio(np.zeros(len(speech8.samples)), 8000, "silence")
    with pytest.raises(SpeechError, match="and silence: one of them is silent"):
        pesq_score(speech8, silence)
    with pytest.raises(SpeechError, match="PESQ wb needs 16 kHz audio"):
        pesq_score(speech8, speech8, "wb")
    blip = Audio(speech8.samples[8000:8800], 8000, "blip")
    with pytest.raises(SpeechError, match=r"PESQ of blip against blip: .*at least 1/4 of a second"):
        pesq_score(blip, blip)


# ---- tones and levels ----------------------------------------------------------------------


def test_dominant_frequency_of_a_440_hz_sine(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a440.wav", sine(440.0, 2.0, 8000))
    assert dominant_frequency(path) == pytest.approx(440.0, abs=0.5)
    assert dominant_frequency(sine(1000.0, 1.3, 16000)) == pytest.approx(1000.0, abs=0.5)
    # Off-bin frequencies land near the truth too.
    assert dominant_frequency(sine(1234.5, 0.5, 8000)) == pytest.approx(1234.5, abs=1.0)


def test_dominant_frequency_of_silence_is_an_error() -> None:
    with pytest.raises(SpeechError, match="silent"):
        dominant_frequency(Audio(np.zeros(800), 8000, "quiet"))


def test_tone_seconds_counts_only_the_frames_with_the_tone() -> None:
    tone = sine(440.0, 2.0, 8000).samples
    gap = np.zeros(8000)
    other = sine(1000.0, 1.0, 8000).samples
    audio = Audio(np.concatenate([gap, tone, other]), 8000, "mix")
    assert tone_seconds(audio, 440.0) == pytest.approx(2.0, abs=0.1)
    assert tone_seconds(audio, 1000.0) == pytest.approx(1.0, abs=0.1)
    assert tone_seconds(audio, 700.0) == 0.0
    assert tone_present(audio, 440.0, 1.8)
    assert not tone_present(audio, 440.0, 2.5)
    assert len(tone_frames(audio, 440.0)) == 80


def test_tone_is_not_found_in_speech_or_a_quiet_tone(speech8: Audio) -> None:
    assert tone_seconds(speech8, 440.0) < 0.3
    quiet = sine(440.0, 1.0, 8000, dbov=-60.0)
    assert tone_seconds(quiet, 440.0) == 0.0


def test_rms_dbov_of_known_signals() -> None:
    square = Audio(np.where(np.arange(800) % 2 == 0, 32767.0, -32768.0), 8000)
    assert rms_dbov(square) == pytest.approx(0.0, abs=0.01)
    assert rms_dbov(sine(1000.0, 1.0, 8000, dbov=0.0)) == pytest.approx(0.0, abs=0.01)
    full_sine = Audio(32768.0 * np.sin(2 * math.pi * 1000 * np.arange(8000) / 8000), 8000)
    assert rms_dbov(full_sine) == pytest.approx(-3.01, abs=0.01)
    assert rms_dbov(sine(440.0, 1.0, 8000, dbov=-26.0)) == pytest.approx(-26.0, abs=0.01)
    assert rms_dbov(Audio(np.zeros(10), 8000)) == -math.inf
    with pytest.raises(SpeechError, match="no samples"):
        rms_dbov(Audio(np.zeros(0), 8000, "empty"))


# ---- WAV input -----------------------------------------------------------------------------


def test_read_wav_averages_stereo_and_refuses_more_channels_8bit_and_garbage(
    tmp_path: Path,
) -> None:
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(np.array([100, 300] * 200, dtype="<i2").tobytes())
    assert read_wav(stereo).samples.tolist() == [200.0] * 200
    surround = tmp_path / "surround.wav"
    with wave.open(str(surround), "wb") as wav:
        wav.setnchannels(3)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\0\0" * 300)
    with pytest.raises(SpeechError, match=r"surround.wav: expected mono or stereo, got 3"):
        read_wav(surround)
    narrow = tmp_path / "narrow.wav"
    with wave.open(str(narrow), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(b"\x80" * 100)
    with pytest.raises(SpeechError, match=r"narrow.wav: expected 16-bit samples, got 8-bit"):
        read_wav(narrow)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not a riff file at all")
    with pytest.raises(SpeechError, match=r"garbage.wav: not a readable WAV file"):
        read_wav(garbage)
    with pytest.raises(SpeechError, match=r"missing.wav: not a readable WAV file"):
        read_wav(tmp_path / "missing.wav")


def test_write_then_read_round_trips_and_clips(tmp_path: Path) -> None:
    audio = Audio(np.array([0.0, 1.0, -1.0, 40000.0, -40000.0]), 16000)
    back = read_wav(write_wav(tmp_path / "x.wav", audio))
    assert back.rate == 16000
    np.testing.assert_array_equal(back.samples, [0.0, 1.0, -1.0, 32767.0, -32768.0])
