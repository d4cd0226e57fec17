"""Tests for the sample-rate converter (gateway.media.resample and the native binding)."""

from __future__ import annotations

import array
import gc
import math

import pytest

from gateway._native_resample import ffi, lib
from gateway.media.resample import (
    DEFAULT_MAX_INPUT_SAMPLES,
    DEFAULT_QUALITY,
    ResampleError,
    Resampler,
)

FRAMES = 50
AMPLITUDE = 10000


def tone(freq: float, rate: int, count: int, amplitude: int = AMPLITUDE) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(count)]


def pcm_of(values: list[int]) -> bytes:
    return array.array("h", values).tobytes()


def samples(pcm: bytes) -> list[int]:
    return array.array("h", pcm).tolist()


def rms(values: list[int]) -> float:
    return math.sqrt(math.fsum(v * v for v in values) / len(values))


def correlation(a: list[int], b: list[int]) -> float:
    mean_a, mean_b = math.fsum(a) / len(a), math.fsum(b) / len(b)
    da, db = [x - mean_a for x in a], [y - mean_b for y in b]
    cov = math.fsum(x * y for x, y in zip(da, db, strict=True))
    return cov / math.sqrt(math.fsum(x * x for x in da) * math.fsum(y * y for y in db))


def run_frames(resampler: Resampler, pcm: bytes, frame_samples: int) -> list[bytes]:
    step = 2 * frame_samples
    return [resampler.process(pcm[i : i + step]) for i in range(0, len(pcm), step)]


class TestRoundTrip:
    @pytest.mark.parametrize("rate", [8000, 16000])
    @pytest.mark.parametrize("freq", [440.0, 1000.0])
    def test_through_48k_and_back(self, rate: int, freq: float) -> None:
        frame = rate // 50  # 20 ms
        original = tone(freq, rate, FRAMES * frame)
        up, down = Resampler(rate, 48000), Resampler(48000, rate)
        ratio = 48000 // rate

        wide_frames = run_frames(up, pcm_of(original), frame)
        assert all(len(f) == 2 * frame * ratio for f in wide_frames[1:])
        wide = b"".join(wide_frames)
        assert abs(len(wide) // 2 - len(original) * ratio) <= up.latency

        back_frames = run_frames(down, wide, frame * ratio)
        back = samples(b"".join(back_frames))
        assert abs(len(back) - len(original)) <= down.latency

        # Both filters delay the signal; the first one's delay is counted in
        # 48 kHz samples and shrinks by the ratio on the way down.
        delay = up.latency // ratio + down.latency
        # Quality 5 is an 80-tap filter at the lower rate, so each direction
        # delays the signal by 40 samples of the 8 or 16 kHz stream.
        assert delay == 80
        aligned_in = original[: len(back) - delay]
        aligned_out = back[delay:]
        assert correlation(aligned_in, aligned_out) > 0.99
        assert rms(aligned_out) == pytest.approx(rms(aligned_in), rel=0.05)

    @pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (16000, 8000)])
    def test_direct_conversion_keeps_level(self, in_rate: int, out_rate: int) -> None:
        resampler = Resampler(in_rate, out_rate)
        out = samples(b"".join(run_frames(resampler, pcm_of(tone(1000, in_rate, in_rate)), 320)))
        assert len(out) == out_rate
        expected = tone(1000, out_rate, out_rate)
        delay = resampler.latency
        assert correlation(expected[: out_rate - delay], out[delay:]) > 0.99

    def test_frames_join_without_a_seam(self) -> None:
        # Frames of any size give the same stream as one big frame.
        pcm = pcm_of(tone(440, 8000, 1600))
        whole = Resampler(8000, 48000).process(pcm)
        pieces = Resampler(8000, 48000)
        sizes = [1, 7, 160, 33, 240]
        parts, start = [], 0
        while start < len(pcm):
            for size in sizes:
                parts.append(pieces.process(pcm[start : start + 2 * size]))
                start += 2 * size
        assert b"".join(parts) == whole


