"""G.722 encoder and decoder (64 kbit/s) over the native cffi binding to spandsp.

Implements the codec side of the G722 RTP payload format (RFC 3551 4.5.2):
wideband audio sampled at 16 kHz, coded by ITU-T G.722 sub-band ADPCM at
64 kbit/s into one octet per two samples, so 20 ms (320 samples) is 160
octets. Each :meth:`G722Encoder.encode`, :meth:`G722Decoder.decode` and
:meth:`G722Decoder.conceal` is one native call for the whole packet.

RTP clock: RFC 3551 4.5.2 fixes the RTP timestamp rate of G722 at 8000 Hz
although the codec samples at 16 kHz (an error in RFC 1890 kept for
compatibility), so an RTP timestamp step of 160 is 20 ms = 320 samples.
:data:`RTP_CLOCK_RATE` is the rate for timestamps and SDP ``a=rtpmap``
(``G722/8000``); :data:`SAMPLE_RATE` is the rate of the PCM in and out.

spandsp has no loss concealment for G.722, so :meth:`G722Decoder.conceal`
does what a carrier SBC does cheaply (in C, in native/build_g722.py): the
last 20 ms decoded are replayed in a loop with a cross-faded loop point, at
full level for the first 10 ms of a loss and then fading linearly to
silence at 60 ms; the first 2.5 ms decoded after a loss are cross-faded from
the concealment so the return does not click.

Linear PCM is 16-bit signed mono samples in host byte order, little-endian
on every target the gateway ships for.
"""

from __future__ import annotations

from typing import Any, Final

from gateway._native_g722 import ffi, lib
from gateway.media.g711 import CodecError

__all__ = [
    "BITRATE",
    "MAX_PACKET_MS",
    "MAX_PAYLOAD_BYTES",
    "MAX_SAMPLES",
    "RTP_CLOCK_RATE",
    "SAMPLE_RATE",
    "G722Decoder",
    "G722Encoder",
    "G722Error",
]

SAMPLE_RATE: Final = 16000
# RFC 3551 4.5.2: the RTP timestamp of G722 counts at 8000 Hz.
RTP_CLOCK_RATE: Final = 8000
BITRATE: Final = 64000

# The longest packet one call takes, as for Opus: longer than any ptime a
# carrier sends, and only 3.8 kB of buffers per codec.
MAX_PACKET_MS: Final = 120
MAX_SAMPLES: Final = SAMPLE_RATE * MAX_PACKET_MS // 1000
# 64 kbit/s: one octet per two samples.
MAX_PAYLOAD_BYTES: Final = MAX_SAMPLES // 2

# Neither G722_SAMPLE_RATE_8000 (decimated 8 kHz I/O) nor G722_PACKED
# (the 48/56 kbit/s bit packing): plain 16 kHz, one code per octet.
_OPTIONS: Final = 0


class G722Error(CodecError):
    """Input G.722 cannot take (wrong length, too large, empty) or a spandsp failure."""


def _size(data: bytes | bytearray | memoryview) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


def _created(state: Any, what: str, free: Any) -> Any:
    """spandsp state from an ``*_init(NULL, ...)``, freed with its Python owner."""
    if state == ffi.NULL:
        raise G722Error(f"{what} failed: spandsp returned NULL (out of memory)")
    return ffi.gc(state, free)


class G722Encoder:
    """Encoder for one G.722 stream (one per call leg), 64 kbit/s.

    The buffers for the longest packet are allocated once; an instance is
    therefore not safe to share between threads, which the media path never
    does.
    """

    __slots__ = ("_out_buf", "_out_bytes", "_pcm_buf", "_pcm_bytes", "_st")

    def __init__(self) -> None:
        self._st = _created(
            lib.g722_encode_init(ffi.NULL, BITRATE, _OPTIONS),
            f"g722_encode_init({BITRATE}, options={_OPTIONS})",
            lib.g722_encode_free,
        )
        self._pcm_buf = ffi.new("int16_t[]", MAX_SAMPLES)
        self._out_buf = ffi.new("uint8_t[]", MAX_PAYLOAD_BYTES)
        # Byte views made once: slice assignment and slicing are cheaper per
        # packet than ffi.memmove / ffi.buffer.
        self._pcm_bytes = ffi.buffer(self._pcm_buf)
        self._out_bytes = ffi.buffer(self._out_buf)

    def encode(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Encode 16 kHz PCM (an even number of samples) to a G722 payload.

        320 samples (20 ms, 640 bytes) give 160 octets. An empty frame gives
        an empty payload.
        """
        size = _size(pcm)
        if size % 2:
            raise G722Error(f"PCM length {size} is odd: samples are 2 bytes each")
        samples = size // 2
        if samples % 2:
            raise G722Error(
                f"PCM frame of {samples} samples is odd: G.722 codes two samples per octet"
            )
        if samples > MAX_SAMPLES:
            raise G722Error(
                f"PCM frame of {samples} samples exceeds the {MAX_PACKET_MS} ms maximum "
                f"of {MAX_SAMPLES} at {SAMPLE_RATE} Hz"
            )
        self._pcm_bytes[:size] = pcm
        written = lib.g722_encode(self._st, self._out_buf, self._pcm_buf, samples)
        payload: bytes = self._out_bytes[:written]
        return payload


class G722Decoder:
    """Decoder for one G.722 stream (one per call leg), with loss concealment.

    The output buffer holds the longest packet and is allocated once, as is
    the concealment state; an instance is not safe to share between threads.
    """

    __slots__ = ("_code_buf", "_code_bytes", "_pcm_buf", "_pcm_bytes", "_plc", "_st")

    def __init__(self) -> None:
        self._st = _created(
            lib.g722_decode_init(ffi.NULL, BITRATE, _OPTIONS),
            f"g722_decode_init({BITRATE}, options={_OPTIONS})",
            lib.g722_decode_free,
        )
        # Zeroed by ffi.new: before the first packet, concealment is silence.
        self._plc = ffi.new("edgegw_g722_plc_t *")
        self._code_buf = ffi.new("uint8_t[]", MAX_PAYLOAD_BYTES)
        self._pcm_buf = ffi.new("int16_t[]", MAX_SAMPLES)
        self._code_bytes = ffi.buffer(self._code_buf)
        self._pcm_bytes = ffi.buffer(self._pcm_buf)

    def decode(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Decode one G722 payload to 16 kHz PCM: two samples per octet."""
        size = _size(payload)
        if size == 0:
            raise G722Error("Empty G722 payload: use conceal() for a lost packet")
        if size > MAX_PAYLOAD_BYTES:
            raise G722Error(
                f"G722 payload of {size} bytes exceeds the {MAX_PACKET_MS} ms maximum "
                f"of {MAX_PAYLOAD_BYTES}"
            )
        self._code_bytes[:size] = payload
        decoded = lib.edgegw_g722_decode(self._st, self._plc, self._code_buf, size, self._pcm_buf)
        pcm: bytes = self._pcm_bytes[: 2 * decoded]
        return pcm

    def conceal(self, samples: int) -> bytes:
        """16 kHz PCM standing in for ``samples`` samples of lost packets.

        Consecutive calls continue one loss: the level holds for 10 ms, then
        fades to silence at 60 ms; the next :meth:`decode` ends the loss.
        """
        if not 0 < samples <= MAX_SAMPLES:
            raise G722Error(
                f"Lost frame of {samples} samples is outside 1..{MAX_SAMPLES} at {SAMPLE_RATE} Hz"
            )
        lib.edgegw_g722_conceal(self._plc, self._pcm_buf, samples)
        pcm: bytes = self._pcm_bytes[: 2 * samples]
        return pcm
