"""Comfort noise (RFC 3389) and silence suppression for the transcoding path.

Pieces, each sans-IO (audio and payload bytes in, decisions and bytes out):

* :func:`parse_cn` / :func:`build_cn`: the CN payload of RFC 3389 3: a noise
  level byte in -dBov (3.1) and optional reflection coefficients of an
  all-pole model of the noise spectrum (3.2), parsed and kept but not used
  to shape the noise.
* :func:`level_dbov`: a frame's level in dBov, RFC 3389's scale (0 dBov is
  the level of a full-scale square wave, so a full-scale sine is -3 dBov).
* :class:`SilenceDetector`: decides frame by frame, for a G.711 stream
  toward a peer that negotiated CN, when to stop sending audio: after a
  hangover of quiet frames it sends one CN packet, then nothing but a CN
  refresh when the noise level moves or a refresh interval passes
  (RFC 3389 4), and marks the first audio packet after it (RFC 3551 4.1).
* :class:`ComfortNoiseSource`: noise frames at the level of the last CN
  packet received (or any level set), to fill the gaps a CN sender leaves.
* :class:`NoiseFloor`: the background level of a stream, measured on its
  recent frames, for the CN packet or the noise that stands for a sender's
  pause (DTX) when the sender said no level itself.
* :func:`crossfade`: a few milliseconds of linear crossfade, where generated
  audio (noise, a DTMF tone) and real audio meet, so that nothing clicks.

How Opus DTX and RFC 3389 CN interwork. With DTX on, libopus stops coding
after about 200 ms of silence: each 20 ms frame then encodes to a packet of
one or two bytes, which RFC 7587 3.1.3 lets the sender skip, and one real
packet, a comfort noise update, goes out every 400 ms (libopus 1.3.1
measured: 20 frames skipped, then one sent, so every 420 ms at 20 ms frames;
tests/unit/test_comfort_noise.py checks it). The pipeline supplies both
directions from these pieces:

* App (Opus, DTX) to carrier (G.711): gaps between Opus packets during DTX
  are not losses. Decoding "no data" for them gives libopus's own comfort
  noise; encode that to G.711 and, when the carrier accepted CN, run it
  through :class:`SilenceDetector`, which turns it into one CN packet with
  the measured level and then silence on the wire. Without CN on the
  carrier leg, send the noise frames as G.711: a carrier never hears a
  dead line.
* Carrier (G.711 + CN) to app (Opus): after a CN packet the carrier sends
  nothing. Fill each frame of the gap from :class:`ComfortNoiseSource` at
  the CN level and encode it with DTX on; the encoder falls into DTX by
  itself and sends the app only the 400 ms updates. Audio resuming (RTP
  marker) ends the gap; a new CN packet updates the level.

Silence stays silence and nothing clicks: noise enters and leaves at the
level of the noise around it, and the loss concealer (gateway.media.tones)
is not used for DTX or CN gaps.
"""

from __future__ import annotations

import enum
import math
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Final

from gateway.media.tones import NoiseColour, NoiseGenerator, ToneError, frame_energy

__all__ = [
    "CN_PAYLOAD_TYPE",
    "MIN_LEVEL_DBOV",
    "CnAction",
    "ComfortNoise",
    "ComfortNoiseError",
    "ComfortNoiseSource",
    "NoiseFloor",
    "SilenceDecision",
    "SilenceDetector",
    "build_cn",
    "crossfade",
    "level_dbov",
    "parse_cn",
]

CN_PAYLOAD_TYPE: Final = 13
"""Static RTP payload type of CN at 8000 Hz (RFC 3551 6, Table 4)."""

MIN_LEVEL_DBOV: Final = -127
"""Lowest level a CN payload can carry (RFC 3389 3.1), and the level of digital silence."""

_FULL_SCALE: Final = 32768.0
_LEVEL_MASK: Final = 0x7F
_UNUSED_BIT: Final = 0x80
_MAX_COEFFICIENTS: Final = 255


class ComfortNoiseError(ValueError):
    """A malformed CN payload, or a setting out of range."""


