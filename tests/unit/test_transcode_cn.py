"""Comfort noise and DTX through the transcoder (RFC 3389, RFC 7587 3.1.3), on a fake clock.

The talker's signal is voiced-speech-like (harmonics of 150 Hz under a syllable
envelope, -20 dBov) for a second, then only the background for 1.6 s, then talk
again, all over a steady background noise. The app side encodes it with the real
libopus DTX and leaves out the packets DTX lets it skip; the carrier side sends G.711,
with one RFC 3389 CN packet before its silence when it negotiated CN. What comes out
is read as the far end would: CN packets by their level, audio decoded, the gaps of
an Opus DTX stream filled by the decoder's own concealment (libopus's comfort noise).
"""

from __future__ import annotations

import itertools
import math
import random
import struct
from collections.abc import Sequence

import numpy as np
import pytest

from gateway.calls.negotiation import Codec
from gateway.media.codecs import AudioCodec, Opus, OpusSettings, make_codec, make_pair
from gateway.media.comfort_noise import build_cn
from gateway.media.resample import Resampler
from gateway.media.rtp import RtpHeader, parse_rtp_header
from gateway.media.tones import NoiseGenerator
from gateway.media.transcode import CN_REFRESH, JitterSettings, StreamFormat, Transcoder
from tests.unit.test_transcode import drive

OPUS = Codec("opus", 111, 48000, 2, "useinbandfec=1;usedtx=1")
OPUS_NO_DTX = Codec("opus", 111, 48000, 2, "useinbandfec=1")
PCMA = Codec("PCMA", 8, 8000)
PCMU = Codec("PCMU", 0, 8000)
CN_PT = 13
SSRC = 0x5EED
TALK = 1.0
PAUSE = 1.6
# Background of the app's microphone: white noise at 48 kHz, quiet enough for libopus
# to go into DTX. Of it, the 0-4 kHz band the G.711 side carries is 7.8 dB lower.
APP_NOISE_DBOV = -70
CARRIER_NOISE_DBOV = -60
CARRIER_CN_DBOV = -60


def dbov(samples: np.ndarray) -> float:
    x = np.asarray(samples, dtype=np.float64)
    return float(10 * np.log10(np.mean(x * x) / 32768.0**2))


