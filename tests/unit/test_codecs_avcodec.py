"""Cross-checks of our G.722 and G.729 bitstreams against libavcodec's decoders.

libavcodec (FFmpeg) has its own G.722 and G.729 decoders, written apart from
spandsp and bcg729, so they are the independent reference that the known
answers of test_g722.py and test_g729.py lean on: a bitstream that FFmpeg
decodes to the same audio is a standard bitstream. The decoders are driven
through ctypes and libavcodec's public send/receive API.

libavcodec is on the machine with rtpengine (the benchmark's peer, Debian
``libavcodec59`` or later); where it is missing these tests are skipped,
named as such.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.media.g722 import G722Decoder, G722Encoder
from gateway.media.g729 import G729Decoder, G729Encoder

Pcm = npt.NDArray[np.int16]

# AVPacket.data and .size, AVFrame.nb_samples and .format: byte offsets that
# have not moved from libavcodec 59 (FFmpeg 5) to 61 (FFmpeg 7) on LP64.
PACKET_DATA, PACKET_SIZE = 24, 32
FRAME_NB_SAMPLES, FRAME_FORMAT = 112, 116
SUPPORTED_MAJORS = range(59, 62)
# AV_SAMPLE_FMT_S16 and AV_SAMPLE_FMT_S16P (the same bytes for mono).
S16_FORMATS = (1, 6)


def load_libavcodec() -> tuple[ctypes.CDLL, ctypes.CDLL] | str:
    """(libavcodec, libavutil) with the prototypes used, or why they cannot be used."""
    names = ctypes.util.find_library("avcodec"), ctypes.util.find_library("avutil")
    if None in names:
        return "libavcodec/libavutil not installed (Debian libavcodec59 or later)"
    try:
        avcodec, avutil = (ctypes.CDLL(name) for name in names if name)
    except OSError as exc:
        return f"cannot load libavcodec: {exc}"
    major = avcodec.avcodec_version() >> 16
    if major not in SUPPORTED_MAJORS or ctypes.sizeof(ctypes.c_void_p) != 8:
        return f"libavcodec {major} on this ABI is not one whose struct offsets are known"
    pointer, status = ctypes.c_void_p, ctypes.c_int
    prototypes: list[tuple[Any, list[Any], Any]] = [
        (avcodec.avcodec_find_decoder_by_name, [ctypes.c_char_p], pointer),
        (avcodec.avcodec_alloc_context3, [pointer], pointer),
        (avcodec.avcodec_open2, [pointer, pointer, pointer], status),
        (avcodec.avcodec_free_context, [ctypes.POINTER(pointer)], None),
        (avcodec.av_packet_alloc, [], pointer),
        (avcodec.av_packet_free, [ctypes.POINTER(pointer)], None),
        (avcodec.avcodec_send_packet, [pointer, pointer], status),
        (avcodec.avcodec_receive_frame, [pointer, pointer], status),
        (avutil.av_frame_alloc, [], pointer),
        (avutil.av_frame_free, [ctypes.POINTER(pointer)], None),
        (avutil.av_opt_set, [pointer, ctypes.c_char_p, ctypes.c_char_p, status], status),
    ]
    for function, args, result in prototypes:
        function.argtypes, function.restype = args, result
    return avcodec, avutil


LIBS = load_libavcodec()
pytestmark = pytest.mark.skipif(isinstance(LIBS, str), reason=str(LIBS))


class AvDecoder:
    """One libavcodec mono audio decoder: a payload in, its 16-bit samples out."""

    def __init__(self, name: str) -> None:
        assert not isinstance(LIBS, str)
        self._avcodec, self._avutil = avcodec, avutil = LIBS
        codec = avcodec.avcodec_find_decoder_by_name(name.encode())
        assert codec, f"libavcodec has no {name} decoder"
        self._ctx = ctypes.c_void_p(avcodec.avcodec_alloc_context3(codec))
        assert avutil.av_opt_set(self._ctx, b"ch_layout", b"mono", 0) == 0
        assert avcodec.avcodec_open2(self._ctx, codec, None) == 0
        self._packet = ctypes.c_void_p(avcodec.av_packet_alloc())
        self._frame = ctypes.c_void_p(avutil.av_frame_alloc())

    def decode(self, payload: bytes) -> Pcm:
        data = ctypes.create_string_buffer(payload, len(payload) + 64)  # FFmpeg's input padding
        packet = self._packet.value
        assert packet is not None
        ctypes.c_void_p.from_address(packet + PACKET_DATA).value = ctypes.addressof(data)
        ctypes.c_int.from_address(packet + PACKET_SIZE).value = len(payload)
        assert self._avcodec.avcodec_send_packet(self._ctx, self._packet) == 0
        out = []
        while self._avcodec.avcodec_receive_frame(self._ctx, self._frame) == 0:
            frame = self._frame.value
            assert frame is not None
            count = ctypes.c_int.from_address(frame + FRAME_NB_SAMPLES).value
            assert ctypes.c_int.from_address(frame + FRAME_FORMAT).value in S16_FORMATS
            plane = ctypes.c_void_p.from_address(frame).value
            assert plane is not None
            out.append(np.frombuffer(ctypes.string_at(plane, 2 * count), dtype="<i2"))
        return np.concatenate(out) if out else np.zeros(0, dtype="<i2")

    def close(self) -> None:
        self._avutil.av_frame_free(ctypes.byref(self._frame))
        self._avcodec.av_packet_free(ctypes.byref(self._packet))
        self._avcodec.avcodec_free_context(ctypes.byref(self._ctx))


@pytest.fixture
def av_g722() -> Iterator[AvDecoder]:
    decoder = AvDecoder("g722")
    yield decoder
    decoder.close()


@pytest.fixture
def av_g729() -> Iterator[AvDecoder]:
    decoder = AvDecoder("g729")
    yield decoder
    decoder.close()


def known_signal(count: int) -> Pcm:
    """The integer test signal of test_g722.py and test_g729.py."""
    seed, out = 12345, []
    for n in range(count):
        seed = (1103515245 * seed + 12345) % 2**31
        noise = (seed >> 16) % 1024 - 512
        out.append(abs(n % 40 - 20) * 600 - 6000 + abs(n % 57 - 28) * 214 - 3000 + noise)
    return np.array(out, dtype="<i2")


def chirp(count: int, rate: int) -> Pcm:
    """A sweep across the whole band, 50 Hz to just under half the rate."""
    t = np.arange(count) / rate
    top = 0.45 * rate
    phase = 2 * np.pi * (50 * t + (top - 50) * t**2 / (2 * t[-1]))
    pcm: Pcm = np.round(8000 * np.sin(phase)).astype("<i2")
    return pcm


def both_decodes(
    signal: Pcm,
    frame: int,
    encoder: G722Encoder | G729Encoder,
    ours: G722Decoder | G729Decoder,
    theirs: AvDecoder,
) -> tuple[Pcm, Pcm]:
    mine, ffmpeg = [], []
    for i in range(0, len(signal), frame):
        payload = encoder.encode(signal[i : i + frame].tobytes())
        mine.append(np.frombuffer(ours.decode(payload), dtype="<i2"))
        ffmpeg.append(theirs.decode(payload))
    return np.concatenate(mine), np.concatenate(ffmpeg)


class TestG722:
    @pytest.mark.parametrize("signal", ["known", "chirp"])
    def test_libavcodec_decodes_the_same_samples(self, av_g722: AvDecoder, signal: str) -> None:
        pcm = known_signal(16000) if signal == "known" else chirp(32000, 16000)
        mine, ffmpeg = both_decodes(pcm, 320, G722Encoder(), G722Decoder(), av_g722)
        assert len(mine) == len(ffmpeg) == len(pcm)
        assert np.array_equal(mine, ffmpeg)  # bit-exact

    def test_pinned_bitstream_decodes_to_the_pinned_pcm(self, av_g722: AvDecoder) -> None:
        # The known answer of test_g722.TestKnownAnswers, decoded by FFmpeg.
        signal = known_signal(16000)
        encoder = G722Encoder()
        payloads = [encoder.encode(signal[i : i + 320].tobytes()) for i in range(0, 16000, 320)]
        assert hashlib.sha256(b"".join(payloads)).hexdigest().startswith("1c506b19b12da51d")
        decoded = np.concatenate([av_g722.decode(p) for p in payloads])
        assert hashlib.sha256(decoded.tobytes()).hexdigest() == (
            "8a5f7fc0c05576bba37a1569a99d7a6a8c6d349dadd47d563aa638243e683508"
        )


class TestG729:
    # FFmpeg decodes as full G.729 (its own post-filter), bcg729 as G.729A,
    # so the two agree closely but not to the bit: measured 0.998 for both.
    @pytest.mark.parametrize("signal", ["known", "chirp"])
    def test_libavcodec_decodes_the_same_audio(self, av_g729: AvDecoder, signal: str) -> None:
        pcm = known_signal(8000) if signal == "known" else chirp(16000, 8000)
        mine, ffmpeg = both_decodes(pcm, 160, G729Encoder(), G729Decoder(), av_g729)
        assert len(mine) == len(ffmpeg) == len(pcm)
        assert float(np.corrcoef(mine.astype(float), ffmpeg.astype(float))[0, 1]) > 0.98