@dataclass(frozen=True, slots=True)
class ComfortNoise:
    """The content of one CN payload (RFC 3389 3)."""

    level_dbov: int
    """Noise level, 0 down to -127 dBov."""
    coefficients: bytes = b""
    """Quantised reflection coefficients, one byte each, first order first."""

    @property
    def reflection_coefficients(self) -> tuple[float, ...]:
        """The coefficients as values in (-1, 1).

        Decoded as (q - 127) / 128, the inverse of the uniform 8-bit
        quantiser common implementations (WebRTC's CNG among them) use.
        """
        return tuple((q - 127) / 128 for q in self.coefficients)


def parse_cn(payload: bytes | bytearray | memoryview) -> ComfortNoise:
    """Read a CN payload: the level byte and any spectral bytes after it."""
    data = bytes(payload)
    if not data:
        raise ComfortNoiseError("Empty CN payload: the noise level byte is missing")
    if data[0] & _UNUSED_BIT:
        raise ComfortNoiseError(
            f"CN noise level byte 0x{data[0]:02x} has its unused top bit set (RFC 3389 3.1)"
        )
    return ComfortNoise(-(data[0] & _LEVEL_MASK), data[1:])


def build_cn(level_dbov: int, coefficients: bytes = b"") -> bytes:
    """A CN payload for a noise level in dBov (0 to -127), spectral bytes optional."""
    if not MIN_LEVEL_DBOV <= level_dbov <= 0:
        raise ComfortNoiseError(f"CN noise level {level_dbov} dBov is outside -127..0")
    if len(coefficients) > _MAX_COEFFICIENTS:
        raise ComfortNoiseError(
            f"{len(coefficients)} reflection coefficients exceed the {_MAX_COEFFICIENTS} supported"
        )
    return bytes([-level_dbov]) + bytes(coefficients)


def _dbov(mean_power: float) -> int:
    if mean_power <= 0.0:
        return MIN_LEVEL_DBOV
    level = 10.0 * math.log10(mean_power / (_FULL_SCALE * _FULL_SCALE))
    return max(MIN_LEVEL_DBOV, min(0, round(level)))


def level_dbov(pcm: bytes | bytearray | memoryview) -> int:
    """The RMS level of a frame of 16-bit PCM in whole dBov, clamped to 0..-127.

    An empty or all-zero frame is -127 dBov, the bottom of the CN scale.
    """
    try:
        energy, count = frame_energy(pcm)
    except ToneError as exc:
        raise ComfortNoiseError(str(exc)) from exc
    return _dbov(energy / count if count else 0.0)


class CnAction(enum.Enum):
    """What to send in place of one frame of a stream that may use CN."""

    AUDIO = "audio"
    """Send the frame as audio."""
    SEND_CN = "send-cn"
    """Send a CN packet with the decision's level instead of the frame."""
    NOTHING = "nothing"
    """Send nothing: the last CN packet still describes the silence."""


@dataclass(frozen=True, slots=True)
class SilenceDecision:
    """The detector's verdict on one frame."""

    action: CnAction
    level_dbov: int
    """The frame's own level for AUDIO; the noise level for the CN packet otherwise."""
    marker: bool
    """AUDIO resuming after CN or nothing: the first packet of a talkspurt (RFC 3551 4.1)."""


