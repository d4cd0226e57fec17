"""Speech and tones for media tests and benchmarks: make a reference, score what arrived.

* `reference_speech(rate)`: a few sentences of real (synthetic) speech from `espeak-ng`,
  converted by `sox` to 16-bit mono WAV at 8 or 16 kHz, cached on disk so a test session
  synthesises it once. Two talkers (a male and a female espeak voice) alternate sentences,
  as ITU-T P.862 asks for more than one talker; with them G.711 alone scores about 4.37
  (the default espeak voice scores only 3.94 through G.711, below the gateway's targets,
  whatever the gateway does).
* `pesq_score(reference, degraded, mode)`: ITU-T P.862 MOS-LQO (PyPI `pesq`; "nb" at 8 or
  16 kHz, "wb" P.862.2 at 16 kHz) after aligning the two: a recording starts late or
  early and runs longer than what was sent, so the delay is found by cross-correlation
  and both signals are trimmed to their overlap.
* `dominant_frequency`, `tone_seconds` / `tone_present`: FFT checks that a sine went
  through (per 50 ms frame, the share of the frame's energy near the tone).
* `rms_dbov`: level relative to the 16-bit overload point (a full-scale square wave is
  0 dBov, a full-scale sine -3.01 dBov).

Every function takes a WAV path or an `Audio` (samples and rate). Bad input raises
`SpeechError` naming the file and what was wrong.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float64]
PesqMode = Literal["nb", "wb"]

SENTENCES: Final = (
    "The quick brown fox jumps over the lazy dog.",
    "A gateway carries every call between two networks.",
    "Please hold the line while we connect your call.",
)
# A male and a female talker, one sentence each in turn.
VOICES: Final = ("en-us+klatt", "en-us+f3")
# 16-bit full scale: 0 dBov.
FULL_SCALE: Final = 32768.0
# Frame length of the tone analysis: 20 Hz bins, short enough to see gaps.
TONE_FRAME_SECONDS: Final = 0.05
# Frames quieter than this carry no tone whatever their spectrum.
TONE_FLOOR_DBOV: Final = -50.0


class SpeechError(ValueError):
    """Audio that cannot be analysed: unreadable WAV, wrong format, no speech, a tool failed."""


@dataclass(frozen=True)
class Audio:
    """Mono samples on the 16-bit scale (float64, -32768..32767) and their rate."""

    samples: Samples
    rate: int
    name: str = "<samples>"

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


AudioLike = Audio | Path | str


# ---- WAV files -----------------------------------------------------------------------------


def read_wav(path: Path | str) -> Audio:
    """A 16-bit PCM WAV file as mono (stereo is averaged: Opus recordings are 2-channel);
    SpeechError naming the file for anything else."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise SpeechError(f"{path}: not a readable WAV file: {exc}") from exc
    if width != 2:
        raise SpeechError(f"{path}: expected 16-bit samples, got {8 * width}-bit")
    if channels not in (1, 2):
        raise SpeechError(f"{path}: expected mono or stereo, got {channels} channels")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64)
    if channels == 2:
        samples = samples.reshape(-1, 2).mean(axis=1)
    return Audio(samples, rate, str(path))