class TestAntiAliasing:
    def test_tone_above_new_nyquist_is_removed(self) -> None:
        # 6 kHz cannot exist at 8 kHz; without the filter it would fold back to 2 kHz.
        resampler = Resampler(48000, 8000)
        source = tone(6000, 48000, FRAMES * 960, amplitude=20000)
        out = samples(b"".join(run_frames(resampler, pcm_of(source), 960)))
        settled = out[2 * resampler.latency :]
        assert rms(settled) <= rms(source) * 10 ** (-30 / 20)

    def test_tone_below_new_nyquist_passes(self) -> None:
        # The same measurement on an in-band tone, so the test above cannot
        # pass merely because nothing comes out.
        resampler = Resampler(48000, 8000)
        source = tone(1000, 48000, FRAMES * 960, amplitude=20000)
        out = samples(b"".join(run_frames(resampler, pcm_of(source), 960)))
        settled = out[2 * resampler.latency :]
        assert rms(settled) == pytest.approx(rms(source), rel=0.05)


class TestFrames:
    def test_empty_frame(self) -> None:
        assert Resampler(8000, 48000).process(b"") == b""

    def test_accepts_bytearray_and_memoryview(self) -> None:
        pcm = pcm_of(tone(440, 8000, 160))
        expected = Resampler(8000, 16000).process(pcm)
        assert Resampler(8000, 16000).process(bytearray(pcm)) == expected
        assert Resampler(8000, 16000).process(memoryview(b"\x00" + pcm)[1:]) == expected
        # A view with 2-byte items is measured in bytes, not items.
        view = memoryview(array.array("h", tone(440, 8000, 160)))
        assert Resampler(8000, 16000).process(view) == expected

    def test_largest_frame_accepted(self) -> None:
        resampler = Resampler(8000, 48000, max_input_samples=160)
        assert resampler.max_input_samples == 160
        outputs = [resampler.process(pcm_of(tone(440, 8000, 160))) for _ in range(3)]
        assert [len(o) for o in outputs] == [1920, 1920, 1920]

    def test_default_settings(self) -> None:
        resampler = Resampler(48000, 16000)
        assert resampler.max_input_samples == DEFAULT_MAX_INPUT_SAMPLES == 2880
        assert resampler.quality == DEFAULT_QUALITY == 5
        assert (resampler.in_rate, resampler.out_rate) == (48000, 16000)
        assert len(resampler.process(b"\x00\x00" * 2880)) == 2 * 960

    def test_odd_pcm_length(self) -> None:
        with pytest.raises(ResampleError, match="PCM length 3 is odd"):
            Resampler(8000, 16000).process(b"\x00\x01\x02")

    def test_frame_too_large(self) -> None:
        with pytest.raises(
            ResampleError, match="Frame of 2881 samples exceeds the maximum of 2880"
        ):
            Resampler(48000, 8000).process(b"\x00\x00" * 2881)

    def test_refused_frame_leaves_stream_intact(self) -> None:
        pcm = pcm_of(tone(440, 8000, 320))
        clean = Resampler(8000, 48000)
        expected = clean.process(pcm[:320]) + clean.process(pcm[320:])
        resampler = Resampler(8000, 48000, max_input_samples=160)
        first = resampler.process(pcm[:320])
        with pytest.raises(ResampleError):
            resampler.process(pcm)
        assert first + resampler.process(pcm[320:]) == expected


class TestSettings:
    @pytest.mark.parametrize(("in_rate", "out_rate"), [(44100, 8000), (8000, 22050), (0, 8000)])
    def test_bad_rates_refused(self, in_rate: int, out_rate: int) -> None:
        with pytest.raises(ResampleError, match=r"Unsupported (input|output) rate .* 8000, 16000"):
            Resampler(in_rate, out_rate)

    def test_bad_rate_named(self) -> None:
        with pytest.raises(ResampleError, match="Unsupported output rate 11025 Hz"):
            Resampler(8000, 11025)

    def test_bad_quality_carries_library_message(self) -> None:
        with pytest.raises(
            ResampleError,
            match=r"Cannot create a 8000->48000 Hz resampler at quality 11: Invalid argument",
        ):
            Resampler(8000, 48000, quality=11)

    def test_bad_max_input_samples(self) -> None:
        with pytest.raises(ResampleError, match="max_input_samples must be at least 1"):
            Resampler(8000, 16000, max_input_samples=0)

    def test_error_is_value_error(self) -> None:
        assert issubclass(ResampleError, ValueError)

    def test_same_rate_passes_audio_through_delayed(self) -> None:
        resampler = Resampler(16000, 16000)
        source = tone(1000, 16000, 2880)
        out = samples(resampler.process(pcm_of(source)))
        delay = resampler.latency
        assert correlation(source[: len(out) - delay], out[delay:]) > 0.999

    @pytest.mark.parametrize(
        ("in_rate", "out_rate", "latency"),
        [(8000, 48000, 240), (48000, 8000, 40), (16000, 48000, 120), (48000, 16000, 40)],
    )
    def test_latency_is_half_the_filter_at_the_lower_rate(
        self, in_rate: int, out_rate: int, latency: int
    ) -> None:
        assert Resampler(in_rate, out_rate).latency == latency

    def test_higher_quality_means_longer_filter(self) -> None:
        assert Resampler(8000, 48000, quality=10).latency > Resampler(8000, 48000).latency