class SilenceDetector:
    """Energy-based silence suppression with hangover, for one G.711 stream.

    A frame louder than ``threshold_dbov`` is speech and is sent at once.
    Quiet frames are still sent as audio until they have lasted
    ``hangover_ms`` (so word endings and short pauses pass untouched); then
    one CN packet describes the noise, and further CN packets follow only
    when its level moves by ``level_step_db`` or ``refresh_ms`` passes.
    Time is counted in samples fed, at ``sample_rate``.
    """

    __slots__ = (
        "_hangover",
        "_noise_power",
        "_quiet_run",
        "_refresh",
        "_sent_level",
        "_since_cn",
        "_smoothing",
        "_suppressing",
        "level_step_db",
        "threshold_dbov",
    )

    def __init__(
        self,
        *,
        threshold_dbov: int = -50,
        hangover_ms: int = 200,
        refresh_ms: int = 1000,
        level_step_db: int = 3,
        smoothing_ms: int = 200,
        sample_rate: int = 8000,
    ) -> None:
        if not MIN_LEVEL_DBOV < threshold_dbov < 0:
            raise ComfortNoiseError(f"threshold_dbov {threshold_dbov} is outside -126..-1")
        for name, value in (
            ("hangover_ms", hangover_ms),
            ("refresh_ms", refresh_ms),
            ("level_step_db", level_step_db),
            ("smoothing_ms", smoothing_ms),
            ("sample_rate", sample_rate),
        ):
            if value <= 0:
                raise ComfortNoiseError(f"{name} must be positive, got {value}")
        self.threshold_dbov: Final = threshold_dbov
        self.level_step_db: Final = level_step_db
        self._hangover = hangover_ms * sample_rate // 1000
        self._refresh = refresh_ms * sample_rate // 1000
        self._smoothing = smoothing_ms * sample_rate // 1000
        self._suppressing = False
        self._quiet_run = 0
        self._since_cn = 0
        self._noise_power = 0.0
        self._sent_level = MIN_LEVEL_DBOV

    @property
    def suppressing(self) -> bool:
        """Whether the stream is in a CN period (audio not being sent)."""
        return self._suppressing

    @property
    def noise_level_dbov(self) -> int:
        """The smoothed level of the current quiet stretch."""
        return _dbov(self._noise_power)

    def feed(self, pcm: bytes | bytearray | memoryview) -> SilenceDecision:
        """Decide what to send for the next frame."""
        try:
            energy, count = frame_energy(pcm)
        except ToneError as exc:
            raise ComfortNoiseError(str(exc)) from exc
        if count == 0:
            raise ComfortNoiseError("Empty frame: the silence detector needs samples")
        power = energy / count
        level = _dbov(power)
        if level > self.threshold_dbov:
            return self._speech(level)
        quiet_before = self._quiet_run
        self._track_noise(power, count)
        if not self._suppressing:
            if quiet_before < self._hangover:
                return SilenceDecision(CnAction.AUDIO, level, False)
            self._suppressing = True
            return self._send_cn()
        self._since_cn += count
        noise = self.noise_level_dbov
        if self._since_cn >= self._refresh or abs(noise - self._sent_level) >= self.level_step_db:
            return self._send_cn()
        return SilenceDecision(CnAction.NOTHING, noise, False)

    def _speech(self, level: int) -> SilenceDecision:
        resumed = self._suppressing
        self._suppressing = False
        self._quiet_run = 0
        return SilenceDecision(CnAction.AUDIO, level, resumed)

    def _track_noise(self, power: float, count: int) -> None:
        if self._quiet_run == 0:
            self._noise_power = power
        else:
            # Exponential average over about smoothing_ms, so one odd
            # frame neither triggers a CN refresh nor sets its level.
            weight = min(1.0, count / self._smoothing)
            self._noise_power += (power - self._noise_power) * weight
        self._quiet_run += count

    def _send_cn(self) -> SilenceDecision:
        self._since_cn = 0
        self._sent_level = self.noise_level_dbov
        return SilenceDecision(CnAction.SEND_CN, self._sent_level, False)


