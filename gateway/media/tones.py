"""In-band telephony signals over spandsp: DTMF, fax tones, loss concealment, noise.

The transcoding path works on 8 kHz linear audio (the G.711 side) for the
signals that live in the voice band, and these are the blocks it uses:

* :class:`DtmfDetector` finds DTMF digits (ITU-T Q.23/Q.24) in audio from
  a leg without telephone-event, with the start and end of each digit as
  stream sample positions, so the digit can become RFC 4733 events with an
  RTP timestamp and a duration (see :mod:`gateway.media.dtmf`).
* :class:`DtmfGenerator` plays a digit as a continuous dual tone for as long
  as an RFC 4733 event lasts, toward a leg without telephone-event.
* :class:`FaxToneDetector` hears the fax calling tone (CNG, 1100 Hz, T.30),
  the answer tone (CED/ANS at 2100 Hz, ITU-T V.25, with phase reversals and
  amplitude modulation as V.8 adds them) and the V.21 preamble, upon which a
  call switches to G.711 pass-through.
* :class:`PacketLossConcealer` fills lost G.711 frames (spandsp's PLC, after
  G.711 Appendix I), fading to silence within 50 ms of loss.
* :class:`NoiseGenerator` makes noise at a level in dBov for comfort noise
  (RFC 3389; see :mod:`gateway.media.comfort_noise`).

Every call that takes or gives audio is one native call per frame into
buffers allocated at construction. spandsp reports tones through C
callbacks that fill a report array (native/build_tones.py), never Python.
Linear PCM is mono 16-bit signed samples in host byte order, little-endian
on every target the gateway ships for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway._native_tones import ffi, lib

__all__ = [
    "DTMF_DIGITS",
    "DTMF_END_LATENCY",
    "DTMF_FREQUENCIES",
    "DTMF_START_LATENCY",
    "MAX_FRAME_SAMPLES",
    "SAMPLE_RATE",
    "DtmfDetector",
    "DtmfEvent",
    "DtmfEventKind",
    "DtmfGenerator",
    "FaxTone",
    "FaxToneDetector",
    "NoiseColour",
    "NoiseGenerator",
    "PacketLossConcealer",
    "ToneError",
    "frame_energy",
]

SAMPLE_RATE: Final = 8000
"""The only rate spandsp's detectors are tuned for; resample other legs first."""

MAX_FRAME_SAMPLES: Final = 8000
"""Largest frame one call takes (1 s); frames are 10 to 120 ms in practice."""

_DEFAULT_FRAME_SAMPLES: Final = 960  # 120 ms: the longest Opus packet

DTMF_DIGITS: Final = "0123456789*#ABCD"

# ITU-T Q.23: one tone from the low (row) group and one from the high
# (column) group for each key.
_ROWS: Final = (697, 770, 852, 941)
_COLUMNS: Final = (1209, 1336, 1477, 1633)
_KEYPAD: Final = ("123A", "456B", "789C", "*0#D")
DTMF_FREQUENCIES: Final[dict[str, tuple[int, int]]] = {
    key: (_ROWS[row], _COLUMNS[column])
    for row, keys in enumerate(_KEYPAD)
    for column, key in enumerate(keys)
}

# spandsp's receiver decides per block of 102 samples and needs two blocks
# that agree, so it confirms a digit some time after its onset, and its end
# some time after the tone stops. Measured for all 16 digits at -10 and
# -22 dBm0 over every phase of the tone against the block grid: 184 to 290
# samples (start) and 114 to 228 (end). The midpoints below put the
# estimated onset and end within 57 samples (7 ms) of the truth.
DTMF_START_LATENCY: Final = 237
DTMF_END_LATENCY: Final = 171

# RFC 4733 2.3.4: DTMF power 0 to -63 dBm0.
_MIN_VOLUME_DBM0: Final = -63
# A sine's level is its total power; each of the two DTMF tones carries half.
_HALF_POWER_DB: Final = 3

_NOISE_CLASSES: Final = {"white": lib.NOISE_CLASS_AWGN, "hoth": lib.NOISE_CLASS_HOTH}
# spandsp's AWGN sums this many uniform numbers per sample (its "quality"):
# enough to look Gaussian, cheap enough for every silent frame of a call.
_NOISE_QUALITY: Final = 7
# RFC 3389 3.1: levels from 0 down to -127 dBov.
_MIN_DBOV: Final = -127