def write_wav(path: Path, audio: Audio) -> Path:
    """Write `audio` as 16-bit PCM mono (samples clipped to the 16-bit range)."""
    pcm = np.clip(np.round(audio.samples), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(audio.rate)
        wav.writeframes(pcm.tobytes())
    return path


def as_audio(source: AudioLike) -> Audio:
    return source if isinstance(source, Audio) else read_wav(source)


# ---- reference speech ----------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where synthesised speech is kept between tests: one directory per user."""
    return Path(tempfile.gettempdir()) / f"edgegw-speech-{os.getuid()}"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SpeechError(f"{name} is not on PATH (Debian package {name})")
    return path


def speech_tools_missing() -> str | None:
    """Why reference speech cannot be made here (a skip reason), or None."""
    missing = [name for name in ("espeak-ng", "sox") if shutil.which(name) is None]
    return f"not on PATH: {', '.join(missing)}" if missing else None


def _run(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise SpeechError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")


def reference_speech(
    rate: int,
    cache_dir: Path | None = None,
    *,
    sentences: tuple[str, ...] = SENTENCES,
    voices: tuple[str, ...] = VOICES,
) -> Path:
    """A 16-bit mono WAV at `rate` of `sentences` spoken by `voices` in turn (about 8 s).

    Made once per (text, voices, rate) and kept in `cache_dir`; concurrent callers each
    write their own temporary file and rename it into place.
    """
    if rate not in (8000, 16000, 48000):
        raise SpeechError(f"reference speech rate must be 8000, 16000 or 48000, got {rate}")
    if not sentences or not voices:
        raise SpeechError("reference speech needs at least one sentence and one voice")
    directory = cache_dir or default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256("\n".join([*voices, "", *sentences]).encode()).hexdigest()[:12]
    target = directory / f"speech-{key}-{rate}.wav"
    if target.is_file():
        return target
    espeak, sox = _tool("espeak-ng"), _tool("sox")
    with tempfile.TemporaryDirectory(dir=directory) as work_name:
        work = Path(work_name)
        parts = []
        for i, sentence in enumerate(sentences):
            part = work / f"part{i}.wav"
            _run([espeak, "-v", voices[i % len(voices)], "-w", str(part), sentence])
            parts.append(str(part))
        made = work / "speech.wav"
        # -D: no dither, so the file is the same on every run; norm -3: no clipping from
        # the rate change, and a level independent of the voices.
        _run([sox, "-D", *parts, "-r", str(rate), "-b", "16", "-c", "1", str(made), "norm", "-3"])
        os.replace(made, target)
    return target


# ---- alignment and PESQ --------------------------------------------------------------------


def find_delay(reference: AudioLike, degraded: AudioLike) -> int:
    """How many samples `degraded` lags `reference` (negative: it starts early).

    The peak of their cross-correlation, computed by FFT over the whole of both signals.
    """
    ref, deg = as_audio(reference), as_audio(degraded)
    _same_rate(ref, deg)
    if not ref.samples.any() or not deg.samples.any():
        raise SpeechError(f"cannot align {ref.name} and {deg.name}: one of them is silent")
    size = 1 << math.ceil(math.log2(len(ref.samples) + len(deg.samples)))
    spectrum = np.fft.rfft(deg.samples, size) * np.conj(np.fft.rfft(ref.samples, size))
    correlation = np.fft.irfft(spectrum, size)
    lag = int(np.argmax(correlation))
    return lag if lag < size // 2 else lag - size


def align(reference: AudioLike, degraded: AudioLike) -> tuple[Audio, Audio, int]:
    """Both signals trimmed to the stretch they share, and the delay found."""
    ref, deg = as_audio(reference), as_audio(degraded)
    delay = find_delay(ref, deg)
    ref_start, deg_start = max(0, -delay), max(0, delay)
    length = min(len(ref.samples) - ref_start, len(deg.samples) - deg_start)
    if length <= 0:
        raise SpeechError(f"{ref.name} and {deg.name} do not overlap (delay {delay} samples)")
    return (
        Audio(ref.samples[ref_start : ref_start + length], ref.rate, ref.name),
        Audio(deg.samples[deg_start : deg_start + length], deg.rate, deg.name),
        delay,
    )


@dataclass(frozen=True)
class PesqResult:
    score: float
    delay_seconds: float
    overlap_seconds: float


def pesq_detail(reference: AudioLike, degraded: AudioLike, mode: PesqMode = "nb") -> PesqResult:
    """P.862 MOS-LQO of `degraded` against `reference` after alignment, with the delay."""
    from pesq import PesqError, pesq

    ref, deg, delay = align(reference, degraded)
    if mode == "wb" and ref.rate != 16000:
        raise SpeechError(f"PESQ wb needs 16 kHz audio, {ref.name} is {ref.rate} Hz")
    if ref.rate not in (8000, 16000):
        raise SpeechError(f"PESQ needs 8 or 16 kHz audio, {ref.name} is {ref.rate} Hz")
    try:
        score = float(pesq(ref.rate, ref.samples, deg.samples, mode))
    except PesqError as exc:
        raise SpeechError(f"PESQ of {deg.name} against {ref.name}: {exc!r}") from exc
    return PesqResult(score, delay / ref.rate, len(ref.samples) / ref.rate)


def pesq_score(reference: AudioLike, degraded: AudioLike, mode: PesqMode = "nb") -> float:
    """P.862 MOS-LQO of `degraded` against `reference` after alignment."""
    return pesq_detail(reference, degraded, mode).score


def _same_rate(a: Audio, b: Audio) -> None:
    if a.rate != b.rate:
        raise SpeechError(f"{a.name} is {a.rate} Hz but {b.name} is {b.rate} Hz")


# ---- tones and levels ----------------------------------------------------------------------


def rms_dbov(source: AudioLike) -> float:
    """RMS level in dBov (-inf for digital silence)."""
    audio = as_audio(source)
    if len(audio.samples) == 0:
        raise SpeechError(f"{audio.name}: no samples")
    rms = float(np.sqrt(np.mean(np.square(audio.samples))))
    return 20.0 * math.log10(rms / FULL_SCALE) if rms > 0 else -math.inf


def dominant_frequency(source: AudioLike) -> float:
    """The frequency in Hz of the strongest spectral peak (Hann window, interpolated)."""
    audio = as_audio(source)
    if not audio.samples.any():
        raise SpeechError(f"{audio.name}: silent, no dominant frequency")
    windowed = (audio.samples - audio.samples.mean()) * np.hanning(len(audio.samples))
    magnitude = np.abs(np.fft.rfft(windowed))
    peak = int(np.argmax(magnitude))
    offset = 0.0
    if 0 < peak < len(magnitude) - 1:
        # Parabola through the log magnitudes of the peak and its neighbours.
        left, centre, right = np.log(magnitude[peak - 1 : peak + 2] + 1e-12)
        denominator = left - 2 * centre + right
        offset = 0.5 * (left - right) / denominator if denominator else 0.0
    return (peak + offset) * audio.rate / len(audio.samples)


def tone_frames(
    source: AudioLike, frequency: float, *, share: float = 0.8
) -> npt.NDArray[np.bool_]:
    """Per 50 ms frame: does a tone at `frequency` carry at least `share` of its energy?

    A frame counts when it is louder than -50 dBov and the bins within 2 bins (40 Hz) of
    `frequency` hold `share` of its windowed energy; a Hann window keeps a pure tone's
    energy inside that band.
    """
    audio = as_audio(source)
    size = round(TONE_FRAME_SECONDS * audio.rate)
    count = len(audio.samples) // size
    if count == 0:
        return np.zeros(0, dtype=np.bool_)
    frames = audio.samples[: count * size].reshape(count, size)
    power = np.square(np.abs(np.fft.rfft(frames * np.hanning(size), axis=1)))
    centre = frequency * size / audio.rate
    bins = np.arange(power.shape[1])
    near = np.abs(bins - centre) <= 2.0
    total = power.sum(axis=1)
    loud = 10 * np.log10(np.mean(np.square(frames), axis=1) / FULL_SCALE**2 + 1e-30)
    ratio = np.divide(power[:, near].sum(axis=1), total, out=np.zeros(count), where=total > 0)
    result: npt.NDArray[np.bool_] = (loud > TONE_FLOOR_DBOV) & (ratio >= share)
    return result


def tone_seconds(source: AudioLike, frequency: float) -> float:
    """How many seconds of `source` carry the tone (50 ms frames, see `tone_frames`)."""
    return float(np.count_nonzero(tone_frames(source, frequency))) * TONE_FRAME_SECONDS


def tone_present(source: AudioLike, frequency: float, min_seconds: float) -> bool:
    """At least `min_seconds` of the tone at `frequency` are in `source`."""
    return tone_seconds(source, frequency) >= min_seconds


def sine(frequency: float, seconds: float, rate: int, *, dbov: float = -10.0) -> Audio:
    """A sine at `frequency` and RMS level `dbov` (test signals)."""
    t = np.arange(round(seconds * rate)) / rate
    amplitude = FULL_SCALE * math.sqrt(2) * 10 ** (dbov / 20)
    return Audio(amplitude * np.sin(2 * math.pi * frequency * t), rate, f"sine {frequency:g} Hz")
