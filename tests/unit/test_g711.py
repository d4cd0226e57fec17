"""Tests for the G.711 codec (gateway.media.g711 and the native binding)."""

from __future__ import annotations

import array
import warnings
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway._native_g711 import ffi, lib
from gateway.media.g711 import (
    DEFAULT_MAX_SAMPLES,
    CodecError,
    G711Codec,
    alaw_to_ulaw,
    ulaw_to_alaw,
)

ALL_CODES = bytes(range(256))
ALL_SAMPLES = list(range(-32768, 32768))
ALL_PCM = array.array("h", ALL_SAMPLES).tobytes()


def _audioop() -> ModuleType | None:
    # audioop is deprecated (removed in 3.13) but is an independent reference
    # implementation of G.711 on the Python versions that still have it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:
            return None
    return audioop


audioop = _audioop()
needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop not in this Python")


def samples(pcm: bytes) -> list[int]:
    return array.array("h", pcm).tolist()


def pcm_of(values: list[int]) -> bytes:
    return array.array("h", values).tobytes()


def full_range_codec(encoding: str) -> G711Codec:
    return G711Codec(encoding, max_samples=len(ALL_SAMPLES))  # type: ignore[arg-type]


# Reconstruction values written out from the formulas of ITU-T G.711, in
# 13-bit (A-law) and 14-bit (µ-law) units, then scaled to 16 bits.


def alaw_reference(code: int) -> int:
    bits = code ^ 0x55
    segment, interval = (bits >> 4) & 7, bits & 0x0F
    magnitude = 2 * interval + 1 if segment == 0 else (2 * interval + 33) << (segment - 1)
    return 8 * (magnitude if bits & 0x80 else -magnitude)


def ulaw_reference(code: int) -> int:
    bits = ~code & 0xFF
    segment, interval = (bits >> 4) & 7, bits & 0x0F
    magnitude = ((2 * interval + 33) << segment) - 33
    return 4 * (-magnitude if bits & 0x80 else magnitude)


class TestKnownValues:
    @pytest.mark.parametrize(
        ("code", "value"),
        [
            (0xD5, 8),  # smallest positive: interval 0 of segment 0, 13-bit value 1
            (0x55, -8),
            (0xD4, 24),
            (0xAA, 32256),  # largest: 13-bit value 4032
            (0x2A, -32256),
            (0x85, 4224),  # segment 5 starts at 13-bit 512, first interval midpoint 528
        ],
    )
    def test_alaw(self, code: int, value: int) -> None:
        assert samples(G711Codec("PCMA").decode(bytes([code]))) == [value]

    @pytest.mark.parametrize(
        ("code", "value"),
        [
            (0xFF, 0),
            (0x7F, 0),  # "negative zero"
            (0xFE, 8),  # 14-bit value 2
            (0x7E, -8),
            (0x80, 32124),  # largest: 14-bit value 8031
            (0x00, -32124),
            (0xEF, 132),  # segment 1 first interval: 14-bit value 33
        ],
    )
    def test_ulaw(self, code: int, value: int) -> None:
        assert samples(G711Codec("PCMU").decode(bytes([code]))) == [value]

    def test_alaw_all_codes_match_formula(self) -> None:
        decoded = samples(G711Codec("PCMA").decode(ALL_CODES))
        assert decoded == [alaw_reference(c) for c in ALL_CODES]

    def test_ulaw_all_codes_match_formula(self) -> None:
        decoded = samples(G711Codec("PCMU").decode(ALL_CODES))
        assert decoded == [ulaw_reference(c) for c in ALL_CODES]

    def test_encoder_edges(self) -> None:
        assert G711Codec("PCMA").encode(pcm_of([0, -1, 32767, -32768])) == bytes(
            [0xD5, 0x55, 0xAA, 0x2A]
        )
        assert G711Codec("PCMU").encode(pcm_of([0, 3, 4, 32767, -32768])) == bytes(
            [0xFF, 0xFF, 0xFE, 0x80, 0x00]
        )


