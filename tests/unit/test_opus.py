"""Tests for the Opus codec (gateway.media.opus over libopus)."""

from __future__ import annotations

import array
import math

import pytest

from gateway.media.opus import (
    MAX_PACKET_BYTES,
    OpusDecoder,
    OpusEncoder,
    OpusError,
    opus_version,
)

FRAMES = 50


def pcm_of(values: list[int]) -> bytes:
    return array.array("h", values).tobytes()


def samples(pcm: bytes) -> list[int]:
    return array.array("h", pcm).tolist()


def sine(rate: int, count: int, freq: float = 440.0, amplitude: int = 10000) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(count)]


def speech_like(rate: int, count: int) -> list[int]:
    """Harmonics of a gliding pitch with a syllable-rate envelope: hard for PLC to guess."""
    out, phase = [], 0.0
    for i in range(count):
        t = i / rate
        pitch = 120 + 60 * math.sin(2 * math.pi * 1.7 * t) + 40 * math.sin(2 * math.pi * 0.6 * t)
        phase += 2 * math.pi * pitch / rate
        envelope = 0.6 + 0.4 * math.sin(2 * math.pi * 3 * t)
        value = sum(math.sin(k * phase) / k for k in range(1, 15))
        out.append(round(6000 * envelope * value))
    return out


def frames_of(signal: list[int], size: int) -> list[bytes]:
    return [pcm_of(signal[i : i + size]) for i in range(0, len(signal), size)]


def rms(values: list[int]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values))


def best_correlation(reference: list[int], decoded: list[int], max_lag: int) -> float:
    """Highest normalized cross-correlation of decoded[lag:] against reference."""
    window = len(reference)
    best = -1.0
    ref_energy = math.sqrt(sum(v * v for v in reference))
    for lag in range(max_lag + 1):
        part = decoded[lag : lag + window]
        energy = math.sqrt(sum(v * v for v in part))
        if energy:
            best = max(
                best,
                sum(a * b for a, b in zip(reference, part, strict=True)) / (ref_energy * energy),
            )
    return best


def squared_error(a: list[int], b: list[int]) -> int:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def test_version_names_libopus() -> None:
    assert opus_version().startswith("libopus ")


