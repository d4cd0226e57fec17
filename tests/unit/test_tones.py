"""Tests for the spandsp tone blocks (gateway.media.tones over gateway._native_tones).

Tones are checked against independent synthesis (numpy sines, FSK) and
real speech from espeak-ng resampled to 8 kHz by sox.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.media.tones import (
    DTMF_DIGITS,
    DTMF_FREQUENCIES,
    DtmfDetector,
    DtmfEvent,
    DtmfEventKind,
    DtmfGenerator,
    FaxTone,
    FaxToneDetector,
    NoiseGenerator,
    PacketLossConcealer,
    ToneError,
    frame_energy,
)

RATE = 8000
FRAME = 160  # 20 ms
# dBm0 = dBov + 6.16 in spandsp's (and G.711's) calibration: a full-scale
# sine is +3.14 dBm0 and -3.01 dBov.
DBM0_TO_DBOV = -6.16

SPEECH_TEXT = (
    "The quick brown fox jumps over the lazy dog. Please call me back at your "
    "earliest convenience: one, two, three, four, five, six, seven, eight, nine, zero."
)

Samples = NDArray[np.int16]


def espeak(folder: Path, text: str, voice: str | None = None) -> Samples:
    """espeak-ng speech resampled by sox to 8 kHz 16-bit mono samples."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian packages espeak-ng, sox)")
    wav, raw = folder / "speech.wav", folder / "speech.raw"
    voice_args = ["-v", voice] if voice else []
    subprocess.run(
        ["espeak-ng", *voice_args, "-w", str(wav), text], check=True, capture_output=True
    )
    subprocess.run(
        ["sox", str(wav), "-r", "8000", "-b", "16", "-c", "1", "-e", "signed-integer", str(raw)],
        check=True,
        capture_output=True,
    )
    return np.frombuffer(raw.read_bytes(), dtype="<i2").astype(np.int16)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    """Several seconds of espeak-ng speech (its default voice)."""
    samples = espeak(tmp_path_factory.mktemp("speech"), SPEECH_TEXT)
    assert len(samples) >= 3 * RATE, "espeak-ng made less than 3 s of speech"
    return samples


def frames(signal: Samples, size: int = FRAME) -> Iterator[bytes]:
    data = signal.astype("<i2").tobytes()
    for offset in range(0, len(data), 2 * size):
        yield data[offset : offset + 2 * size]


def silence(count: int) -> Samples:
    return np.zeros(count, dtype=np.int16)


