"""Tests for the G.722 codec (gateway.media.g722 over spandsp).

No ITU test vectors ship with Debian's spandsp, so the known answers below
were computed once with this binding and are justified by properties that
do not depend on it: libavcodec's independent G.722 decoder turns our
bitstreams into the very same samples (tests/unit/test_codecs_avcodec.py),
a 1 kHz sine and real speech come back with a high SNR after the codec's
fixed delay, and silence stays silent.
"""

from __future__ import annotations

import hashlib
import itertools
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pesq import pesq

from gateway._native_g722 import ffi, lib
from gateway.media import g722
from gateway.media.g711 import CodecError
from gateway.media.g722 import (
    MAX_PAYLOAD_BYTES,
    MAX_SAMPLES,
    RTP_CLOCK_RATE,
    SAMPLE_RATE,
    G722Decoder,
    G722Encoder,
    G722Error,
)

Pcm = npt.NDArray[np.int16]

FRAME = 320  # 20 ms at 16 kHz
# Delay through spandsp's QMF analysis and synthesis filters (24 taps each),
# found as the cross-correlation peak of speech in test_speech_delay.
DELAY = 22


def pcm_of(values: npt.ArrayLike) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


def samples(pcm: bytes) -> Pcm:
    return np.frombuffer(pcm, dtype="<i2")


def sine(count: int, freq: float = 1000.0, amplitude: float = 10000.0) -> Pcm:
    t = np.arange(count) / SAMPLE_RATE
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2")


def known_signal(count: int) -> Pcm:
    """Two triangle waves and LCG noise in integer arithmetic: the same on every platform."""
    seed, out = 12345, []
    for n in range(count):
        seed = (1103515245 * seed + 12345) % 2**31
        noise = (seed >> 16) % 1024 - 512
        out.append(abs(n % 40 - 20) * 600 - 6000 + abs(n % 57 - 28) * 214 - 3000 + noise)
    return np.array(out, dtype="<i2")


def harmonics(count: int) -> Pcm:
    """A 150 Hz buzz with 19 harmonics falling as 1/k: a vowel's spectrum without formants."""
    t = np.arange(count) / SAMPLE_RATE
    buzz = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 20))
    return np.round(6000 * buzz).astype("<i2")


def code(signal: Pcm, frame: int = FRAME) -> tuple[list[bytes], Pcm]:
    """Encode in packets of ``frame`` samples and decode them; the payloads and the PCM."""
    encoder, decoder = G722Encoder(), G722Decoder()
    payloads = [
        encoder.encode(signal[i : i + frame].tobytes()) for i in range(0, len(signal), frame)
    ]
    return payloads, samples(b"".join(decoder.decode(p) for p in payloads))


def snr_db(reference: Pcm, decoded: Pcm, delay: int = DELAY, skip: int = 1600) -> float:
    """SNR of ``decoded`` against ``reference`` delayed by the codec, after a start-up skip."""
    ref = reference[skip : len(reference) - delay].astype(np.float64)
    out = decoded[skip + delay :].astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - out) ** 2)))


def rms(values: npt.ArrayLike) -> float:
    return float(np.sqrt(np.mean(np.asarray(values, dtype=np.float64) ** 2)))


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Pcm:
    """Two talkers (espeak-ng), one sentence each, at 16 kHz: a whole number of 20 ms."""
    return espeak_speech(tmp_path_factory.mktemp("g722-speech"), SAMPLE_RATE, FRAME)