@pytest.mark.parametrize("rate", [48000, 16000])
class TestRoundTrip:
    def test_sine_survives(self, rate: int) -> None:
        frame = rate // 50
        signal = sine(rate, frame * FRAMES)
        encoder, decoder = OpusEncoder(rate), OpusDecoder(rate)
        decoded: list[int] = []
        for pcm in frames_of(signal, frame):
            out = decoder.decode(encoder.encode(pcm))
            assert len(out) == len(pcm)
            decoded += samples(out)
        # Skip the first 10 frames (encoder start-up), then search past the
        # codec delay (6.5 ms) for the best alignment.
        start, window = 10 * frame, 2 * frame
        max_lag = rate // 100
        reference = signal[start : start + window]
        assert best_correlation(reference, decoded[start:], max_lag) > 0.9
        steady_in, steady_out = signal[start:], decoded[start:]
        assert 0.8 < rms(steady_out) / rms(steady_in) < 1.25

    def test_packets_fit_the_bitrate(self, rate: int) -> None:
        frame = rate // 50
        bitrate = 32000
        encoder = OpusEncoder(rate, bitrate=bitrate)
        packets = [
            encoder.encode(pcm) for pcm in frames_of(speech_like(rate, frame * FRAMES), frame)
        ]
        budget = bitrate * 0.02 / 8
        mean = sum(map(len, packets)) / len(packets)
        assert 0.5 * budget <= mean <= 1.5 * budget
        assert max(map(len, packets)) <= MAX_PACKET_BYTES

    def test_lower_bitrate_gives_smaller_packets(self, rate: int) -> None:
        frame = rate // 50
        pcm = frames_of(speech_like(rate, frame * 20), frame)
        low, high = OpusEncoder(rate, bitrate=12000), OpusEncoder(rate, bitrate=64000)
        assert sum(len(low.encode(p)) for p in pcm) < sum(len(high.encode(p)) for p in pcm)

    def test_concealment_gives_the_asked_samples(self, rate: int) -> None:
        frame = rate // 50
        encoder, decoder = OpusEncoder(rate), OpusDecoder(rate)
        for pcm in frames_of(sine(rate, frame * 5), frame):
            decoder.decode(encoder.encode(pcm))
        assert len(decoder.conceal(frame)) == 2 * frame
        assert len(decoder.conceal(frame // 2)) == frame  # 10 ms
        # Concealment continues the sine rather than going silent at once.
        assert rms(samples(decoder.conceal(frame))) > 100

    def test_fec_recovers_better_than_concealment(self, rate: int) -> None:
        frame = rate // 50
        encoder = OpusEncoder(rate, fec=True, packet_loss_percent=20)
        packets = [encoder.encode(p) for p in frames_of(speech_like(rate, frame * FRAMES), frame)]
        # Three decoders with the same history up to each loss: a lossless
        # reference, one concealing the loss, one recovering it by FEC.
        reference, concealing, recovering = OpusDecoder(rate), OpusDecoder(rate), OpusDecoder(rate)
        plc_error = fec_error = 0
        for i, packet in enumerate(packets):
            wanted = samples(reference.decode(packet))
            if i % 5 == 3 and i + 1 < len(packets):
                concealed = samples(concealing.conceal(frame))
                recovered = samples(recovering.recover(packets[i + 1], frame))
                assert len(concealed) == len(recovered) == frame
                plc_error += squared_error(wanted, concealed)
                fec_error += squared_error(wanted, recovered)
            else:
                concealing.decode(packet)
                recovering.decode(packet)
        # Measured: FEC leaves about a quarter of the concealment error.
        assert fec_error < plc_error / 2

    def test_recover_without_fec_data_is_concealment(self, rate: int) -> None:
        frame = rate // 50
        encoder = OpusEncoder(rate, fec=False, packet_loss_percent=0)
        packets = [encoder.encode(p) for p in frames_of(speech_like(rate, frame * 6), frame)]
        concealing, recovering = OpusDecoder(rate), OpusDecoder(rate)
        for packet in packets[:4]:
            concealing.decode(packet)
            recovering.decode(packet)
        assert recovering.recover(packets[5], frame) == concealing.conceal(frame)

    def test_dtx_turns_silence_into_tiny_packets(self, rate: int) -> None:
        frame = rate // 50
        encoder = OpusEncoder(rate, dtx=True)
        sizes = [len(encoder.encode(bytes(2 * frame))) for _ in range(30)]
        # DTX starts after a short hangover of normal frames.
        assert all(size <= 3 for size in sizes[-15:])

    def test_without_dtx_silence_keeps_sending(self, rate: int) -> None:
        frame = rate // 50
        encoder = OpusEncoder(rate, dtx=False)
        sizes = [len(encoder.encode(bytes(2 * frame))) for _ in range(30)]
        assert all(size > 1 for size in sizes[-15:])


@pytest.mark.parametrize("ms", [10, 20, 40, 60])
def test_frame_durations(ms: int) -> None:
    rate = 48000
    frame = rate * ms // 1000
    encoder, decoder = OpusEncoder(rate), OpusDecoder(rate)
    assert len(decoder.decode(encoder.encode(pcm_of(sine(rate, frame))))) == 2 * frame


def test_stereo_round_trip() -> None:
    frame = 960
    left, right = sine(48000, frame * 10), sine(48000, frame * 10, freq=660)
    interleaved = [v for pair in zip(left, right, strict=True) for v in pair]
    encoder, decoder = OpusEncoder(channels=2), OpusDecoder(channels=2)
    for i in range(10):
        pcm = pcm_of(interleaved[2 * frame * i : 2 * frame * (i + 1)])
        out = decoder.decode(encoder.encode(pcm))
        assert len(out) == len(pcm)
    assert len(decoder.conceal(frame)) == 4 * frame


def test_accepts_memoryview_and_bytearray() -> None:
    pcm = pcm_of(sine(16000, 320))
    encoder, decoder = OpusEncoder(16000), OpusDecoder(16000)
    packet = encoder.encode(memoryview(bytearray(pcm)))
    assert len(decoder.decode(memoryview(packet))) == len(pcm)
    assert len(decoder.decode(bytearray(packet))) == len(pcm)


@pytest.mark.parametrize("rate", [8000, 12000, 16000, 24000, 48000])
def test_every_opus_rate_is_accepted(rate: int) -> None:
    frame = rate // 50
    packet = OpusEncoder(rate).encode(pcm_of(sine(rate, frame)))
    assert len(OpusDecoder(rate).decode(packet)) == 2 * frame


def test_packets_decode_at_another_rate() -> None:
    # Opus packets carry no rate: a 48 kHz stream decodes at 16 kHz too.
    packet = OpusEncoder(48000).encode(pcm_of(sine(48000, 960)))
    assert len(OpusDecoder(16000).decode(packet)) == 2 * 320


class TestErrors:
    @pytest.mark.parametrize("rate", [44100, 32000, 0, -8000])
    def test_bad_sample_rate(self, rate: int) -> None:
        with pytest.raises(OpusError, match=rf"sample rate {rate} Hz is not supported: use one of"):
            OpusEncoder(rate)
        with pytest.raises(OpusError, match=rf"sample rate {rate} Hz is not supported"):
            OpusDecoder(rate)

    @pytest.mark.parametrize("channels", [0, 3])
    def test_bad_channels(self, channels: int) -> None:
        with pytest.raises(OpusError, match=rf"channel count {channels} is not supported"):
            OpusEncoder(channels=channels)
        with pytest.raises(OpusError, match=rf"channel count {channels} is not supported"):
            OpusDecoder(channels=channels)

    def test_wrong_frame_size_carries_the_library_message(self) -> None:
        with pytest.raises(OpusError, match=r"opus_encode of 100 samples .*: invalid argument"):
            OpusEncoder().encode(pcm_of([0] * 100))

    def test_empty_frame(self) -> None:
        with pytest.raises(OpusError, match="invalid argument"):
            OpusEncoder().encode(b"")

    def test_odd_pcm_length(self) -> None:
        with pytest.raises(OpusError, match=r"PCM length 1921 is not a whole number"):
            OpusEncoder().encode(bytes(1921))

    def test_stereo_pcm_must_hold_whole_sample_pairs(self) -> None:
        with pytest.raises(OpusError, match=r"PCM length 1922 is not a whole number of 2-channel"):
            OpusEncoder(channels=2).encode(bytes(1922))

    def test_frame_longer_than_120ms(self) -> None:
        with pytest.raises(OpusError, match=r"exceeds the 120 ms maximum of 1920 at 16000 Hz"):
            OpusEncoder(16000).encode(bytes(2 * 1921))

    @pytest.mark.parametrize(
        ("options", "ctl"),
        [
            ({"bitrate": 0}, r"OPUS_SET_BITRATE\(0\)"),
            ({"complexity": 11}, r"OPUS_SET_COMPLEXITY\(11\)"),
            ({"packet_loss_percent": 101}, r"OPUS_SET_PACKET_LOSS_PERC\(101\)"),
        ],
    )
    def test_bad_setting_names_the_ctl(self, options: dict[str, int], ctl: str) -> None:
        with pytest.raises(OpusError, match=rf"{ctl} failed: invalid argument"):
            OpusEncoder(**options)  # type: ignore[arg-type]

    def test_unknown_application_and_signal(self) -> None:
        with pytest.raises(OpusError, match=r"Unknown Opus application 'game'"):
            OpusEncoder(application="game")  # type: ignore[arg-type]
        with pytest.raises(OpusError, match=r"Unknown Opus signal 'noise'"):
            OpusEncoder(signal="noise")  # type: ignore[arg-type]

    def test_other_applications_and_signals_encode(self) -> None:
        pcm = pcm_of(sine(48000, 960))
        for encoder in (
            OpusEncoder(application="audio", signal="music"),
            OpusEncoder(application="restricted-lowdelay", signal="voice"),
        ):
            assert 0 < len(encoder.encode(pcm)) <= MAX_PACKET_BYTES

    def test_corrupt_packet_carries_the_library_message(self) -> None:
        # TOC code 3 (arbitrary frame count) without its frame-count byte.
        with pytest.raises(OpusError, match=r"opus_decode failed: corrupted stream"):
            OpusDecoder().decode(b"\x03")

    def test_empty_payload(self) -> None:
        with pytest.raises(OpusError, match=r"use conceal\(\)"):
            OpusDecoder().decode(b"")
        with pytest.raises(OpusError, match="needs the next packet"):
            OpusDecoder().recover(b"", 960)

    @pytest.mark.parametrize("count", [0, -1, 5761])
    def test_concealment_length_out_of_range(self, count: int) -> None:
        with pytest.raises(OpusError, match=rf"Lost frame of {count} samples is outside 1..5760"):
            OpusDecoder().conceal(count)

    def test_concealment_length_not_a_frame_size(self) -> None:
        with pytest.raises(OpusError, match=r"concealment\) failed: invalid argument"):
            OpusDecoder().conceal(7)

    def test_error_is_a_value_error(self) -> None:
        assert issubclass(OpusError, ValueError)