class TestLifecycle:
    def test_reset_starts_a_fresh_stream(self) -> None:
        first = pcm_of(tone(1000, 8000, 160))
        second = pcm_of(tone(440, 8000, 160))
        fresh = Resampler(8000, 48000).process(second)
        resampler = Resampler(8000, 48000)
        resampler.process(first)
        assert resampler.process(second) != fresh
        resampler.reset()
        assert resampler.process(second) == fresh

    def test_close_is_idempotent_and_refuses_further_use(self) -> None:
        resampler = Resampler(8000, 16000)
        assert not resampler.closed
        resampler.close()
        resampler.close()
        assert resampler.closed
        with pytest.raises(ResampleError, match="Resampler is closed"):
            resampler.process(b"\x00\x00")
        with pytest.raises(ResampleError, match="Resampler is closed"):
            resampler.reset()
        with pytest.raises(ResampleError, match="Resampler is closed"):
            _ = resampler.latency

    def test_unclosed_instances_are_freed(self) -> None:
        # Exercises the ffi.gc finalizer; a crash or leak checker would flag misuse.
        for _ in range(200):
            Resampler(48000, 8000).process(b"\x00\x00" * 960)
        gc.collect()

    def test_library_error_carries_its_message(self) -> None:
        resampler = Resampler(8000, 16000)
        resampler._process = lambda *args: 4  # RESAMPLER_ERR_PTR_OVERLAP
        with pytest.raises(ResampleError, match=r"Resampling failed: Input and output"):
            resampler.process(b"\x00\x00")

    def test_unconsumed_input_is_an_error(self) -> None:
        def consume_half(
            state: object, channel: int, inp: object, in_len: object, out: object, out_len: object
        ) -> int:
            in_len[0] //= 2  # type: ignore[index]
            out_len[0] = 0  # type: ignore[index]
            return 0

        resampler = Resampler(8000, 16000)
        resampler._process = consume_half
        with pytest.raises(ResampleError, match="consumed 5 of 10 samples"):
            resampler.process(b"\x00\x00" * 10)


class TestNativeBinding:
    def test_strerror_texts(self) -> None:
        texts = [ffi.string(lib.speex_resampler_strerror(code)) for code in range(6)]
        assert texts[0] == b"Success."
        assert texts[3] == b"Invalid argument."
        assert all(texts)

    def test_skip_zeros_drops_the_leading_delay(self) -> None:
        err = ffi.new("int *")
        state = ffi.gc(
            lib.speex_resampler_init(1, 48000, 8000, DEFAULT_QUALITY, err),
            lib.speex_resampler_destroy,
        )
        assert err[0] == 0
        assert lib.speex_resampler_get_input_latency(state) == 240
        assert lib.speex_resampler_skip_zeros(state) == 0
        source = ffi.new("spx_int16_t[]", 960)
        source_bytes = ffi.buffer(source)
        source_bytes[:] = pcm_of(tone(1000, 48000, 960))
        out = ffi.new("spx_int16_t[]", 200)
        in_len, out_len = ffi.new("spx_uint32_t *", 960), ffi.new("spx_uint32_t *", 200)
        assert lib.speex_resampler_process_int(state, 0, source, in_len, out, out_len) == 0
        assert in_len[0] == 960
        # The 240 input samples of filter delay are not output: 160 - 40 remain.
        assert out_len[0] == 120