def sine(
    freq: float,
    count: int,
    amplitude: float = 8000.0,
    *,
    reversal_every: int | None = None,
    am_depth: float = 0.0,
) -> Samples:
    t = np.arange(count)
    phase = 2 * np.pi * freq * t / RATE
    if reversal_every:
        phase = phase + np.pi * ((t // reversal_every) % 2)
    envelope = 1.0 + am_depth * np.sin(2 * np.pi * 15 * t / RATE)
    return np.round(amplitude * envelope * np.sin(phase)).astype(np.int16)


def v21_flags(count: int, amplitude: float = 8000.0) -> Samples:
    """V.21 channel 2 (1650 Hz mark, 1850 Hz space) at 300 bit/s carrying HDLC flags."""
    flag_bits = [0, 1, 1, 1, 1, 1, 1, 0]  # 0x7E, least significant bit first
    samples_per_bit = RATE / 300
    bits = np.array([flag_bits[int(i / samples_per_bit) % 8] for i in range(count)])
    freq = np.where(bits == 1, 1650.0, 1850.0)
    phase = np.cumsum(2 * np.pi * freq / RATE)
    return np.round(amplitude * np.sin(phase)).astype(np.int16)


def rms(values: NDArray[np.generic]) -> float:
    as_float = values.astype(np.float64)
    return float(np.sqrt(np.mean(as_float * as_float)))


def detect_all(detector: DtmfDetector, signal: Samples) -> list[DtmfEvent]:
    events: list[DtmfEvent] = []
    for frame in frames(signal):
        events.extend(detector.feed(frame))
    return events


def generate_digits(
    digits: str, durations: list[int], gap: int = 800, volume: int = -10
) -> tuple[Samples, list[tuple[str, int, int]]]:
    """The digits played by DtmfGenerator in 20 ms frames; (digit, onset, length) of each."""
    generator = DtmfGenerator()
    parts: list[Samples] = []
    truth: list[tuple[str, int, int]] = []
    position = 0
    for digit, duration in zip(digits, durations, strict=True):
        parts.append(silence(gap))
        position += gap
        generator.start(digit, volume)
        played = 0
        while played < duration:
            step = min(FRAME, duration - played)
            parts.append(np.frombuffer(generator.generate(step), dtype="<i2").astype(np.int16))
            played += step
        generator.stop()
        truth.append((digit, position, duration))
        position += duration
    parts.append(silence(800))
    return np.concatenate(parts), truth


def check_detected(
    events: list[DtmfEvent], truth: list[tuple[str, int, int]], tolerance: int
) -> None:
    starts = [e for e in events if e.kind is DtmfEventKind.START]
    ends = [e for e in events if e.kind is DtmfEventKind.END]
    assert "".join(e.digit for e in starts) == "".join(t[0] for t in truth)
    assert "".join(e.digit for e in ends) == "".join(t[0] for t in truth)
    for start, end, (digit, onset, length) in zip(starts, ends, truth, strict=True):
        assert abs(start.sample - onset) <= tolerance, (digit, start, onset)
        assert abs(end.sample - (onset + length)) <= tolerance, (digit, end, onset + length)
        assert abs(end.duration - length) <= tolerance, (digit, end.duration, length)
        assert start.detected_at > start.sample and end.detected_at > end.sample
        assert start.level_dbm0 == end.level_dbm0


# --- DTMF generation ---------------------------------------------------------


def test_generator_makes_the_two_q23_frequencies_at_the_asked_power() -> None:
    generator = DtmfGenerator(max_frame_samples=RATE)
    for digit, (low, high) in DTMF_FREQUENCIES.items():
        generator.start(digit, -10)
        tone = np.frombuffer(generator.generate(RATE), dtype="<i2")
        spectrum = np.abs(np.fft.rfft(tone.astype(np.float64)))  # 1 Hz bins over 1 s
        peaks = sorted(int(b) for b in np.argsort(spectrum)[-2:])
        assert peaks == [low, high], digit
        # -10 dBm0 for the pair is -16.16 dBov: 5110 RMS against a 32768 square.
        level_dbov = 20 * np.log10(rms(tone) / 32768)
        assert abs(level_dbov - (-10 + DBM0_TO_DBOV)) < 0.5, digit


def test_generator_tone_runs_on_across_frames_and_is_silent_when_stopped() -> None:
    split, whole = DtmfGenerator(), DtmfGenerator()
    split.start("5", -12)
    whole.start("5", -12)
    pieces = split.generate(80) + split.generate(37) + split.generate(43)
    assert pieces == whole.generate(160)
    # Starting the digit already playing (an RFC 4733 update) carries the tone on.
    split.start("5", -12)
    whole.start("5", -12)
    assert split.generate(160) == whole.generate(160)
    split.stop()
    assert split.digit is None
    assert split.generate(160) == bytes(320)
    split.start("d", -20)
    assert split.digit == "D"
    louder = rms(np.frombuffer(whole.generate(160), dtype="<i2"))
    quieter = rms(np.frombuffer(split.generate(160), dtype="<i2"))
    assert 20 * np.log10(louder / quieter) == pytest.approx(8, abs=1.0)


def test_generator_refuses_bad_digits_volumes_and_sizes() -> None:
    generator = DtmfGenerator()
    with pytest.raises(ToneError, match="Not a DTMF digit: 'E'"):
        generator.start("E")
    with pytest.raises(ToneError, match="Not a DTMF digit: '12'"):
        generator.start("12")
    with pytest.raises(ToneError, match=r"volume 3 dBm0 is outside -63\.\.0"):
        generator.start("1", 3)
    with pytest.raises(ToneError, match="volume -64 dBm0"):
        generator.start("1", -64)
    with pytest.raises(ToneError, match=r"Frame of 961 samples is outside 0\.\.960"):
        generator.generate(961)
    with pytest.raises(ToneError, match="Sample rate 16000 Hz is not supported"):
        DtmfGenerator(16000)
    generator.close()
    with pytest.raises(ToneError, match="DtmfGenerator is closed"):
        generator.start("1")
    generator.close()


# --- DTMF detection ----------------------------------------------------------


def test_each_of_the_16_digits_is_detected_with_its_timing() -> None:
    durations = [320 + 40 * i for i in range(16)]  # 40 to 115 ms
    signal, truth = generate_digits(DTMF_DIGITS, durations)
    detector = DtmfDetector()
    events = detect_all(detector, signal)
    # Timing is estimated from spandsp's 102-sample blocks: within 15 ms.
    check_detected(events, truth, tolerance=120)
    assert detector.position == len(signal)
    assert detector.digit is None
    # -10 dBm0 for the pair: spandsp reports about that for each start.
    assert all(-13 <= e.level_dbm0 <= -7 for e in events)


def test_long_digit_is_one_event_whatever_the_frame_size() -> None:
    signal, truth = generate_digits("#", [8 * FRAME * 10])  # 800 ms
    for size in (80, 160, 240, 320, 960):
        detector = DtmfDetector()
        events: list[DtmfEvent] = []
        for frame in frames(signal, size):
            events.extend(detector.feed(frame))
        check_detected(events, truth, tolerance=120)


def test_back_to_back_digits_without_a_gap() -> None:
    signal, truth = generate_digits("19", [800, 800], gap=0)
    events = detect_all(DtmfDetector(), signal)
    assert [(e.kind, e.digit) for e in events] == [
        (DtmfEventKind.START, "1"),
        (DtmfEventKind.END, "1"),
        (DtmfEventKind.START, "9"),
        (DtmfEventKind.END, "9"),
    ]
    first_end, second_start = events[1], events[2]
    assert second_start.sample >= first_end.sample
    assert abs(second_start.sample - (truth[1][1])) <= 120


def test_digits_are_detected_under_speech_at_15_db(speech: Samples) -> None:
    durations = [400 + 40 * i for i in range(16)]
    tones, truth = generate_digits(DTMF_DIGITS, durations)
    voice = speech[: len(tones)].astype(np.float64)
    voiced = voice[np.abs(voice) > 0]
    # Speech 15 dB below the -10 dBm0 tone pair: spandsp's stated S/N limit.
    gain = rms(np.frombuffer(generate_digits("5", [RATE])[0], dtype=np.int16)[800:-800])
    scale = gain / rms(voiced) / 10 ** (15 / 20)
    mixed = np.clip(tones + voice * scale, -32768, 32767).astype(np.int16)
    check_detected(detect_all(DtmfDetector(), mixed), truth, tolerance=160)


def test_no_false_digit_on_speech(speech: Samples) -> None:
    # Talk-off: espeak-ng speech, as is and 10 dB louder (clipped), gives no digit.
    loud = np.clip(speech.astype(np.float64) * 3.16, -32768, 32767).astype(np.int16)
    for signal in (speech, loud):
        assert detect_all(DtmfDetector(), signal) == []


@pytest.mark.parametrize("voice", ["en+f3", "en-us+m3", "de", "zh"])
def test_no_false_digit_or_fax_tone_on_other_voices(voice: str, tmp_path: Path) -> None:
    text = "Seven, eight, nine, zero, star, hash. Ahhh, eeee, oooo, la la la la la."
    samples = espeak(tmp_path, text, voice)
    assert len(samples) >= 3 * RATE
    assert detect_all(DtmfDetector(), samples) == []
    assert detect_fax(samples) == []


def test_detector_refuses_bad_input() -> None:
    detector = DtmfDetector(max_frame_samples=320)
    with pytest.raises(ToneError, match="PCM length 161 is odd"):
        detector.feed(bytes(161))
    with pytest.raises(ToneError, match="Frame of 321 samples exceeds the maximum of 320"):
        detector.feed(bytes(642))
    assert detector.feed(b"") == []
    assert detector.feed(memoryview(bytes(320))[:160]) == []
    assert detector.position == 80
    with pytest.raises(ToneError, match="Sample rate 48000 Hz"):
        DtmfDetector(48000)
    with pytest.raises(ToneError, match=r"max_frame_samples 8001 is outside 1\.\.8000"):
        DtmfDetector(max_frame_samples=8001)
    with pytest.raises(ToneError, match=r"threshold_dbm0 5 is outside -60\.\.0"):
        DtmfDetector(threshold_dbm0=5)
    with pytest.raises(ToneError, match=r"twist_db 30 is outside 0\.\.20"):
        DtmfDetector(twist_db=30)
    detector.close()
    with pytest.raises(ToneError, match="DtmfDetector is closed"):
        detector.feed(bytes(320))


def test_detector_threshold_setting_is_applied() -> None:
    quiet, _ = generate_digits("7", [800], volume=-30)
    assert [e.digit for e in detect_all(DtmfDetector(), quiet)] == ["7", "7"]
    assert detect_all(DtmfDetector(threshold_dbm0=-20), quiet) == []


# --- fax and modem tones -----------------------------------------------------


def detect_fax(signal: Samples) -> list[tuple[FaxTone, int]]:
    detector = FaxToneDetector()
    found: list[tuple[FaxTone, int]] = []
    position = 0
    for frame in frames(signal):
        position += len(frame) // 2
        tone = detector.feed(frame)
        if tone is not None:
            found.append((tone, position))
    return found


def test_cng_is_detected_in_each_burst() -> None:
    burst, pause = RATE // 2, 3 * RATE  # T.30: 0.5 s on, 3 s off
    signal = np.concatenate([silence(800), sine(1100, burst), silence(pause), sine(1100, burst)])
    found = detect_fax(np.concatenate([signal, silence(800)]))
    assert [tone for tone, _ in found] == [FaxTone.CNG, FaxTone.CNG]
    first_at = found[0][1]
    # Confirmed after 415 ms of tone, within the burst.
    assert 800 + int(0.415 * RATE) <= first_at <= 800 + burst + FRAME


def test_ced_is_detected_and_remembered() -> None:
    signal = np.concatenate([silence(1600), sine(2100, 3 * RATE), silence(800)])
    detector = FaxToneDetector()
    results = [detector.feed(frame) for frame in frames(signal)]
    assert [tone for tone in results if tone is not None] == [FaxTone.CED]
    assert detector.detected is FaxTone.CED
    assert detector.detected_at is not None
    assert 1600 + int(0.55 * RATE) <= detector.detected_at <= 1600 + RATE


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        (sine(2100, 5 * RATE, reversal_every=3600), FaxTone.ANS_PR),
        (sine(2100, 5 * RATE, am_depth=0.2), FaxTone.ANSAM),
        (sine(2100, 5 * RATE, am_depth=0.2, reversal_every=3600), FaxTone.ANSAM_PR),
        (v21_flags(RATE), FaxTone.V21_PREAMBLE),
        (sine(2100, 3 * RATE, amplitude=800), FaxTone.CED),  # -25 dBm0
    ],
    ids=["ans-pr", "ansam", "ansam-pr", "v21-preamble", "quiet-ced"],
)
def test_modem_answer_signals(signal: Samples, expected: FaxTone) -> None:
    found = detect_fax(np.concatenate([silence(1600), signal, silence(800)]))
    assert [tone for tone, _ in found] == [expected]