NoiseColour = Literal["white", "hoth"]


class ToneError(ValueError):
    """Input or settings a tone block refuses, or a failure inside spandsp."""


class DtmfEventKind(enum.Enum):
    """Whether a :class:`DtmfEvent` reports the start or the end of a digit."""

    START = "start"
    END = "end"


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """A digit starting or ending, in samples since the detector was created.

    ``sample`` is the estimated onset (START) or stop (END) of the tone,
    which is what an RFC 4733 event's timestamp and duration describe;
    ``detected_at`` is the stream position at which the detector knew it,
    always later. For END, ``duration`` is the estimated length of the
    tone; it is 0 for START.
    """

    kind: DtmfEventKind
    digit: str
    sample: int
    detected_at: int
    duration: int
    level_dbm0: int
    """Level of the tone pair measured at its start (END repeats it)."""


class FaxTone(enum.Enum):
    """The modem and fax signals :class:`FaxToneDetector` reports."""

    CNG = "cng"
    """Fax calling tone: 1100 Hz, 0.5 s on, 3 s off (T.30)."""
    CED = "ced"
    """Answer tone, 2100 Hz unbroken: fax CED or modem ANS (V.25)."""
    ANS_PR = "ans-pr"
    """2100 Hz with phase reversals every 450 ms: echo canceller disable (V.25)."""
    ANSAM = "ansam"
    """2100 Hz amplitude-modulated at 15 Hz (V.8)."""
    ANSAM_PR = "ansam-pr"
    """ANSam with phase reversals (V.8, V.34 and faster modems)."""
    V21_PREAMBLE = "v21-preamble"
    """HDLC flags at V.21 300 bit/s: a fax answering without CED."""


_FAX_TONES: Final = {
    lib.MODEM_CONNECT_TONES_FAX_CNG: FaxTone.CNG,
    lib.MODEM_CONNECT_TONES_ANS: FaxTone.CED,
    lib.MODEM_CONNECT_TONES_ANS_PR: FaxTone.ANS_PR,
    lib.MODEM_CONNECT_TONES_ANSAM: FaxTone.ANSAM,
    lib.MODEM_CONNECT_TONES_ANSAM_PR: FaxTone.ANSAM_PR,
    lib.MODEM_CONNECT_TONES_FAX_PREAMBLE: FaxTone.V21_PREAMBLE,
}


def _check_rate(sample_rate: int) -> None:
    if sample_rate != SAMPLE_RATE:
        raise ToneError(
            f"Sample rate {sample_rate} Hz is not supported: spandsp's tone blocks run at "
            f"{SAMPLE_RATE} Hz, resample first"
        )


def _check_max_frame(max_frame_samples: int) -> None:
    if not 1 <= max_frame_samples <= MAX_FRAME_SAMPLES:
        raise ToneError(f"max_frame_samples {max_frame_samples} is outside 1..{MAX_FRAME_SAMPLES}")


def _size(pcm: bytes | bytearray | memoryview) -> int:
    return pcm.nbytes if isinstance(pcm, memoryview) else len(pcm)


def _allocated(state: Any, free: Any, what: str) -> Any:
    if state == ffi.NULL:
        raise ToneError(f"spandsp could not allocate {what}")
    return ffi.gc(state, free)


class _Frames:
    """A preallocated sample buffer that one frame at a time is copied into or out of."""

    __slots__ = ("_buf", "_bytes", "max_samples")

    def __init__(self, max_samples: int) -> None:
        _check_max_frame(max_samples)
        self.max_samples: Final = max_samples
        self._buf = ffi.new("int16_t[]", max_samples)
        # One byte view made once: slice assignment in and slicing out are the
        # cheapest copies cffi offers per frame.
        self._bytes = ffi.buffer(self._buf)

    def load(self, pcm: bytes | bytearray | memoryview) -> tuple[Any, int]:
        """Copy ``pcm`` in; return the buffer and its sample count."""
        size = _size(pcm)
        if size % 2:
            raise ToneError(f"PCM length {size} is odd: samples are 2 bytes each")
        count = size // 2
        if count > self.max_samples:
            raise ToneError(f"Frame of {count} samples exceeds the maximum of {self.max_samples}")
        self._bytes[:size] = pcm
        return self._buf, count

    def reserve(self, samples: int) -> Any:
        """The buffer, after checking that ``samples`` fit in it."""
        if not 0 <= samples <= self.max_samples:
            raise ToneError(f"Frame of {samples} samples is outside 0..{self.max_samples}")
        return self._buf

    def take(self, samples: int) -> bytes:
        out: bytes = self._bytes[: 2 * samples]
        return out