class ComfortNoiseSource:
    """Noise frames at the level a CN peer described, for one stream's gaps.

    White noise has the same level at any sample rate, so one source serves
    the 8 kHz G.711 side and the 48 kHz Opus side alike; "hoth" noise is
    shaped for 8 kHz.
    """

    __slots__ = ("_generator",)

    def __init__(
        self,
        level_dbov: int = -70,
        *,
        colour: NoiseColour = "white",
        seed: int = 1,
        max_frame_samples: int = 960,
    ) -> None:
        if not MIN_LEVEL_DBOV <= level_dbov <= 0:
            raise ComfortNoiseError(f"CN noise level {level_dbov} dBov is outside -127..0")
        try:
            self._generator = NoiseGenerator(
                float(level_dbov), colour=colour, seed=seed, max_frame_samples=max_frame_samples
            )
        except ToneError as exc:
            raise ComfortNoiseError(str(exc)) from exc

    @property
    def level_dbov(self) -> int:
        """The level of the noise made from now on."""
        return round(self._generator.level_dbov)

    @level_dbov.setter
    def level_dbov(self, level: int) -> None:
        if not MIN_LEVEL_DBOV <= level <= 0:
            raise ComfortNoiseError(f"CN noise level {level} dBov is outside -127..0")
        self._generator.level_dbov = float(level)

    def receive(self, payload: bytes | bytearray | memoryview) -> ComfortNoise:
        """Take the level of a received CN payload; returns what it said."""
        noise = parse_cn(payload)
        self.level_dbov = noise.level_dbov
        return noise

    def generate(self, samples: int) -> bytes:
        """The next ``samples`` of noise."""
        try:
            return self._generator.generate(samples)
        except ToneError as exc:
            raise ComfortNoiseError(str(exc)) from exc

    def close(self) -> None:
        """Free the native noise generator now."""
        self._generator.close()


class NoiseFloor:
    """The background noise level of a stream, from its quietest recent frames.

    Minimum statistics: over the last ``window_ms`` of frames, the quietest
    frame is taken as background, and the frames within 3 dB of it are
    averaged (the minimum alone of a few dozen frames of steady noise sits
    about 1.5 dB under its mean). Speech has pauses within a second or two,
    so the window's quietest frames are background even mid-talk; a sender
    that goes into DTX has sent some 200 ms of background just before.
    Feed decoded audio only, never concealment or generated noise.
    """

    __slots__ = ("_frames", "_samples", "_window")

    def __init__(self, *, window_ms: int = 1500, sample_rate: int = 8000) -> None:
        if window_ms <= 0 or sample_rate <= 0:
            raise ComfortNoiseError(
                f"window_ms and sample_rate must be positive, got {window_ms}, {sample_rate}"
            )
        self._window = window_ms * sample_rate // 1000
        self._frames: deque[tuple[float, int]] = deque()
        self._samples = 0

    def observe(self, pcm: bytes | bytearray | memoryview) -> int:
        """Take one frame into the window; returns its own level in dBov."""
        try:
            energy, count = frame_energy(pcm)
        except ToneError as exc:
            raise ComfortNoiseError(str(exc)) from exc
        if count == 0:
            return MIN_LEVEL_DBOV
        power = energy / count
        frames = self._frames
        frames.append((power, count))
        self._samples += count
        while self._samples - frames[0][1] >= self._window:
            self._samples -= frames.popleft()[1]
        return _dbov(power)

    @property
    def level_dbov(self) -> int | None:
        """The background level in whole dBov; None before the first frame."""
        if not self._frames:
            return None
        quietest = min(power for power, _ in self._frames)
        near = [(power, count) for power, count in self._frames if power <= 2.0 * quietest]
        total = sum(count for _, count in near)
        return _dbov(sum(power * count for power, count in near) / total)

    def reset(self) -> None:
        """Forget the frames seen (a new stream)."""
        self._frames.clear()
        self._samples = 0


def crossfade(old: bytes | bytearray | memoryview, new: bytes | bytearray | memoryview) -> bytes:
    """``old`` fading out while ``new`` fades in, linearly, over their common length.

    Both are 16-bit PCM of the same length. Used only where real and
    generated audio meet (a few ms at the edges of a pause or a tone), so it
    runs in Python: a handful of times per talkspurt, never on every packet.
    """
    if len(old) != len(new) or len(old) % 2:
        raise ComfortNoiseError(
            f"crossfade needs two PCM fragments of one even length, got {len(old)} and {len(new)}"
        )
    fading, rising = array("h"), array("h")
    fading.frombytes(old)
    rising.frombytes(new)
    steps = len(fading) + 1
    mixed = array(
        "h",
        (
            a + (b - a) * (i + 1) // steps
            for i, (a, b) in enumerate(zip(fading, rising, strict=True))
        ),
    )
    return mixed.tobytes()