def test_no_fax_tone_on_speech_or_dtmf(speech: Samples) -> None:
    assert detect_fax(speech) == []
    digits, _ = generate_digits(DTMF_DIGITS, [800] * 16, gap=400)
    assert detect_fax(digits) == []
    # A 1 kHz test tone is neither CNG (1100 Hz) nor CED (2100 Hz).
    assert detect_fax(sine(1000, 5 * RATE)) == []


def test_fax_detector_refuses_bad_input() -> None:
    detector = FaxToneDetector()
    with pytest.raises(ToneError, match="PCM length 3 is odd"):
        detector.feed(b"abc")
    with pytest.raises(ToneError, match="Sample rate 16000 Hz"):
        FaxToneDetector(16000)


# --- packet loss concealment -------------------------------------------------


def test_plc_continues_a_sine_then_fades_out() -> None:
    tone = sine(440, RATE, amplitude=10000)
    plc = PacketLossConcealer()
    for frame in frames(tone[: 10 * FRAME]):  # 200 ms of good audio
        assert plc.good(frame) == frame
    concealed = np.frombuffer(plc.conceal(FRAME), dtype="<i2").astype(np.float64)
    truth = tone[10 * FRAME : 11 * FRAME].astype(np.float64)
    correlation = np.dot(concealed, truth) / np.sqrt(np.dot(concealed, concealed) * (truth @ truth))
    assert correlation > 0.8
    assert plc.concealed_samples == FRAME
    # Linear fade to silence within 50 ms (spandsp's design) and silence after.
    levels = [rms(np.frombuffer(plc.conceal(FRAME), dtype="<i2")) for _ in range(4)]
    assert levels[0] < rms(concealed) and levels[1] < levels[0]
    assert levels[2:] == [0.0, 0.0]
    assert plc.concealed_samples == 5 * FRAME
    # The first good frame after the loss is blended in, not passed through raw.
    resumed = tone[15 * FRAME : 16 * FRAME].tobytes()
    blended = plc.good(resumed)
    assert blended != resumed and len(blended) == len(resumed)
    assert plc.concealed_samples == 0
    following = tone[16 * FRAME : 17 * FRAME].tobytes()
    assert plc.good(following) == following


