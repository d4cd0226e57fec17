"""Opus encoder and decoder over the native cffi binding to libopus.

Implements the codec side of the Opus RTP payload format (RFC 7587): one
RTP packet carries one Opus packet (RFC 6716 3), encoded from one frame of
2.5 to 60 ms (libopus also takes 80 to 120 ms). Each :meth:`OpusEncoder.encode`
and :meth:`OpusDecoder.decode` is one native call for the whole packet.
Loss is handled as RFC 6716 4.4 and 2.1.7 describe: packet loss concealment
(decoding "no data") and recovery of a lost frame from the in-band FEC
(LBRR) data carried by the packet after it.

Linear PCM is 16-bit signed samples in host byte order, little-endian on
every target the gateway ships for, with channels interleaved. Codec state
lives in cffi-owned memory initialised in place (``opus_*_init``), so it is
released with the Python object and needs no destroy call.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from gateway._native_opus import ffi, lib

__all__ = [
    "MAX_PACKET_BYTES",
    "SAMPLE_RATES",
    "OpusDecoder",
    "OpusEncoder",
    "OpusError",
    "opus_version",
]

SAMPLE_RATES: Final = (8000, 12000, 16000, 24000, 48000)

# RFC 6716 3.2.1: one frame is at most 1275 bytes, and one frame per packet
# is what the gateway sends.
MAX_PACKET_BYTES: Final = 1275

# 120 ms at 48 kHz: the longest packet libopus encodes or decodes.
_MAX_FRAME_SAMPLES_48K: Final = 5760

_APPLICATIONS: Final = {
    "voip": lib.OPUS_APPLICATION_VOIP,
    "audio": lib.OPUS_APPLICATION_AUDIO,
    "restricted-lowdelay": lib.OPUS_APPLICATION_RESTRICTED_LOWDELAY,
}

_SIGNALS: Final = {
    "auto": lib.OPUS_AUTO,
    "voice": lib.OPUS_SIGNAL_VOICE,
    "music": lib.OPUS_SIGNAL_MUSIC,
}

Application = Literal["voip", "audio", "restricted-lowdelay"]
Signal = Literal["auto", "voice", "music"]


class OpusError(ValueError):
    """A failure of libopus (its message included) or input it cannot take."""


def opus_version() -> str:
    """Version string of the linked libopus, e.g. ``"libopus 1.3.1"``."""
    version: str = ffi.string(lib.opus_get_version_string()).decode("ascii")
    return version


def _strerror(code: int) -> str:
    message: str = ffi.string(lib.opus_strerror(code)).decode("ascii")
    return message


def _check(code: int, what: str) -> int:
    """Return a non-negative libopus result, or raise with the library's text."""
    if code < 0:
        raise OpusError(f"{what} failed: {_strerror(code)}")
    return code


def _check_format(sample_rate: int, channels: int) -> None:
    if sample_rate not in SAMPLE_RATES:
        rates = ", ".join(str(rate) for rate in SAMPLE_RATES)
        raise OpusError(f"Opus sample rate {sample_rate} Hz is not supported: use one of {rates}")
    if channels not in (1, 2):
        raise OpusError(f"Opus channel count {channels} is not supported: use 1 or 2")


