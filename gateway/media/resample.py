"""Sample-rate conversion between the gateway's audio rates over libspeexdsp.

Transcoding joins codecs that run at different clock rates (G.711 and G.729
at 8 kHz, G.722 audio at 16 kHz, Opus at 48 kHz; RFC 3551 4.5, RFC 7587 4),
so linear audio is converted between 8000, 16000 and 48000 Hz here. Each
:meth:`Resampler.process` call is one native call for the whole frame into
buffers allocated once. The low-pass filter of the converter delays the
signal by :attr:`Resampler.latency` output samples; the stream is continuous,
so the output of consecutive frames joins up with no gap and no click.

Linear PCM is mono, 16-bit signed samples in host byte order, which is
little-endian on every target the gateway ships for (x86_64, aarch64).
"""

from __future__ import annotations

from typing import Any, Final

from gateway._native_resample import ffi, lib

__all__ = [
    "DEFAULT_MAX_INPUT_SAMPLES",
    "DEFAULT_QUALITY",
    "RATES",
    "ResampleError",
    "Resampler",
]

RATES: Final = frozenset({8000, 16000, 48000})

# speexdsp's "desktop" quality: its stop band is deep enough that tones above
# the new Nyquist frequency fold back below audibility in a call.
DEFAULT_QUALITY: Final = 5

# 60 ms at 48 kHz: the longest Opus frame at the highest rate.
DEFAULT_MAX_INPUT_SAMPLES: Final = 2880

# The converter's phase can give one sample more than the exact ratio in a
# call; the slack keeps every frame within one native call.
_OUTPUT_MARGIN: Final = 16


class ResampleError(ValueError):
    """Input or settings the resampler refuses, or an error reported by libspeexdsp."""


def _library_message(err: int) -> str:
    text: bytes = ffi.string(lib.speex_resampler_strerror(err))
    return text.decode("ascii", "replace")


class Resampler:
    """Converter for one mono stream from ``in_rate`` to ``out_rate`` Hz.

    The filter keeps history between calls, so one instance serves one
    stream (one direction of one call leg); it is not safe to share between
    threads, which the media path never does.
    """

    __slots__ = (
        "_in_buf",
        "_in_bytes",
        "_in_len",
        "_max_input",
        "_max_output",
        "_out_buf",
        "_out_bytes",
        "_out_len",
        "_process",
        "_state",
        "in_rate",
        "out_rate",
        "quality",
    )

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        *,
        quality: int = DEFAULT_QUALITY,
        max_input_samples: int = DEFAULT_MAX_INPUT_SAMPLES,
    ) -> None:
        for name, rate in (("input", in_rate), ("output", out_rate)):
            if rate not in RATES:
                raise ResampleError(
                    f"Unsupported {name} rate {rate} Hz: expected one of 8000, 16000, 48000"
                )
        if max_input_samples < 1:
            raise ResampleError(f"max_input_samples must be at least 1, got {max_input_samples}")
        self.in_rate: Final = in_rate
        self.out_rate: Final = out_rate
        self.quality: Final = quality
        self._max_input = max_input_samples
        self._max_output = -(-max_input_samples * out_rate // in_rate) + _OUTPUT_MARGIN
        self._state = self._create_state()
        self._in_buf = ffi.new("spx_int16_t[]", self._max_input)
        self._out_buf = ffi.new("spx_int16_t[]", self._max_output)
        self._in_len = ffi.new("spx_uint32_t *")
        self._out_len = ffi.new("spx_uint32_t *")
        # Byte views made once: slice assignment in and slicing out are the
        # cheapest copies cffi offers per frame.
        self._in_bytes = ffi.buffer(self._in_buf)
        self._out_bytes = ffi.buffer(self._out_buf)
        self._process: Any = lib.speex_resampler_process_int

    def _create_state(self) -> Any:
        err = ffi.new("int *")
        state = lib.speex_resampler_init(1, self.in_rate, self.out_rate, self.quality, err)
        if state == ffi.NULL:
            raise ResampleError(
                f"Cannot create a {self.in_rate}->{self.out_rate} Hz resampler at quality "
                f"{self.quality}: {_library_message(err[0])}"
            )
        # The finalizer frees the native state if close() is never called.
        return ffi.gc(state, lib.speex_resampler_destroy)

    @property
    def max_input_samples(self) -> int:
        """Largest frame, in input samples, that one call accepts."""
        return self._max_input

    @property
    def latency(self) -> int:
        """Delay of the filter, in output samples."""
        latency: int = lib.speex_resampler_get_output_latency(self._live_state())
        return latency

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has released the native state."""
        return self._state is None

    def process(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Convert one frame of samples and return the samples it yields.

        ``pcm`` may be any contiguous byte buffer (a memoryview slice of a
        receive buffer avoids a copy).
        """
        state = self._live_state()
        size = pcm.nbytes if isinstance(pcm, memoryview) else len(pcm)
        if size % 2:
            raise ResampleError(f"PCM length {size} is odd: samples are 2 bytes each")
        count = size // 2
        if count > self._max_input:
            raise ResampleError(
                f"Frame of {count} samples exceeds the maximum of {self._max_input}"
            )
        self._in_bytes[:size] = pcm
        self._in_len[0] = count
        self._out_len[0] = self._max_output
        err = self._process(state, 0, self._in_buf, self._in_len, self._out_buf, self._out_len)
        if err:
            raise ResampleError(f"Resampling failed: {_library_message(err)}")
        if self._in_len[0] != count:
            # Dropping the rest would cut a hole in the audio without a trace.
            raise ResampleError(
                f"Resampler consumed {self._in_len[0]} of {count} samples: output buffer too small"
            )
        out: bytes = self._out_bytes[: 2 * self._out_len[0]]
        return out

    def reset(self) -> None:
        """Forget the filter history, as at the start of a new stream."""
        err = lib.speex_resampler_reset_mem(self._live_state())
        if err:
            raise ResampleError(f"Resetting the resampler failed: {_library_message(err)}")

    def close(self) -> None:
        """Free the native state now; calling it again does nothing."""
        if self._state is not None:
            ffi.release(self._state)
            self._state = None

    def _live_state(self) -> Any:
        if self._state is None:
            raise ResampleError("Resampler is closed")
        return self._state