class _Native:
    """Holder of one native state, released by :meth:`close` or by the collector."""

    __slots__ = ("_state",)

    def __init__(self, state: Any) -> None:
        self._state: Any = state

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has released the native state."""
        return self._state is None

    def close(self) -> None:
        """Free the native state now; calling it again does nothing."""
        if self._state is not None:
            ffi.release(self._state)
            self._state = None

    def _live(self) -> Any:
        if self._state is None:
            raise ToneError(f"{type(self).__name__} is closed")
        return self._state


class DtmfDetector(_Native):
    """DTMF receiver for one direction of one call, over spandsp's ``dtmf_rx``.

    Feed every frame of the stream in order; positions count samples fed.
    spandsp accepts a digit from 40 ms of tone, twist up to 8 dB (normal)
    and 4 dB (reverse), levels down to about -26 dBm0 at 15 dB S/N.
    """

    __slots__ = ("_digit", "_frames", "_last_end", "_level", "_start")

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        *,
        max_frame_samples: int = _DEFAULT_FRAME_SAMPLES,
        filter_dialtone: bool = False,
        twist_db: int | None = None,
        reverse_twist_db: int | None = None,
        threshold_dbm0: int | None = None,
    ) -> None:
        _check_rate(sample_rate)
        self._frames = _Frames(max_frame_samples)
        super().__init__(
            _allocated(lib.edgegw_dtmf_rx_new(), lib.edgegw_dtmf_rx_free, "a DTMF receiver")
        )
        for name, value in (("twist_db", twist_db), ("reverse_twist_db", reverse_twist_db)):
            if value is not None and not 0 <= value <= 20:
                raise ToneError(f"{name} {value} is outside 0..20 dB")
        if threshold_dbm0 is not None and not -60 <= threshold_dbm0 <= 0:
            raise ToneError(f"threshold_dbm0 {threshold_dbm0} is outside -60..0 dBm0")
        # spandsp's "leave unchanged" values: negative twists, threshold <= -99.
        lib.edgegw_dtmf_rx_configure(
            self._state,
            int(filter_dialtone),
            -1 if twist_db is None else twist_db,
            -1 if reverse_twist_db is None else reverse_twist_db,
            -99 if threshold_dbm0 is None else threshold_dbm0,
        )
        self._digit: str | None = None
        self._start = 0
        self._level = 0
        self._last_end = 0

    @property
    def position(self) -> int:
        """Samples fed so far."""
        fed: int = self._live().fed
        return fed

    @property
    def digit(self) -> str | None:
        """The digit being received now, if any."""
        return self._digit

    def feed(self, pcm: bytes | bytearray | memoryview) -> list[DtmfEvent]:
        """Analyse the next frame; return the digit starts and ends it confirmed."""
        state = self._live()
        buf, count = self._frames.load(pcm)
        reported = lib.edgegw_dtmf_rx_feed(state, buf, count)
        if state.lost:
            raise ToneError(f"DTMF receiver lost {state.lost} reports: frame too long")
        events: list[DtmfEvent] = []
        for index in range(reported):
            report = state.reports[index]
            self._on_report(report.code, report.level, report.position, events)
        return events

    def _on_report(self, code: int, level: int, position: int, events: list[DtmfEvent]) -> None:
        # spandsp reports the new state only: a digit, or 0 for "no tone".
        if self._digit is not None:
            # A digit replacing another without a gap ends it at its own onset.
            latency = DTMF_START_LATENCY if code else DTMF_END_LATENCY
            end = max(self._start, position - latency)
            duration = end - self._start
            events.append(
                DtmfEvent(DtmfEventKind.END, self._digit, end, position, duration, self._level)
            )
            self._digit, self._last_end = None, end
        if code:
            # Estimates never put a digit's onset before the previous one's end.
            start = max(self._last_end, position - DTMF_START_LATENCY)
            self._digit, self._start, self._level = chr(code), start, level
            events.append(DtmfEvent(DtmfEventKind.START, chr(code), start, position, 0, level))


class DtmfGenerator(_Native):
    """Dual-tone generator that plays one DTMF digit for as long as it is asked.

    :meth:`start` begins (or switches to) a digit; :meth:`generate` returns
    the next samples of the tone, or silence when no digit is playing; the
    tone's phase runs on across frames, so consecutive frames join cleanly.
    """

    __slots__ = ("_digit", "_frames", "_volume")

    def __init__(
        self, sample_rate: int = SAMPLE_RATE, *, max_frame_samples: int = _DEFAULT_FRAME_SAMPLES
    ) -> None:
        _check_rate(sample_rate)
        self._frames = _Frames(max_frame_samples)
        super().__init__(_allocated(lib.edgegw_tone_new(), lib.tone_gen_free, "a tone generator"))
        self._digit: str | None = None
        self._volume = 0

    @property
    def digit(self) -> str | None:
        """The digit playing now, if any."""
        return self._digit

    def start(self, digit: str, volume_dbm0: int = -10) -> None:
        """Play ``digit`` at a total power of ``volume_dbm0`` (0 to -63 dBm0).

        Starting the digit that is already playing at the same volume
        carries on the tone, as repeated RFC 4733 updates for one event must.
        """
        key = digit.upper() if len(digit) == 1 else digit
        if key not in DTMF_FREQUENCIES:
            raise ToneError(f"Not a DTMF digit: {digit!r} (expected one of {DTMF_DIGITS})")
        if not _MIN_VOLUME_DBM0 <= volume_dbm0 <= 0:
            raise ToneError(f"DTMF volume {volume_dbm0} dBm0 is outside -63..0")
        if key == self._digit and volume_dbm0 == self._volume:
            return
        low, high = DTMF_FREQUENCIES[key]
        level = round(volume_dbm0 - _HALF_POWER_DB)
        if lib.edgegw_tone_start(self._live(), low, level, high, level) != 0:
            raise ToneError(f"spandsp could not set up the tone for digit {key!r}")
        self._digit, self._volume = key, volume_dbm0

    def stop(self) -> None:
        """End the digit; later frames are silence until the next :meth:`start`."""
        self._digit = None

    def generate(self, samples: int) -> bytes:
        """The next ``samples`` of the digit playing, or of silence."""
        buf = self._frames.reserve(samples)
        state = self._live()
        if self._digit is None:
            return bytes(2 * samples)
        made = lib.tone_gen(state, buf, samples)
        if made != samples:
            raise ToneError(f"spandsp generated {made} of {samples} tone samples")
        return self._frames.take(samples)


class FaxToneDetector(_Native):
    """Listens for fax and modem connect tones in one direction of one call.

    CNG is confirmed after 415 ms of 1100 Hz, CED/ANS after 550 ms of
    unbroken 2100 Hz, ANS with phase reversals after three 450 ms cycles.
    The report is as precise as the frame: its position is the frame's end.
    """

    __slots__ = ("_detected", "_frames", "_position")

    def __init__(
        self, sample_rate: int = SAMPLE_RATE, *, max_frame_samples: int = _DEFAULT_FRAME_SAMPLES
    ) -> None:
        _check_rate(sample_rate)
        self._frames = _Frames(max_frame_samples)
        super().__init__(
            _allocated(lib.edgegw_fax_rx_new(), lib.edgegw_fax_rx_free, "fax tone receivers")
        )
        self._detected: FaxTone | None = None
        self._position: int | None = None

    @property
    def detected(self) -> FaxTone | None:
        """The first tone heard on this stream, if any."""
        return self._detected

    @property
    def detected_at(self) -> int | None:
        """Stream position (samples) of the end of the frame that confirmed it."""
        return self._position

    def feed(self, pcm: bytes | bytearray | memoryview) -> FaxTone | None:
        """Analyse the next frame; return a tone that this frame confirmed, if any."""
        state = self._live()
        buf, count = self._frames.load(pcm)
        reported = lib.edgegw_fax_rx_feed(state, buf, count)
        found: FaxTone | None = None
        for index in range(reported):
            tone = _FAX_TONES.get(state.reports[index].code)
            if tone is not None and found is None:
                found = tone
                if self._detected is None:
                    self._detected, self._position = tone, state.reports[index].position
        return found


class PacketLossConcealer(_Native):
    """Loss concealment for one 8 kHz stream, over spandsp's ``plc``.

    Pass every frame that arrived through :meth:`good` (it keeps the
    history the concealment repeats, and smooths the first frame after a
    loss into the synthetic signal) and ask :meth:`conceal` for each frame
    that did not. Concealment repeats the last pitch period and fades out
    linearly, reaching silence after 50 ms of continuous loss.
    """

    __slots__ = ("_frames", "_missing")

    def __init__(
        self, sample_rate: int = SAMPLE_RATE, *, max_frame_samples: int = _DEFAULT_FRAME_SAMPLES
    ) -> None:
        _check_rate(sample_rate)
        self._frames = _Frames(max_frame_samples)
        super().__init__(
            _allocated(lib.plc_init(ffi.NULL), lib.plc_free, "a packet loss concealer")
        )
        self._missing = 0

    @property
    def concealed_samples(self) -> int:
        """Samples concealed since the last good frame."""
        return self._missing

    def good(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Record a received frame and return it as it should be played."""
        state = self._live()
        buf, count = self._frames.load(pcm)
        lib.plc_rx(state, buf, count)
        self._missing = 0
        return self._frames.take(count)

    def conceal(self, samples: int) -> bytes:
        """Synthesise ``samples`` in place of a lost frame."""
        buf = self._frames.reserve(samples)
        made = lib.plc_fillin(self._live(), buf, samples)
        if made != samples:
            raise ToneError(f"spandsp concealed {made} of {samples} samples")
        self._missing += samples
        return self._frames.take(samples)