def _state(size: int, ctype: str) -> tuple[Any, Any]:
    """cffi-owned memory for codec state (8-byte aligned) and a typed pointer to it."""
    memory = ffi.new("uint64_t[]", (size + 7) // 8)
    return memory, ffi.cast(ctype, memory)


def _size(data: bytes | bytearray | memoryview) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


class OpusEncoder:
    """Encoder for one Opus stream (one per call leg).

    The CTL settings are applied once at construction; the input and output
    buffers are allocated once, so an instance is not safe to share between
    threads, which the media path never does.
    """

    __slots__ = (
        "_max_bytes",
        "_memory",
        "_out_buf",
        "_out_bytes",
        "_pcm_buf",
        "_pcm_bytes",
        "_st",
        "channels",
        "sample_rate",
    )

    def __init__(
        self,
        sample_rate: int = 48000,
        channels: int = 1,
        *,
        bitrate: int = 32000,
        complexity: int = 5,
        fec: bool = True,
        packet_loss_percent: int = 5,
        dtx: bool = False,
        application: Application = "voip",
        signal: Signal = "auto",
    ) -> None:
        _check_format(sample_rate, channels)
        if application not in _APPLICATIONS:
            names = ", ".join(repr(name) for name in _APPLICATIONS)
            raise OpusError(f"Unknown Opus application {application!r}: expected one of {names}")
        if signal not in _SIGNALS:
            names = ", ".join(repr(name) for name in _SIGNALS)
            raise OpusError(f"Unknown Opus signal {signal!r}: expected one of {names}")
        self.sample_rate: Final = sample_rate
        self.channels: Final = channels
        self._memory, self._st = _state(lib.opus_encoder_get_size(channels), "OpusEncoder *")
        _check(
            lib.opus_encoder_init(self._st, sample_rate, channels, _APPLICATIONS[application]),
            "opus_encoder_init",
        )
        self._configure(bitrate, complexity, fec, packet_loss_percent, dtx, signal)
        samples = _MAX_FRAME_SAMPLES_48K * sample_rate // 48000 * channels
        self._pcm_buf = ffi.new("opus_int16[]", samples)
        self._out_buf = ffi.new("unsigned char[]", MAX_PACKET_BYTES)
        self._max_bytes = 2 * samples
        # Byte views made once: slice assignment and slicing are cheaper per
        # packet than ffi.memmove / ffi.buffer.
        self._pcm_bytes = ffi.buffer(self._pcm_buf)
        self._out_bytes = ffi.buffer(self._out_buf)

    def _configure(
        self, bitrate: int, complexity: int, fec: bool, loss: int, dtx: bool, signal: Signal
    ) -> None:
        st = self._st
        _check(lib.edgegw_opus_set_bitrate(st, bitrate), f"OPUS_SET_BITRATE({bitrate})")
        _check(lib.edgegw_opus_set_complexity(st, complexity), f"OPUS_SET_COMPLEXITY({complexity})")
        _check(lib.edgegw_opus_set_inband_fec(st, int(fec)), f"OPUS_SET_INBAND_FEC({int(fec)})")
        _check(lib.edgegw_opus_set_packet_loss_perc(st, loss), f"OPUS_SET_PACKET_LOSS_PERC({loss})")
        _check(lib.edgegw_opus_set_dtx(st, int(dtx)), f"OPUS_SET_DTX({int(dtx)})")
        _check(lib.edgegw_opus_set_signal(st, _SIGNALS[signal]), f"OPUS_SET_SIGNAL({signal})")

    def encode(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Encode one frame (2.5, 5, 10, 20, 40 or 60 ms) of PCM to one Opus packet.

        With DTX on, a packet of 2 bytes or less means "no audio to send"
        (RFC 7587 3.3: the sender may skip it).
        """
        size = _size(pcm)
        frame_bytes = 2 * self.channels
        if size % frame_bytes:
            raise OpusError(
                f"PCM length {size} is not a whole number of {self.channels}-channel 16-bit samples"
            )
        if size > self._max_bytes:
            raise OpusError(
                f"PCM frame of {size // frame_bytes} samples exceeds the 120 ms maximum of "
                f"{self._max_bytes // frame_bytes} at {self.sample_rate} Hz"
            )
        frames = size // frame_bytes
        self._pcm_bytes[:size] = pcm
        written = lib.opus_encode(self._st, self._pcm_buf, frames, self._out_buf, MAX_PACKET_BYTES)
        if written < 0:
            raise OpusError(
                f"opus_encode of {frames} samples at {self.sample_rate} Hz failed: "
                f"{_strerror(written)} (a frame is 2.5, 5, 10, 20, 40 or 60 ms)"
            )
        packet: bytes = self._out_bytes[:written]
        return packet


class OpusDecoder:
    """Decoder for one Opus stream (one per call leg), with PLC and FEC recovery.

    The output buffer holds the longest packet (120 ms) and is allocated
    once; an instance is not safe to share between threads.
    """

    __slots__ = (
        "_max_samples",
        "_memory",
        "_pcm_buf",
        "_pcm_bytes",
        "_st",
        "channels",
        "sample_rate",
    )

    def __init__(self, sample_rate: int = 48000, channels: int = 1) -> None:
        _check_format(sample_rate, channels)
        self.sample_rate: Final = sample_rate
        self.channels: Final = channels
        self._memory, self._st = _state(lib.opus_decoder_get_size(channels), "OpusDecoder *")
        _check(lib.opus_decoder_init(self._st, sample_rate, channels), "opus_decoder_init")
        self._max_samples = _MAX_FRAME_SAMPLES_48K * sample_rate // 48000
        self._pcm_buf = ffi.new("opus_int16[]", self._max_samples * channels)
        self._pcm_bytes = ffi.buffer(self._pcm_buf)

    def decode(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Decode one Opus packet to PCM (every frame it carries)."""
        size = _size(payload)
        if size == 0:
            raise OpusError("Empty Opus payload: use conceal() for a lost packet")
        data = ffi.from_buffer("unsigned char[]", payload)
        return self._run(data, size, self._max_samples, 0, "opus_decode")

    def conceal(self, samples: int) -> bytes:
        """PCM for ``samples`` per channel of a lost packet, by loss concealment.

        ``samples`` must be a multiple of 2.5 ms at the decoder's rate.
        """
        self._check_samples(samples)
        return self._run(ffi.NULL, 0, samples, 0, "opus_decode (concealment)")

    def recover(self, next_payload: bytes | bytearray | memoryview, samples: int) -> bytes:
        """Rebuild a lost packet of ``samples`` per channel from the FEC data of the next.

        Decode ``next_payload`` itself with :meth:`decode` afterwards. A next
        packet without FEC data yields concealment, as libopus does.
        """
        self._check_samples(samples)
        size = _size(next_payload)
        if size == 0:
            raise OpusError("Empty Opus payload: FEC recovery needs the next packet")
        data = ffi.from_buffer("unsigned char[]", next_payload)
        return self._run(data, size, samples, 1, "opus_decode (FEC)")

    def _check_samples(self, samples: int) -> None:
        if not 0 < samples <= self._max_samples:
            raise OpusError(
                f"Lost frame of {samples} samples is outside 1..{self._max_samples} "
                f"at {self.sample_rate} Hz"
            )

    def _run(self, data: Any, size: int, samples: int, fec: int, what: str) -> bytes:
        decoded = lib.opus_decode(self._st, data, size, self._pcm_buf, samples, fec)
        if decoded < 0:
            raise OpusError(f"{what} failed: {_strerror(decoded)}")
        pcm: bytes = self._pcm_bytes[: 2 * decoded * self.channels]
        return pcm
