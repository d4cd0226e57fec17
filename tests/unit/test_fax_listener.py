"""Fax and modem tones heard on a transcoded call's decoded audio.

:class:`FaxListener` is the PCM tap: real spandsp detectors on 8 kHz audio, and
on 16 kHz audio resampled by speexdsp; it reports the first tone once and passes
the audio on untouched. :class:`CallMedia` taps both directions of a transcoded
call: a carrier's CNG, sent as PCMA over real sockets, reaches ``on_fax`` once,
and the re-offer it asks for moves the Opus leg to the carrier's PCMA.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import trio

from gateway.calls.call_media import CallMedia, FaxDetected, TranscodeSettings
from gateway.calls.negotiation import Codec, LegPolicy, NegotiationError, Side
from gateway.media.codecs import make_codec
from gateway.media.fax import FaxListener
from gateway.media.relay import MediaSession, PortAllocator
from gateway.media.tones import FaxTone
from gateway.sip.sdp import Origin, parse_sdp
from tests.unit.test_relay import LOOPBACK, Peer

PCMA = Codec("PCMA", 8, 8000)


def tone(rate: int, hz: float, seconds: float, amplitude: float = 8000.0) -> bytes:
    t = np.arange(round(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * math.pi * hz * t)).astype("<i2").tobytes()


def silence(rate: int, seconds: float) -> bytes:
    return bytes(2 * round(rate * seconds))


def feed(listener: FaxListener, pcm: bytes, rate: int, frame_ms: int = 20) -> int:
    """Frames of ``pcm`` through the tap; how many came back other than as given."""
    size = 2 * rate * frame_ms // 1000
    changed = 0
    for start in range(0, len(pcm) - size + 1, size):
        frame = pcm[start : start + size]
        changed += listener(frame, start // 2) is not frame
    return changed


@pytest.mark.parametrize(
    ("rate", "signal", "expected"),
    [
        (8000, silence(8000, 0.2) + tone(8000, 1100, 0.5) + silence(8000, 1), FaxTone.CNG),
        (8000, tone(8000, 2100, 1.2), FaxTone.CED),
        (16000, silence(16000, 0.2) + tone(16000, 1100, 0.5) + silence(16000, 1), FaxTone.CNG),
        (16000, tone(16000, 2100, 1.2), FaxTone.CED),
    ],
    ids=["cng-8k", "ced-8k", "cng-16k", "ced-16k"],
)
def test_first_tone_is_reported_once_and_audio_passes(
    rate: int, signal: bytes, expected: FaxTone
) -> None:
    reports: list[FaxTone] = []
    listener = FaxListener(rate, reports.append)
    assert feed(listener, signal + signal, rate) == 0
    assert reports == [expected]
    assert listener.heard is expected


def test_long_wideband_frames_are_fed_in_pieces() -> None:
    reports: list[FaxTone] = []
    listener = FaxListener(16000, reports.append)
    feed(listener, tone(16000, 2100, 1.5), 16000, frame_ms=120)  # 1920 samples a frame
    assert reports == [FaxTone.CED]


@pytest.mark.parametrize("hz", [1000.0, 1700.0])
def test_other_tones_and_silence_are_not_fax(hz: float) -> None:
    reports: list[FaxTone] = []
    listener = FaxListener(8000, reports.append)
    feed(listener, tone(8000, hz, 3) + silence(8000, 1), 8000)
    assert reports == [] and listener.heard is None


def test_a_stopped_listener_reports_nothing() -> None:
    reports: list[FaxTone] = []
    listener = FaxListener(8000, reports.append)
    listener.stop()
    feed(listener, tone(8000, 2100, 1.5), 8000)
    assert reports == []


# ---- CallMedia: a carrier's CNG over real sockets ------------------------------------------


@pytest.fixture
def allocator() -> PortAllocator:
    base = random.randrange(56000, 58000, 2)
    return PortAllocator(LOOPBACK, base, base + 99)


def body(port: int, *formats: str) -> bytes:
    names = {"111": "opus/48000/2", "8": "PCMA/8000"}
    lines = ["v=0", "o=peer 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0"]
    lines.append(f"m=audio {port} RTP/AVP {' '.join(formats)}")
    lines += [f"a=rtpmap:{pt} {names[pt]}" for pt in formats]
    return ("\r\n".join(lines) + "\r\n").encode()


async def send_pcma(peer: Peer, port: int, pcm: bytes) -> None:
    """8 kHz PCM as PCMA RTP in real time, 20 ms a packet."""
    codec = make_codec(PCMA)
    start = trio.current_time()
    for i, offset in enumerate(range(0, len(pcm) - 320 + 1, 320)):
        header = bytes([0x80, 8]) + i.to_bytes(2, "big") + (i * 160).to_bytes(4, "big")
        packet = header + b"\x00\x00\xca\xfe" + codec.encode(pcm[offset : offset + 320])
        await peer.send(packet, port)
        await trio.sleep_until(start + (i + 1) * 0.02)


async def test_call_media_hears_the_carriers_cng_and_reoffers_pcma(
    allocator: PortAllocator,
) -> None:
    app_policy = LegPolicy(srtp="optional", codecs=("opus", "PCMA"), sdes_allowed=True)
    trunk_policy = LegPolicy(srtp="off", codecs=("PCMA",), sdes_allowed=False)
    origins: dict[Side, Origin] = {
        "a": Origin("edgegw", "1", 1, "IN", "IP4", LOOPBACK),
        "b": Origin("edgegw", "2", 1, "IN", "IP4", LOOPBACK),
    }
    session = MediaSession(allocator, host_for_sdp=LOOPBACK, latch_window=5.0)
    app, carrier = await Peer.bind(), await Peer.bind()
    heard: list[FaxDetected] = []
    try:
        async with trio.open_nursery() as nursery:
            media = CallMedia(
                session,
                {"a": app_policy, "b": trunk_policy},
                origins,
                call_id="fax",
                settings=TranscodeSettings(rtcp_interval=5.0),
            )
            media.on_fax = heard.append
            ports = session.open(nursery)
            media.bind(ports)
            with pytest.raises(NegotiationError):
                media.fax_reoffer()  # nothing negotiated yet
            media.offer("a", body(app.port, "111"))
            media.answer("b", body(carrier.port, "8"))
            assert session.transcoding
            cng = silence(8000, 0.1) + tone(8000, 1100, 0.5) + silence(8000, 0.3)
            await send_pcma(carrier, ports["b"][0], cng)
            with trio.fail_after(1):
                while not heard:
                    await trio.sleep(0.01)
            assert heard == [FaxDetected("b", FaxTone.CNG)]
            await send_pcma(carrier, ports["b"][0], tone(8000, 1100, 0.5))
            assert len(heard) == 1  # once per call
            side, offer = media.fax_reoffer()
            assert side == "a"
            (line,) = parse_sdp(offer).media
            assert [e.encoding for e in line.rtpmap().values()] == ["PCMA"]
            media.answer("a", body(app.port, "8"))
            assert not session.transcoding  # relayed: no jitter buffer, no concealment
            assert media.plan is not None and media.plan.passthrough
            with pytest.raises(NegotiationError) as caught:
                media.fax_reoffer()
            assert caught.value.reason == "Call Is Not Transcoded"
            nursery.cancel_scope.cancel()
    finally:
        session.close()
        app.close()
        carrier.close()


async def test_no_g711_leg_means_no_pass_through(allocator: PortAllocator) -> None:
    """Opus against G.722: there is no G.711 codec to move the call to."""
    app_policy = LegPolicy(srtp="off", codecs=("opus",), sdes_allowed=False)
    trunk_policy = LegPolicy(srtp="off", codecs=("G722",), sdes_allowed=False)
    origins: dict[Side, Origin] = {
        "a": Origin("edgegw", "1", 1, "IN", "IP4", LOOPBACK),
        "b": Origin("edgegw", "2", 1, "IN", "IP4", LOOPBACK),
    }
    session = MediaSession(allocator, host_for_sdp=LOOPBACK, latch_window=5.0)
    try:
        async with trio.open_nursery() as nursery:
            media = CallMedia(session, {"a": app_policy, "b": trunk_policy}, origins, call_id="x")
            media.bind(session.open(nursery))
            media.offer("a", body(4000, "111"))
            g722 = body(6000, "8").replace(b"RTP/AVP 8", b"RTP/AVP 9")
            media.answer("b", g722.replace(b"a=rtpmap:8 PCMA/8000", b"a=rtpmap:9 G722/8000"))
            assert session.transcoding
            with pytest.raises(NegotiationError) as caught:
                media.fax_reoffer()
            assert caught.value.reason == "No G.711 Leg For Fax Pass-Through"
            nursery.cancel_scope.cancel()
    finally:
        session.close()