class TestRoundTrip:
    def test_every_alaw_code_round_trips(self) -> None:
        codec = G711Codec("PCMA")
        assert codec.encode(codec.decode(ALL_CODES)) == ALL_CODES

    def test_every_ulaw_code_round_trips_except_negative_zero(self) -> None:
        codec = G711Codec("PCMU")
        again = codec.encode(codec.decode(ALL_CODES))
        changed = {code: new for code, new in zip(ALL_CODES, again, strict=True) if code != new}
        # 0x7F and 0xFF both reconstruct to 0; the encoder codes 0 as 0xFF.
        assert changed == {0x7F: 0xFF}

    @pytest.mark.parametrize("encoding", ["PCMA", "PCMU"])
    def test_decoded_error_bounded_and_monotonic(self, encoding: str) -> None:
        codec = full_range_codec(encoding)
        decoded = samples(codec.decode(codec.encode(ALL_PCM)))
        assert decoded == sorted(decoded)
        # Each interval is at most 1/16 of its segment's lower edge (so half
        # an interval is under |x|/32), plus the half-interval of 8 around zero.
        worst = max(abs(x - y) - abs(x) // 32 for x, y in zip(ALL_SAMPLES, decoded, strict=True))
        assert worst <= 8


@needs_audioop
class TestAgainstAudioop:
    def test_alaw_encoder_all_inputs(self) -> None:
        assert audioop is not None
        assert full_range_codec("PCMA").encode(ALL_PCM) == audioop.lin2alaw(ALL_PCM, 2)

    def test_ulaw_encoder_all_inputs(self) -> None:
        assert audioop is not None
        assert full_range_codec("PCMU").encode(ALL_PCM) == audioop.lin2ulaw(ALL_PCM, 2)

    def test_decoders_all_codes(self) -> None:
        assert audioop is not None
        assert G711Codec("PCMA").decode(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)
        assert G711Codec("PCMU").decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)

    def test_law_conversion_all_codes(self) -> None:
        assert audioop is not None
        a_to_u = audioop.lin2ulaw(audioop.alaw2lin(ALL_CODES, 2), 2)
        u_to_a = audioop.lin2alaw(audioop.ulaw2lin(ALL_CODES, 2), 2)
        assert alaw_to_ulaw(ALL_CODES) == a_to_u
        assert ulaw_to_alaw(ALL_CODES) == u_to_a


class TestLawConversion:
    def test_matches_decode_then_encode(self) -> None:
        pcma, pcmu = G711Codec("PCMA"), G711Codec("PCMU")
        assert alaw_to_ulaw(ALL_CODES) == pcmu.encode(pcma.decode(ALL_CODES))
        assert ulaw_to_alaw(ALL_CODES) == pcma.encode(pcmu.decode(ALL_CODES))

    def test_known_codes(self) -> None:
        # Silence and full scale keep their meaning across laws.
        assert alaw_to_ulaw(bytes([0xD5, 0x55, 0xAA, 0x2A])) == bytes([0xFE, 0x7E, 0x80, 0x00])
        assert ulaw_to_alaw(bytes([0xFF, 0x7F, 0x80, 0x00])) == bytes([0xD5, 0xD5, 0xAA, 0x2A])

    def test_empty(self) -> None:
        assert alaw_to_ulaw(b"") == b""
        assert ulaw_to_alaw(b"") == b""

    def test_ulaw_alaw_ulaw_stays_close(self) -> None:
        back = alaw_to_ulaw(ulaw_to_alaw(ALL_CODES))
        decode = G711Codec("PCMU").decode
        for before, after in zip(samples(decode(ALL_CODES)), samples(decode(back)), strict=True):
            assert abs(before - after) <= abs(before) // 16 + 16

    @pytest.mark.parametrize(
        ("native", "module_level"),
        [(lib.alaw_to_ulaw, alaw_to_ulaw), (lib.ulaw_to_alaw, ulaw_to_alaw)],
    )
    def test_native_whole_buffer_in_place(self, native: object, module_level: object) -> None:
        payload = bytes(range(256)) * 8
        buf = ffi.new("uint8_t[]", payload)
        native(buf, buf, len(payload))  # type: ignore[operator]
        assert bytes(ffi.buffer(buf, len(payload))) == module_level(payload)  # type: ignore[operator]