class NoiseGenerator(_Native):
    """Noise at a level in dBov (0 dBov: a full-scale square wave, RFC 3389 3.1).

    ``colour`` "white" is flat Gaussian noise, the model RFC 3389 implies
    when a CN payload carries no spectrum; "hoth" is shaped like room noise
    (IEEE 269 Hoth spectrum), which sounds more natural at 8 kHz.
    """

    __slots__ = ("_colour", "_frames", "_level", "_seed")

    def __init__(
        self,
        level_dbov: float = -70.0,
        *,
        colour: NoiseColour = "white",
        seed: int = 1,
        max_frame_samples: int = _DEFAULT_FRAME_SAMPLES,
    ) -> None:
        if colour not in _NOISE_CLASSES:
            names = ", ".join(repr(name) for name in _NOISE_CLASSES)
            raise ToneError(f"Unknown noise colour {colour!r}: expected one of {names}")
        self._frames = _Frames(max_frame_samples)
        self._colour: Final = colour
        self._seed = seed & 0x7FFFFFFF
        self._level = self._checked_level(level_dbov)
        super().__init__(_allocated(self._init(ffi.NULL), lib.noise_free, "a noise generator"))

    @property
    def colour(self) -> NoiseColour:
        """The spectrum of the noise."""
        return self._colour

    @property
    def level_dbov(self) -> float:
        """The level of the noise made from now on."""
        return self._level

    @level_dbov.setter
    def level_dbov(self, level: float) -> None:
        state = self._live()
        checked = self._checked_level(level)
        if checked == self._level:
            return
        # spandsp fixes the level at init; a fresh seed keeps the new noise
        # from replaying the sequence the old level began with.
        self._seed = (self._seed * 1103515245 + 12345) & 0x7FFFFFFF
        self._level = checked
        self._init(state)

    def generate(self, samples: int) -> bytes:
        """The next ``samples`` of noise."""
        buf = self._frames.reserve(samples)
        lib.edgegw_noise_fill(self._live(), buf, samples)
        return self._frames.take(samples)

    def _init(self, state: Any) -> Any:
        return lib.noise_init_dbov(
            state, self._seed, self._level, _NOISE_CLASSES[self._colour], _NOISE_QUALITY
        )

    @staticmethod
    def _checked_level(level: float) -> float:
        if not _MIN_DBOV <= level <= 0:
            raise ToneError(f"Noise level {level} dBov is outside -127..0")
        return float(level)


def frame_energy(pcm: bytes | bytearray | memoryview) -> tuple[float, int]:
    """Sum of squared samples of a frame and its sample count (one native call)."""
    size = _size(pcm)
    if size % 2:
        raise ToneError(f"PCM length {size} is odd: samples are 2 bytes each")
    if size == 0:
        return 0.0, 0
    samples = ffi.from_buffer("int16_t[]", pcm)
    energy: float = lib.edgegw_sum_squares(samples, size // 2)
    return energy, size // 2
