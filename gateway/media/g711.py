"""G.711 A-law (PCMA) and µ-law (PCMU) codecs over the native cffi binding.

Implements ITU-T G.711 companding (the RTP payload formats PCMA and PCMU of
RFC 3551 4.5.14) on whole packets: each call of :meth:`G711Codec.encode` or
:meth:`G711Codec.decode` is one native call for the whole frame, never one
per sample. Linear PCM is 16-bit signed samples in host byte order, which is
little-endian on every target the gateway ships for (x86_64, aarch64).

The encoders truncate the 16-bit input to the 13 (A-law) or 14 (µ-law) bits
G.711 defines, as the classic Sun reference coder (and Python's audioop) do;
the tests check bit-identical output for all 65536 inputs.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from gateway._native_g711 import ffi, lib

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "CodecError",
    "G711Codec",
    "alaw_to_ulaw",
    "ulaw_to_alaw",
]

# 240 ms at the 8 kHz G.711 rate: longer than any ptime a peer is expected
# to send.
DEFAULT_MAX_SAMPLES: Final = 1920

_ENCODINGS: Final = ("PCMA", "PCMU")


class CodecError(ValueError):
    """Input a codec cannot process (wrong length, too large, unknown codec)."""


def _law_table(convert: Any) -> bytes:
    """Map of every code of one law to the other, from the native converter."""
    codes = ffi.new("uint8_t[]", bytes(range(256)))
    out = ffi.new("uint8_t[]", 256)
    convert(codes, out, 256)
    return bytes(ffi.buffer(out, 256))


# A law conversion is a fixed byte-to-byte map, so bytes.translate applies
# it in one native call without a cffi round trip, allocation of cffi
# buffers or any shared state between threads.
_A_TO_U: Final = _law_table(lib.alaw_to_ulaw)
_U_TO_A: Final = _law_table(lib.ulaw_to_alaw)


def alaw_to_ulaw(payload: bytes) -> bytes:
    """Convert an A-law payload to µ-law, code by code."""
    return payload.translate(_A_TO_U)


def ulaw_to_alaw(payload: bytes) -> bytes:
    """Convert a µ-law payload to A-law, code by code."""
    return payload.translate(_U_TO_A)


class G711Codec:
    """Encoder and decoder for one G.711 stream (one per call leg).

    Buffers for the largest frame are allocated once; an instance is
    therefore not safe to share between threads, which the media path never
    does.
    """

    __slots__ = (
        "_code_buf",
        "_code_bytes",
        "_decode",
        "_encode",
        "_max_samples",
        "_pcm_buf",
        "_pcm_bytes",
        "encoding",
    )

    def __init__(
        self, encoding: Literal["PCMA", "PCMU"], *, max_samples: int = DEFAULT_MAX_SAMPLES
    ) -> None:
        if encoding not in _ENCODINGS:
            raise CodecError(f"Unknown G.711 encoding {encoding!r}: expected 'PCMA' or 'PCMU'")
        if max_samples < 1:
            raise CodecError(f"max_samples must be at least 1, got {max_samples}")
        self.encoding: Final = encoding
        self._max_samples = max_samples
        self._pcm_buf = ffi.new("int16_t[]", max_samples)
        self._code_buf = ffi.new("uint8_t[]", max_samples)
        # Byte views of the buffers, made once: copying in by slice assignment
        # and out by slicing costs about half of ffi.memmove / ffi.buffer per call.
        self._pcm_bytes = ffi.buffer(self._pcm_buf)
        self._code_bytes = ffi.buffer(self._code_buf)
        if encoding == "PCMA":
            self._encode, self._decode = lib.alaw_encode, lib.alaw_decode
        else:
            self._encode, self._decode = lib.ulaw_encode, lib.ulaw_decode

    @property
    def max_samples(self) -> int:
        """Largest frame, in samples, that one call accepts."""
        return self._max_samples

    def encode(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Compress 16-bit linear samples to one G.711 code per sample.

        ``pcm`` may be any contiguous byte buffer (a memoryview slice of a
        receive buffer avoids a copy).
        """
        size = pcm.nbytes if isinstance(pcm, memoryview) else len(pcm)
        if size % 2:
            raise CodecError(f"PCM length {size} is odd: samples are 2 bytes each")
        count = size // 2
        self._check_size(count)
        self._pcm_bytes[:size] = pcm
        self._encode(self._pcm_buf, self._code_buf, count)
        payload: bytes = self._code_bytes[:count]
        return payload

    def decode(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Expand G.711 codes to 16-bit linear samples."""
        count = payload.nbytes if isinstance(payload, memoryview) else len(payload)
        self._check_size(count)
        self._code_bytes[:count] = payload
        self._decode(self._code_buf, self._pcm_buf, count)
        pcm: bytes = self._pcm_bytes[: 2 * count]
        return pcm

    def _check_size(self, count: int) -> None:
        if count > self._max_samples:
            raise CodecError(
                f"{self.encoding} frame of {count} samples exceeds the maximum of "
                f"{self._max_samples}"
            )