class TestCodecWrapper:
    def test_frame_of_160_samples(self) -> None:
        codec = G711Codec("PCMA")
        pcm = pcm_of([(i * 397) % 65536 - 32768 for i in range(160)])
        payload = codec.encode(pcm)
        assert isinstance(payload, bytes)
        assert len(payload) == 160
        assert len(codec.decode(payload)) == 320

    def test_buffers_are_reused_without_leaking_old_frames(self) -> None:
        codec = G711Codec("PCMU")
        codec.encode(pcm_of([1000] * 320))
        assert codec.encode(pcm_of([0, 0])) == b"\xff\xff"
        codec.decode(b"\x00" * 320)
        assert codec.decode(b"\xff") == b"\x00\x00"

    @pytest.mark.parametrize("encoding", ["PCMA", "PCMU"])
    def test_empty_frames(self, encoding: str) -> None:
        codec = G711Codec(encoding)  # type: ignore[arg-type]
        assert codec.encode(b"") == b""
        assert codec.decode(b"") == b""

    def test_largest_frame_accepted(self) -> None:
        codec = G711Codec("PCMA", max_samples=4)
        assert codec.max_samples == 4
        assert len(codec.encode(b"\x00" * 8)) == 4
        assert len(codec.decode(b"\xd5" * 4)) == 8

    def test_default_max_frame(self) -> None:
        assert G711Codec("PCMU").max_samples == DEFAULT_MAX_SAMPLES == 1920

    def test_accepts_bytearray_and_memoryview(self) -> None:
        codec = G711Codec("PCMA")
        pcm = pcm_of([8, -8])
        assert codec.encode(bytearray(pcm)) == codec.encode(memoryview(pcm)) == b"\xd5\x55"
        assert codec.decode(memoryview(b"\x00\xd5\x55")[1:]) == pcm
        # A view with 2-byte items is measured in bytes, not items.
        assert codec.encode(memoryview(array.array("h", [8, -8]))) == b"\xd5\x55"

    def test_odd_pcm_length(self) -> None:
        with pytest.raises(CodecError, match="PCM length 3 is odd"):
            G711Codec("PCMA").encode(b"\x00\x01\x02")

    def test_encode_frame_too_large(self) -> None:
        with pytest.raises(
            CodecError, match="PCMU frame of 1921 samples exceeds the maximum of 1920"
        ):
            G711Codec("PCMU").encode(b"\x00" * 3842)

    def test_decode_frame_too_large(self) -> None:
        with pytest.raises(CodecError, match="PCMA frame of 5 samples exceeds the maximum of 4"):
            G711Codec("PCMA", max_samples=4).decode(b"\xd5" * 5)

    def test_unknown_encoding(self) -> None:
        with pytest.raises(CodecError, match=r"Unknown G\.711 encoding 'G729'"):
            G711Codec("G729")  # type: ignore[arg-type]

    def test_bad_max_samples(self) -> None:
        with pytest.raises(CodecError, match="max_samples must be at least 1"):
            G711Codec("PCMA", max_samples=0)

    def test_codec_error_is_value_error(self) -> None:
        assert issubclass(CodecError, ValueError)

    @given(st.binary(max_size=400))
    def test_decode_encode_is_stable_for_any_payload(self, payload: bytes) -> None:
        # One decode/encode pass maps every code to its canonical form; a
        # second pass changes nothing.
        for encoding in ("PCMA", "PCMU"):
            codec = G711Codec(encoding)
            once = codec.encode(codec.decode(payload))
            assert codec.encode(codec.decode(once)) == once