def test_plc_refuses_bad_sizes() -> None:
    plc = PacketLossConcealer(max_frame_samples=320)
    with pytest.raises(ToneError, match=r"Frame of 321 samples is outside 0\.\.320"):
        plc.conceal(321)
    with pytest.raises(ToneError, match="Frame of -1 samples"):
        plc.conceal(-1)
    with pytest.raises(ToneError, match="PCM length 5 is odd"):
        plc.good(bytes(5))


# --- noise -------------------------------------------------------------------


@pytest.mark.parametrize("colour", ["white", "hoth"])
@pytest.mark.parametrize("level", [-20.0, -45.0, -65.0])
def test_noise_has_the_asked_level(colour: str, level: float) -> None:
    generator = NoiseGenerator(level, colour=colour)  # type: ignore[arg-type]
    noise = np.concatenate(
        [np.frombuffer(generator.generate(FRAME), dtype="<i2") for _ in range(50)]
    )
    assert abs(20 * np.log10(rms(noise) / 32768) - level) < 0.5
    assert generator.colour == colour


def test_noise_level_can_change_and_the_colours_differ() -> None:
    generator = NoiseGenerator(-30.0, max_frame_samples=RATE)
    first = generator.generate(FRAME)
    assert generator.generate(FRAME) != first
    generator.level_dbov = -50.0
    quieter = np.frombuffer(generator.generate(RATE), dtype="<i2")
    assert abs(20 * np.log10(rms(quieter) / 32768) + 50) < 0.5
    assert generator.level_dbov == -50.0

    def low_to_high(samples: bytes) -> float:
        spectrum = np.abs(np.fft.rfft(np.frombuffer(samples, dtype="<i2").astype(np.float64)))
        return float(np.sum(spectrum[100:1000] ** 2) / np.sum(spectrum[3000:4000] ** 2))

    white = NoiseGenerator(-30.0, max_frame_samples=RATE).generate(RATE)
    hoth = NoiseGenerator(-30.0, colour="hoth", max_frame_samples=RATE).generate(RATE)
    assert low_to_high(white) == pytest.approx(900 / 1000, rel=0.3)  # flat: by bandwidth
    assert low_to_high(hoth) > 5 * low_to_high(white)  # room noise leans low


def test_noise_refuses_bad_settings() -> None:
    with pytest.raises(ToneError, match=r"Noise level 3 dBov is outside -127\.\.0"):
        NoiseGenerator(3)
    with pytest.raises(ToneError, match="Unknown noise colour 'pink'"):
        NoiseGenerator(colour="pink")  # type: ignore[arg-type]
    generator = NoiseGenerator()
    with pytest.raises(ToneError, match="Noise level -130 dBov"):
        generator.level_dbov = -130
    assert generator.level_dbov == -70.0


def test_frame_energy() -> None:
    tone = sine(1000, FRAME, amplitude=1000)
    energy, count = frame_energy(tone.tobytes())
    assert count == FRAME
    assert energy == pytest.approx(float(np.sum(tone.astype(np.float64) ** 2)))
    assert frame_energy(b"") == (0.0, 0)
    with pytest.raises(ToneError, match="PCM length 1 is odd"):
        frame_energy(b"\x00")