def talk(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    voiced = sum(np.sin(2 * np.pi * 150 * k * t + k) / k for k in range(1, 23))
    signal = voiced * (0.5 - 0.5 * np.cos(2 * np.pi * 4 * t))  # four syllables a second
    return np.asarray(signal * 32768 * 10 ** (-20 / 20) / np.sqrt(np.mean(signal**2)))


def background(rate: int, seconds: float, level: int) -> np.ndarray:
    noise = NoiseGenerator(level, seed=3, max_frame_samples=960)
    step = rate // 50
    frames = math.ceil(rate * seconds / step)
    pcm = b"".join(noise.generate(step) for _ in range(frames))
    return np.frombuffer(pcm, "<i2")[: round(rate * seconds)].astype(np.float64)


def conversation(rate: int, noise: int) -> np.ndarray:
    """Talk, pause, talk, over a steady background."""
    signal = np.concatenate([talk(rate, TALK), np.zeros(round(rate * PAUSE)), talk(rate, TALK)])
    signal += background(rate, len(signal) / rate, noise)
    return np.clip(np.round(signal), -32768, 32767).astype("<i2")


def rtp(pt: int, seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
    first = pt | (0x80 if marker else 0)
    return struct.pack("!BBHII", 0x80, first, seq & 0xFFFF, ts & 0xFFFF_FFFF, SSRC) + payload


def app_packets() -> list[tuple[float, bytes]]:
    """The app's Opus with DTX: packets of 2 bytes or less are not sent (RFC 7587 3.1.3)."""
    encoder = Opus(OpusSettings(complexity=10, dtx=True), fec=True, dtx=True, max_bitrate=32000)
    signal = conversation(48000, APP_NOISE_DBOV)
    out: list[tuple[float, bytes]] = []
    seq, marker = 100, True
    for k in range(len(signal) // 960):
        payload = encoder.encode(signal[k * 960 : (k + 1) * 960].tobytes())
        if not payload:
            marker = True
            continue
        out.append((k * 0.02, rtp(111, seq, 5000 + 960 * k, payload, marker)))
        seq, marker = seq + 1, False
    return out


def carrier_packets(*, cn: bool) -> list[tuple[float, bytes]]:
    """G.711: with CN, one CN packet where the talk stops and nothing until it resumes."""
    encoder = make_codec(PCMA)
    signal = conversation(8000, CARRIER_NOISE_DBOV)
    out: list[tuple[float, bytes]] = []
    seq, marker = 100, True
    for k in range(len(signal) // 160):
        at, ts = k * 0.02, 5000 + 160 * k
        if cn and TALK <= at + 1e-9 < TALK + PAUSE:
            if k == round(TALK * 50):
                out.append((at, rtp(CN_PT, seq, ts, build_cn(CARRIER_CN_DBOV))))
                seq += 1
            marker = True
            continue
        payload = encoder.encode(signal[k * 160 : (k + 1) * 160].tobytes())
        out.append((at, rtp(8, seq, ts, payload, marker)))
        seq, marker = seq + 1, False
    return out


def in_band_app_background() -> float:
    """The app's background as the 8 kHz side can carry it."""
    noise = background(48000, 1.0, APP_NOISE_DBOV).astype("<i2")
    down = Resampler(48000, 8000, max_input_samples=960)
    pcm = b"".join(down.process(noise[i : i + 960].tobytes()) for i in range(0, len(noise), 960))
    return dbov(np.frombuffer(pcm, "<i2")[400:])


def parsed(out: Sequence[tuple[float, bytes]]) -> list[tuple[float, RtpHeader, bytes]]:
    result = []
    for at, packet in out:
        header = parse_rtp_header(packet)
        assert header is not None
        result.append((at, header, packet[12:]))
    return result


def decoded_g711(codec: AudioCodec, packets: list[tuple[float, RtpHeader, bytes]]) -> np.ndarray:
    return np.frombuffer(b"".join(codec.decode(p) for _, _, p in packets), "<i2").astype(int)


def max_step(samples: np.ndarray) -> int:
    return int(np.max(np.abs(np.diff(samples))))


def opus_to_g711(target: Codec, cn: int | None) -> tuple[Transcoder, list[tuple[float, bytes]]]:
    decoder, encoder = make_pair(OPUS, target)
    direction = Transcoder(
        decoder,
        encoder,
        StreamFormat(111, 20),
        StreamFormat(target.payload_type, 20, comfort_noise=cn),
        rng=random.Random(1),
    )
    return direction, drive(direction, app_packets(), until=TALK * 2 + PAUSE + 0.4)


# ---- Opus DTX to G.711 ----------------------------------------------------------------------


def test_app_packets_do_pause_in_dtx() -> None:
    # The premise: libopus stops sending during the pause, but for its updates.
    sent = [at for at, _ in app_packets()]
    in_pause = [at for at in sent if TALK + 0.6 <= at < TALK + PAUSE]
    assert 1 <= len(in_pause) <= 4
    assert len(sent) < 0.8 * (TALK * 2 + PAUSE) * 50


def test_opus_dtx_to_g711_with_cn_sends_cn_during_the_pause() -> None:
    direction, out = opus_to_g711(PCMA, CN_PT)
    packets = parsed(out)
    headers = [h for _, h, _ in packets]
    assert {h.ssrc for h in headers} == {direction.ssrc}
    for before, after in itertools.pairwise(headers):
        assert after.sequence == (before.sequence + 1) & 0xFFFF
    kinds = "".join("C" if h.payload_type == CN_PT else "A" for h in headers)
    # Audio, then CN only (the noise updates libopus sends in DTX do not end the pause),
    # then audio again, then CN after the last talk.
    talkspurts = [run for run in kinds.split("C") if run]
    assert len(talkspurts) == 2
    audio = [(at, h, p) for at, h, p in packets if h.payload_type == 8]
    cn = [(at, h, p) for at, h, p in packets if h.payload_type == CN_PT]
    resumed = next(i for i, (_, h, _) in enumerate(audio) if h.marker and i > 0)
    assert [i for i, (_, h, _) in enumerate(audio) if h.marker] == [0, resumed]
    pause_cn = [item for item in cn if audio[resumed - 1][0] < item[0] < audio[resumed][0]]
    assert 2 <= len(pause_cn) <= 4
    assert not any(h.marker for _, h, _ in cn)
    # RFC 3389 4: never longer than the refresh without a packet.
    times = [at for at, _, _ in packets]
    assert max(np.diff(times)) <= CN_REFRESH + 0.02 + 1e-6
    # The CN packet's timestamp is where the audio stopped; the audio after the pause
    # moves the timestamp on by the time the pause lasted (within a packet).
    assert (pause_cn[0][1].timestamp - audio[resumed - 1][1].timestamp) % (1 << 32) == 160
    jump = (audio[resumed][1].timestamp - audio[resumed - 1][1].timestamp) % (1 << 32)
    wall = audio[resumed][0] - audio[resumed - 1][0]
    assert abs(jump - wall * 8000) <= 160
    # The CN level is the app's background as the G.711 side carries it.
    levels = {-p[0] for _, _, p in pause_cn}
    reference = in_band_app_background()
    assert all(abs(level - reference) <= 3 for level in levels)
    # Nothing clicks where the audio stops and starts again: around each edge the
    # largest step is far below what the talk itself makes.
    pcm = decoded_g711(make_codec(PCMA), audio)
    stop, start = resumed * 160, resumed * 160
    assert max_step(pcm[stop - 160 : stop]) <= 64
    assert max_step(pcm[start : start + 40]) <= 400
    assert max_step(pcm[:stop]) > 4000
    assert direction.stats.comfort_noise_sent == len(cn)


def test_opus_dtx_to_g711_without_cn_is_noise_at_the_background_level() -> None:
    direction, out = opus_to_g711(PCMU, None)
    packets = parsed(out)
    headers = [h for _, h, _ in packets]
    # Continuous: one packet per 20 ms, timestamps without a jump, no new talkspurt.
    for before, after in itertools.pairwise(headers):
        assert (after.timestamp - before.timestamp) % (1 << 32) == 160
    assert not any(h.marker for h in headers[1:])
    assert direction.stats.noise_frames >= 40
    pcm = decoded_g711(make_codec(PCMU), packets)
    # Where the pause is noise of ours (the middle of it) its level is the background
    # heard before libopus went into DTX, within a few dB; never digital silence.
    heard = pcm[round((TALK + 0.15) * 8000) : round((TALK + 0.35) * 8000)]
    generated = pcm[round((TALK + 0.8) * 8000) : round((TALK + 1.4) * 8000)]
    assert abs(dbov(generated) - dbov(heard)) <= 3
    assert abs(dbov(generated) - in_band_app_background()) <= 5
    windows = generated[: len(generated) // 160 * 160].reshape(-1, 160)
    assert all(np.any(window) for window in windows)
    # No click anywhere in the pause, where concealment, libopus's updates and our
    # noise take turns: steps stay within what the noise makes.
    pause = pcm[round((TALK + 0.1) * 8000) : round((TALK + PAUSE - 0.05) * 8000)]
    assert max_step(pause) <= 64


# ---- G.711 with CN to Opus -------------------------------------------------------------------


@pytest.mark.parametrize("dtx", [True, False], ids=["opus-dtx", "opus-no-dtx"])
def test_g711_cn_to_opus_is_comfort_noise_at_the_cn_level(dtx: bool) -> None:
    target = OPUS if dtx else OPUS_NO_DTX
    decoder, encoder = make_pair(PCMA, target, OpusSettings(dtx=True))
    direction = Transcoder(
        decoder,
        encoder,
        StreamFormat(8, 20, comfort_noise=CN_PT),
        StreamFormat(111, 20),
        rng=random.Random(1),
    )
    arrivals = carrier_packets(cn=True)
    out = parsed(drive(direction, arrivals, until=TALK * 2 + PAUSE + 0.2))
    stats = direction.stats
    assert stats.comfort_noise == 1
    # The CN packet's sequence number is not a loss.
    assert direction.snapshot()["lost"] == 0
    in_pause = [at for at, _, _ in out if TALK + 0.3 <= at < TALK + PAUSE]
    if dtx:
        # The encoder turns the noise into DTX: only its updates, about every 400 ms.
        assert 1 <= len(in_pause) <= 5
        assert stats.dtx_frames >= 40
    else:
        assert len(in_pause) == pytest.approx((PAUSE - 0.3) * 50, abs=1)
        assert stats.dtx_frames == 0
    # The app decodes what came, concealing what DTX left out (libopus's comfort noise).
    app = make_codec(target, opus_rate=8000)
    pcm_parts: list[bytes] = []
    previous: int | None = None
    for _, header, payload in out:
        if previous is not None:
            missing = (header.timestamp - previous) % (1 << 32) // 960 - 1
            pcm_parts += [app.conceal(160) for _ in range(missing)]
        pcm_parts.append(app.decode(payload))
        previous = header.timestamp
    pcm = np.frombuffer(b"".join(pcm_parts), "<i2").astype(int)
    gap = pcm[round((TALK + 0.3) * 8000) : round((TALK + PAUSE - 0.1) * 8000)]
    assert abs(dbov(gap) - CARRIER_CN_DBOV) <= 3
    # No click where the talk stops and the noise begins.
    edge = round(TALK * 8000)
    assert max_step(pcm[edge + 80 : edge + 800]) <= 200
    assert stats.noise_frames >= (PAUSE - 0.2) * 50


def test_g711_without_cn_to_opus_dtx_lets_the_encoder_pause() -> None:
    # A carrier that never stops sending: the quiet part is its own noise, and the
    # Opus encoder's DTX does the work; the gateway generates nothing.
    decoder, encoder = make_pair(PCMA, OPUS, OpusSettings(dtx=True))
    direction = Transcoder(
        decoder, encoder, StreamFormat(8, 20), StreamFormat(111, 20), rng=random.Random(1)
    )
    quiet = [
        (at, packet)
        for at, packet in carrier_packets(cn=False)
        if TALK <= at < TALK + PAUSE or at < TALK
    ]
    # Quieter than the carrier's default background, so that libopus goes into DTX.
    signal = conversation(8000, -75)
    g711 = make_codec(PCMA)
    arrivals = [
        (at, p[:12] + g711.encode(signal[k * 160 : (k + 1) * 160].tobytes()))
        for k, (at, p) in enumerate(quiet)
    ]
    out = parsed(drive(direction, arrivals, until=TALK + PAUSE))
    in_pause = [at for at, _, _ in out if TALK + 0.6 <= at < TALK + PAUSE]
    assert len(in_pause) <= 4
    assert direction.stats.noise_frames == 0
    assert direction.stats.dtx_frames >= 30


# ---- edges ---------------------------------------------------------------------------------


def test_real_audio_and_noise_meet_without_a_click() -> None:
    # A 300 Hz tone at -16 dBov stops dead at a packet boundary for a 100 ms pause the
    # buffer knows in advance (the next packet follows in sequence), then starts again
    # mid-cycle: both edges would be steps of thousands if the noise began and ended
    # abruptly; the crossfades keep them within the tone's own largest step.
    rate, freq = 8000, 300.0
    amplitude = 32768 * math.sqrt(2) * 10 ** (-16 / 20)
    t = np.arange(rate) / rate
    tone = np.round(amplitude * np.sin(2 * np.pi * freq * t + 1.0)).astype("<i2")
    natural = max_step(tone.astype(int))
    g711 = make_codec(PCMA)
    arrivals = []
    for k in range(50):
        ts = 5000 + 160 * k + (800 if k >= 25 else 0)
        at = k * 0.02 + (0.1 if k >= 25 else 0.0)
        payload = g711.encode(tone[k * 160 : (k + 1) * 160].tobytes())
        arrivals.append((at, rtp(8, 100 + k, ts, payload)))
    assert abs(int(tone[25 * 160 - 1])) > 1.2 * natural  # the cut is a step of its own
    assert abs(int(tone[25 * 160])) > 1.2 * natural
    decoder, encoder = make_pair(PCMA, PCMU)
    direction = Transcoder(
        decoder,
        encoder,
        StreamFormat(8, 20),
        StreamFormat(0, 20),
        rng=random.Random(1),
        jitter=JitterSettings(initial=0.2, minimum=0.2, maximum=0.2),
    )
    pcm = decoded_g711(make_codec(PCMU), parsed(drive(direction, arrivals, until=1.28)))
    stop, start = 25 * 160, 30 * 160
    assert direction.stats.noise_frames == 5
    assert max_step(pcm[stop - 8 : stop + 48]) <= 1.1 * natural
    assert max_step(pcm[start - 48 : start + 8]) <= 1.1 * natural
    assert -50 <= dbov(pcm[stop + 48 : start - 48]) <= -38