def espeak_speech(directory: Path, rate: int, frame: int) -> Pcm:
    parts = []
    for i, (voice, text) in enumerate(
        [
            ("en-us+klatt", "Please hold the line while we connect your call."),
            ("en-us+f3", "The quick brown fox jumps over the lazy dog."),
        ]
    ):
        part = directory / f"part{i}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(part), text], check=True)
        parts.append(str(part))
    raw = directory / f"speech{rate}.raw"
    # -D: no dither, so the same text gives the same samples on every run.
    convert = ["sox", "-D", *parts, "-r", str(rate), "-b", "16", "-c", "1", "-e", "signed"]
    subprocess.run([*convert, "-t", "raw", str(raw), "norm", "-3"], check=True)
    pcm = np.fromfile(raw, dtype="<i2")
    return pcm[: len(pcm) // frame * frame]


class TestFormat:
    def test_rates(self) -> None:
        # RFC 3551 4.5.2: 16 kHz audio, 8000 Hz RTP clock.
        assert SAMPLE_RATE == 16000
        assert RTP_CLOCK_RATE == 8000

    @pytest.mark.parametrize("count", [2, 160, 320, 480, 640, 1920])
    def test_one_octet_per_two_samples(self, count: int) -> None:
        payload = G722Encoder().encode(pcm_of(sine(count)))
        assert len(payload) == count // 2
        assert len(G722Decoder().decode(payload)) == 2 * count

    def test_20ms_packet(self) -> None:
        payload = G722Encoder().encode(pcm_of(sine(FRAME)))
        assert isinstance(payload, bytes)
        assert len(payload) == 160
        # 160 RTP clock ticks at 8000 Hz are the same 20 ms as 320 samples.
        assert len(payload) / RTP_CLOCK_RATE == FRAME / SAMPLE_RATE

    def test_empty_frame_gives_empty_payload(self) -> None:
        assert G722Encoder().encode(b"") == b""

    def test_largest_frame(self) -> None:
        payload = G722Encoder().encode(bytes(2 * MAX_SAMPLES))
        assert len(payload) == MAX_PAYLOAD_BYTES == 960
        assert len(G722Decoder().decode(payload)) == 2 * MAX_SAMPLES

    def test_accepts_bytearray_and_memoryview(self) -> None:
        pcm = pcm_of(sine(FRAME))
        payload = G722Encoder().encode(pcm)
        assert G722Encoder().encode(bytearray(pcm)) == payload
        assert G722Encoder().encode(memoryview(pcm)) == payload
        # A view with 2-byte items is measured in bytes, not items.
        assert G722Encoder().encode(sine(FRAME).data) == payload
        assert G722Decoder().decode(memoryview(payload)) == G722Decoder().decode(payload)


class TestKnownAnswers:
    """Pinned outputs (computed once), each checked by a property of its own."""

    def test_silence_from_reset(self) -> None:
        # Pinned as measured; test_silence_stays_silent shows that these
        # codes decode to (near) zero.
        assert G722Encoder().encode(bytes(2 * FRAME))[:8] == b"\xfa" * 8

    def test_bitstream_and_decoded_pcm(self) -> None:
        signal = known_signal(SAMPLE_RATE)
        payloads, decoded = code(signal)
        bits = b"".join(payloads)
        assert payloads[0][:16].hex() == "942184218620a02cb0b4b91f9a969210"
        assert hashlib.sha256(bits).hexdigest() == (
            "1c506b19b12da51d2658a5550dc6413398f2808d4c8d55bd31e049147f4fbfb5"
        )
        assert hashlib.sha256(decoded.tobytes()).hexdigest() == (
            "8a5f7fc0c05576bba37a1569a99d7a6a8c6d349dadd47d563aa638243e683508"
        )
        # What makes these answers right: the decoded signal is the input
        # (32.8 dB SNR measured).
        assert snr_db(signal, decoded) > 30


class TestQuality:
    def test_sine_1khz(self) -> None:
        signal = sine(SAMPLE_RATE)
        _, decoded = code(signal)
        assert len(decoded) == len(signal)
        assert snr_db(signal, decoded) > 40  # measured 47.2 dB

    @pytest.mark.parametrize(("freq", "floor"), [(300, 50), (3500, 30), (5000, 18), (7000, 18)])
    def test_both_sub_bands(self, freq: float, floor: float) -> None:
        # Low band (0-4 kHz, 6-bit ADPCM) and high band (4-8 kHz, 2-bit):
        # measured 61.5, 34.7, 22.0 and 22.6 dB, at unit gain.
        signal = sine(SAMPLE_RATE, freq, 8000)
        _, decoded = code(signal)
        assert snr_db(signal, decoded) > floor
        assert rms(decoded[1600:]) == pytest.approx(rms(signal[1600:]), rel=0.01)

    def test_harmonics(self) -> None:
        signal = harmonics(SAMPLE_RATE)
        _, decoded = code(signal)
        assert snr_db(signal, decoded) > 20  # measured 25.1 dB

    def test_speech_delay(self, speech: Pcm) -> None:
        _, decoded = code(speech)
        lags = range(60)
        ref = speech[: len(speech) - 60].astype(np.float64)
        scores = [np.dot(ref, decoded[lag : lag + len(ref)].astype(np.float64)) for lag in lags]
        assert int(np.argmax(scores)) == DELAY

    def test_speech(self, speech: Pcm) -> None:
        _, decoded = code(speech)
        assert len(decoded) == len(speech)
        assert snr_db(speech, decoded, skip=0) > 14  # measured 17.6 dB
        # ITU-T P.862.2 (wideband PESQ): measured 3.30 on this synthetic speech.
        ref = speech[: len(speech) - DELAY].astype(np.float64)
        assert pesq(SAMPLE_RATE, ref, decoded[DELAY:].astype(np.float64), "wb") > 3.0

    def test_silence_stays_silent(self) -> None:
        _, decoded = code(np.zeros(SAMPLE_RATE, dtype="<i2"))
        assert int(np.max(np.abs(decoded))) <= 4  # measured 3

    def test_frame_size_does_not_change_the_bitstream(self) -> None:
        signal = known_signal(3 * 1920)
        assert b"".join(code(signal, 160)[0]) == b"".join(code(signal, 1920)[0])


class TestState:
    def test_deterministic(self) -> None:
        signal = known_signal(8 * FRAME)
        first, second = code(signal), code(signal)
        assert first[0] == second[0]
        assert np.array_equal(first[1], second[1])

    def test_instances_do_not_share_state(self) -> None:
        a, b = known_signal(10 * FRAME), sine(10 * FRAME, 440)
        alone_a, alone_b = code(a), code(b)
        enc_a, enc_b, dec_a, dec_b = G722Encoder(), G722Encoder(), G722Decoder(), G722Decoder()
        out_a, out_b, pay_a, pay_b = [], [], [], []
        for i in range(0, len(a), FRAME):
            pay_a.append(enc_a.encode(a[i : i + FRAME].tobytes()))
            pay_b.append(enc_b.encode(b[i : i + FRAME].tobytes()))
            out_a.append(dec_a.decode(pay_a[-1]))
            out_b.append(dec_b.decode(pay_b[-1]))
        assert pay_a == alone_a[0]
        assert pay_b == alone_b[0]
        assert samples(b"".join(out_a)).tolist() == alone_a[1].tolist()
        assert samples(b"".join(out_b)).tolist() == alone_b[1].tolist()


class TestConcealment:
    def decoder_after_sine(self, frames: int = 10) -> tuple[G722Decoder, Pcm]:
        encoder, decoder = G722Encoder(), G722Decoder()
        signal = sine(frames * FRAME, 440, 8000)
        decoded = [
            decoder.decode(encoder.encode(signal[i : i + FRAME].tobytes()))
            for i in range(0, len(signal), FRAME)
        ]
        return decoder, samples(b"".join(decoded))

    def test_before_any_packet_is_silence(self) -> None:
        assert G722Decoder().conceal(FRAME) == bytes(2 * FRAME)

    @pytest.mark.parametrize("count", [1, 160, 320, 333, MAX_SAMPLES])
    def test_length_is_exact(self, count: int) -> None:
        decoder, _ = self.decoder_after_sine()
        assert len(decoder.conceal(count)) == 2 * count

    def test_fades_to_silence(self) -> None:
        decoder, decoded = self.decoder_after_sine()
        level = rms(decoded[-FRAME:])
        tens = [rms(samples(decoder.conceal(160))) for _ in range(8)]
        # Full level for the first 10 ms, then falling, silent from 60 ms on.
        assert tens[0] > 0.9 * level
        assert all(later < earlier for earlier, later in itertools.pairwise(tens[:7]))
        assert tens[6:] == [0.0, 0.0]

    def test_no_click_at_the_loss_or_in_the_loop(self) -> None:
        decoder, decoded = self.decoder_after_sine()
        concealed = samples(decoder.conceal(960))
        joined = np.concatenate([decoded[-FRAME:], concealed]).astype(np.int32)
        # A 440 Hz sine of 8000 moves at most 2*pi*440/16000*8000 = 1382 per
        # sample; a splice would jump by up to twice the amplitude.
        steepest = int(np.max(np.abs(np.diff(decoded[-FRAME:].astype(np.int32)))))
        assert int(np.max(np.abs(np.diff(joined)))) <= 1.1 * steepest

    def test_calls_continue_one_loss(self) -> None:
        split, _ = self.decoder_after_sine()
        whole, _ = self.decoder_after_sine()
        assert split.conceal(100) + split.conceal(380) == whole.conceal(480)

    def test_decoding_ends_the_loss_smoothly(self) -> None:
        encoder, decoder = G722Encoder(), G722Decoder()
        signal = sine(20 * FRAME, 440, 8000)
        packets = [
            encoder.encode(signal[i : i + FRAME].tobytes()) for i in range(0, len(signal), FRAME)
        ]
        out = [decoder.decode(p) for p in packets[:10]]
        out.append(decoder.conceal(FRAME))  # packet 10 lost
        out += [decoder.decode(p) for p in packets[11:]]
        joined = samples(b"".join(out)).astype(np.int32)
        assert len(joined) == len(signal)
        steepest = int(np.max(np.abs(np.diff(joined[: 10 * FRAME]))))
        assert int(np.max(np.abs(np.diff(joined[10 * FRAME :])))) <= 1.2 * steepest
        # A new loss starts again at full level.
        assert rms(samples(decoder.conceal(160))) > 0.9 * rms(joined[-FRAME:])

    def test_after_a_long_loss_fades_in_from_silence(self) -> None:
        decoder, _ = self.decoder_after_sine()
        decoder.conceal(MAX_SAMPLES)
        encoder = G722Encoder()
        resumed = samples(decoder.decode(encoder.encode(pcm_of(sine(FRAME, 440, 8000)))))
        assert resumed[0] == 0
        assert len(resumed) == FRAME


class TestErrors:
    """Each malformed input gets G722Error naming the problem; the codec stays usable."""

    def assert_encoder_unharmed(self, encoder: G722Encoder) -> None:
        fresh = G722Encoder()
        fresh.encode(pcm_of(sine(FRAME)))
        assert encoder.encode(pcm_of(sine(FRAME, 440))) == fresh.encode(pcm_of(sine(FRAME, 440)))

    def assert_decoder_unharmed(self, decoder: G722Decoder) -> None:
        payload = G722Encoder().encode(pcm_of(sine(FRAME)))
        fresh = G722Decoder()
        fresh.decode(payload)
        assert decoder.decode(payload) == fresh.decode(payload)

    def test_odd_byte_count(self) -> None:
        encoder = G722Encoder()
        encoder.encode(pcm_of(sine(FRAME)))
        with pytest.raises(G722Error, match="PCM length 641 is odd: samples are 2 bytes each"):
            encoder.encode(bytes(641))
        self.assert_encoder_unharmed(encoder)

    def test_odd_sample_count(self) -> None:
        encoder = G722Encoder()
        encoder.encode(pcm_of(sine(FRAME)))
        with pytest.raises(G722Error, match=r"frame of 321 samples is odd: G\.722 codes two"):
            encoder.encode(bytes(642))
        self.assert_encoder_unharmed(encoder)

    def test_frame_too_large(self) -> None:
        encoder = G722Encoder()
        encoder.encode(pcm_of(sine(FRAME)))
        with pytest.raises(G722Error, match="1922 samples exceeds the 120 ms maximum of 1920"):
            encoder.encode(bytes(2 * (MAX_SAMPLES + 2)))
        self.assert_encoder_unharmed(encoder)

    def test_empty_payload(self) -> None:
        decoder = G722Decoder()
        decoder.decode(G722Encoder().encode(pcm_of(sine(FRAME))))
        with pytest.raises(G722Error, match=r"Empty G722 payload: use conceal\(\)"):
            decoder.decode(b"")
        self.assert_decoder_unharmed(decoder)

    def test_payload_too_large(self) -> None:
        decoder = G722Decoder()
        decoder.decode(G722Encoder().encode(pcm_of(sine(FRAME))))
        with pytest.raises(
            G722Error, match="payload of 961 bytes exceeds the 120 ms maximum of 960"
        ):
            decoder.decode(bytes(MAX_PAYLOAD_BYTES + 1))
        self.assert_decoder_unharmed(decoder)

    @pytest.mark.parametrize("count", [0, -1, MAX_SAMPLES + 1])
    def test_conceal_length_out_of_range(self, count: int) -> None:
        decoder = G722Decoder()
        decoder.decode(G722Encoder().encode(pcm_of(sine(FRAME))))
        with pytest.raises(G722Error, match=rf"Lost frame of {count} samples is outside 1..1920"):
            decoder.conceal(count)
        self.assert_decoder_unharmed(decoder)

    def test_spandsp_init_failure_names_the_call(self) -> None:
        # spandsp returns NULL only when it cannot allocate; fed a NULL, the
        # check that runs on every init says which call failed.
        with pytest.raises(
            G722Error, match=r"g722_decode_init\(64000, options=0\) failed: spandsp returned NULL"
        ):
            g722._created(ffi.NULL, "g722_decode_init(64000, options=0)", lib.g722_decode_free)

    def test_error_classes(self) -> None:
        # One except clause catches the failures of every G.7xx codec.
        assert issubclass(G722Error, CodecError)
        assert issubclass(G722Error, ValueError)
