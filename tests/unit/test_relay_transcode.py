"""The relay in transcoding mode: real sockets, real libsrtp, real codecs, Trio's clock.

Leg "a" is an app speaking Opus over SRTP with rtcp-mux; leg "b" a carrier speaking PCMA
over plain RTP at a 30 ms ptime with RTCP on its own port. Each peer sends a sine in its
own codec for about a second in real time; each must receive packets in its own codec and
ptime carrying the other's sine, and the gateway's own RTCP (SR + SDES, the peer's RTCP
terminated, not forwarded). A stranger's plain RTP on the app leg never reaches the
pipeline; switching back to relay and again to transcoding leaves no task behind, and
CallMedia does those switches from the negotiated plans, with the settings of the
``[media]`` opus/jitter keys (bad values refused by key).
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import trio

from gateway.calls.call_media import CallMedia, TranscodeSettings, transcode_settings
from gateway.calls.negotiation import Codec, LegPolicy, Side
from gateway.config import ConfigError, parse_config
from gateway.media.codecs import AudioCodec, OpusSettings, make_codec, opus_packet_samples
from gateway.media.relay import MediaSession, PortAllocator
from gateway.media.rtcp import (
    ReceiverReport,
    ReportBlock,
    SenderReport,
    SourceDescription,
    build_rtcp,
    parse_rtcp,
)
from gateway.media.rtp import is_rtcp, parse_rtp_header
from gateway.media.srtp import SrtpReceiver, SrtpSender, SrtpSuite, new_crypto
from gateway.media.transcode import JitterSettings, StreamFormat, Transcoder
from gateway.sip.sdp import Origin
from tests.speech import Audio, dominant_frequency, rms_dbov
from tests.unit.test_relay import LOOPBACK, FakeClock, Peer, session_for

OPUS = Codec("opus", 111, 48000, 2, "useinbandfec=1")
PCMA = Codec("PCMA", 8, 8000)
APP_HZ, CARRIER_HZ = 1000.0, 600.0
SECONDS = 1.0


@pytest.fixture
def allocator() -> PortAllocator:
    base = random.randrange(54000, 58000, 2)
    return PortAllocator(LOOPBACK, base, base + 99)


@dataclass
class Heard:
    """What one peer received: RTP (plain) and RTCP (parsed), in order."""

    rtp: list[bytes] = field(default_factory=list)
    rtcp: list[bytes] = field(default_factory=list)


def tone(rate: int, hz: float, seconds: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.round(6000 * np.sin(2 * math.pi * hz * t)).astype("<i2")


async def send_audio(
    peer: Peer,
    port: int,
    codec: AudioCodec,
    pt: int,
    ptime: int,
    hz: float,
    protect: SrtpSender | None = None,
) -> None:
    """Real-time RTP of a sine, one packet per ptime."""
    signal = tone(codec.pcm_rate, hz, SECONDS)
    step = codec.samples(ptime)
    start = trio.current_time()
    for i, offset in enumerate(range(0, len(signal) - step + 1, step)):
        payload = codec.encode(signal[offset : offset + step].tobytes())
        ts = 1000 + i * codec.rtp_clock * ptime // 1000
        header = bytes([0x80, pt]) + (500 + i).to_bytes(2, "big") + ts.to_bytes(4, "big")
        packet = header + (0xC0FFEE + pt).to_bytes(4, "big") + payload
        await peer.send(protect.protect_rtp(packet) if protect else packet, port)
        await trio.sleep_until(start + (i + 1) * ptime / 1000)


async def listen(peer: Peer, heard: Heard, unprotect: SrtpReceiver | None, until: float) -> None:
    with trio.move_on_at(until):
        while True:
            data, _ = await peer.sock.recvfrom(4096)
            if is_rtcp(data):
                heard.rtcp.append(unprotect.unprotect_rtcp(data) if unprotect else data)
            else:
                heard.rtp.append(unprotect.unprotect_rtp(data) if unprotect else data)


def decoded(codec: AudioCodec, packets: list[bytes]) -> Audio:
    pcm = b"".join(codec.decode(p[12:]) for p in packets)
    samples = np.frombuffer(pcm, "<i2").astype(np.float64)
    return Audio(samples[codec.samples(100) :], codec.pcm_rate)


@dataclass
class Call:
    session: MediaSession
    ports: dict[str, tuple[int, int]]
    app: Peer
    carrier: Peer
    carrier_rtcp: Peer
    app_tx: SrtpSender
    app_rx: SrtpReceiver
    a_to_b: Transcoder
    b_to_a: Transcoder
    nursery: trio.Nursery


def transcoders() -> tuple[Transcoder, Transcoder]:
    opus, pcma = make_codec(OPUS, OpusSettings()), make_codec(PCMA)
    app, carrier = StreamFormat(111, 20), StreamFormat(8, 30)
    return Transcoder(opus, pcma, app, carrier), Transcoder(pcma, opus, carrier, app)


@pytest.fixture
async def call(allocator: PortAllocator) -> AsyncIterator[Call]:
    app, carrier, carrier_rtcp = await Peer.bind(), await Peer.bind(), await Peer.bind()
    app_key, relay_key = (
        new_crypto(1, SrtpSuite.AEAD_AES_128_GCM),
        new_crypto(1, SrtpSuite.AEAD_AES_128_GCM),
    )
    session = session_for(allocator, clock=FakeClock())
    async with trio.open_nursery() as nursery:
        ports = session.open(nursery)
        session.set_remote("a", app.host, app.port, app.port)
        session.set_remote("b", carrier.host, carrier.port, carrier_rtcp.port)
        session.configure(
            "a", rtcp_mux=True, receiver=SrtpReceiver(app_key), sender=SrtpSender(relay_key)
        )
        a_to_b, b_to_a = transcoders()
        session.start_transcoding(a_to_b, b_to_a, rtcp_interval=0.25)
        yield Call(
            session,
            ports,
            app,
            carrier,
            carrier_rtcp,
            SrtpSender(app_key),
            SrtpReceiver(relay_key),
            a_to_b,
            b_to_a,
            nursery,
        )
        nursery.cancel_scope.cancel()
    session.close()
    for peer in (app, carrier, carrier_rtcp):
        peer.close()


async def test_opus_srtp_app_and_pcma_carrier_hear_each_other(call: Call) -> None:
    heard_app, heard_carrier, carrier_reports = Heard(), Heard(), Heard()
    opus, pcma = make_codec(OPUS, OpusSettings(complexity=10)), make_codec(PCMA)
    until = trio.current_time() + SECONDS + 0.5
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen, call.app, heard_app, call.app_rx, until)
        nursery.start_soon(listen, call.carrier, heard_carrier, None, until)
        nursery.start_soon(listen, call.carrier_rtcp, carrier_reports, None, until)
        nursery.start_soon(
            send_audio, call.app, call.ports["a"][0], opus, 111, 20, APP_HZ, call.app_tx
        )
        nursery.start_soon(send_audio, call.carrier, call.ports["b"][0], pcma, 8, 30, CARRIER_HZ)
        # The carrier's own report reaches the gateway, which keeps it to itself.
        await trio.sleep(0.4)
        rr = ReceiverReport(0xC0FFEE + 8, (ReportBlock(call.a_to_b.ssrc, 0, 0, 0, 0, 0, 0),))
        await call.carrier_rtcp.send(build_rtcp([rr]), call.ports["b"][1])

    # The carrier hears PCMA in 30 ms packets of the gateway's stream, carrying the app's sine.
    headers = [parse_rtp_header(p) for p in heard_carrier.rtp]
    assert {(h.payload_type, h.ssrc) for h in headers if h} == {(8, call.a_to_b.ssrc)}
    assert {len(p) - 12 for p in heard_carrier.rtp} == {240}
    # 1 s in 30 ms packets, then comfort noise for the 0.5 s the app is silent.
    assert 30 <= len(heard_carrier.rtp) <= 52
    audio = decoded(make_codec(PCMA), heard_carrier.rtp)
    assert dominant_frequency(audio) == pytest.approx(APP_HZ, abs=5)
    assert rms_dbov(audio) > -20
    # The app hears Opus in 20 ms packets, carrying the carrier's sine.
    headers = [parse_rtp_header(p) for p in heard_app.rtp]
    assert {(h.payload_type, h.ssrc) for h in headers if h} == {(111, call.b_to_a.ssrc)}
    assert {opus_packet_samples(p[12:]) for p in heard_app.rtp} == {960}
    assert 45 <= len(heard_app.rtp) <= 76  # and comfort noise once the carrier is silent
    audio = decoded(make_codec(OPUS), heard_app.rtp)
    assert dominant_frequency(audio) == pytest.approx(CARRIER_HZ, abs=5)

    # RTCP: SR + SDES on both legs, from the gateway's SSRC toward each (SRTCP to the app).
    for reports, ours, theirs in (
        (heard_app.rtcp, call.b_to_a.ssrc, 0xC0FFEE + 111),
        (carrier_reports.rtp + carrier_reports.rtcp, call.a_to_b.ssrc, 0xC0FFEE + 8),
    ):
        assert len(reports) >= 3
        last = parse_rtcp(reports[-1])
        assert isinstance(last[0], SenderReport) and last[0].ssrc == ours
        assert last[0].sender_info.packet_count > 0
        assert [block.ssrc for block in last[0].reports] == [theirs]
        assert isinstance(last[1], SourceDescription) and last[1].chunks[0].ssrc == ours
    stats = call.session.stats()
    assert stats["b"]["transcoding"]["rtcp"]["packets_received"] == 1
    assert stats["a"]["transcoding"]["in"]["packets_in"] == 50
    assert stats["b"]["rtp"]["packets_in"] == 33
    assert stats["b"]["rtp"]["packets_out"] == len(heard_carrier.rtp)
    # Nothing but the gateway's own RTCP reached the app: the carrier's RR was terminated.
    firsts = [parse_rtcp(report)[0] for report in heard_app.rtcp]
    assert all(isinstance(p, SenderReport) and p.ssrc == call.b_to_a.ssrc for p in firsts)


async def test_stranger_plain_rtp_never_reaches_the_pipeline(call: Call) -> None:
    stranger = await Peer.bind()
    try:
        pcma = make_codec(PCMA)
        packet = bytes([0x80, 111]) + bytes(10) + pcma.encode(bytes(320))
        for _ in range(5):
            await stranger.send(packet, call.ports["a"][0])
        # The app itself latches; then the stranger again, with SRTP it cannot forge.
        await call.app.send(call.app_tx.protect_rtp(packet), call.ports["a"][0])
        with trio.fail_after(2):
            while call.session.stats()["a"]["rtp"]["packets_in"] < 1:
                await trio.sleep(0.005)
        await stranger.send(packet, call.ports["a"][0])
        with trio.fail_after(2):
            while sum(call.session.stats()["a"]["drops"].values()) < 6:
                await trio.sleep(0.005)
    finally:
        stranger.close()
    assert call.session.stats()["a"]["drops"] == {"srtp-auth": 5, "unexpected-source": 1}
    # Only the app's one packet reached the transcoder (whose payload is not Opus: dropped
    # there as malformed or decoded, but counted once).
    stats = call.a_to_b.stats
    assert stats.packets_in + stats.malformed == 1


async def test_switching_modes_leaves_no_task_behind(call: Call) -> None:
    session, nursery = call.session, call.nursery
    await trio.sleep(0.01)
    running = len(nursery.child_tasks)  # four pumps and the transcoding set-up
    assert session.transcoding
    session.stop_transcoding()
    await trio.sleep(0.01)
    assert len(nursery.child_tasks) == running - 1
    assert not session.transcoding
    # Relay again: the app's SRTP reaches the carrier as it was sent, decrypted.
    packet = bytes([0x80, 8]) + bytes(10) + bytes(160)
    await call.app.send(call.app_tx.protect_rtp(packet), call.ports["a"][0])
    data, _ = await call.carrier.recv()
    assert data == packet
    # Transcoding again, twice: the second set-up replaces the first.
    for _ in range(2):
        a_to_b, b_to_a = transcoders()
        session.start_transcoding(a_to_b, b_to_a, rtcp_interval=0.25)
        await trio.sleep(0.01)
        assert len(nursery.child_tasks) == running
    # The pumps were waiting in relay mode: the next packet is transcoded all the same.
    opus = make_codec(OPUS)
    payload = opus.encode(tone(48000, APP_HZ, 0.02).tobytes())
    packet = bytes([0x80, 111, 0, 9]) + bytes(4) + (77).to_bytes(4, "big") + payload
    await call.app.send(call.app_tx.protect_rtp(packet), call.ports["a"][0])
    data, _ = await call.carrier.recv()
    header = parse_rtp_header(data)
    assert header is not None
    assert (header.payload_type, header.ssrc) == (8, a_to_b.ssrc)


# ---- CallMedia: a plan with different codecs transcodes, an equal one relays ------------------

APP_POLICY = LegPolicy(srtp="optional", codecs=("opus", "PCMA"), sdes_allowed=True)
TRUNK_POLICY = LegPolicy(srtp="off", codecs=("PCMA",), sdes_allowed=False, ptime=30)


def body(port: int, *formats: str) -> bytes:
    names = {"111": "opus/48000/2", "8": "PCMA/8000"}
    lines = ["v=0", "o=peer 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0"]
    lines.append(f"m=audio {port} RTP/AVP {' '.join(formats)}")
    lines += [f"a=rtpmap:{pt} {names[pt]}" for pt in formats]
    return ("\r\n".join(lines) + "\r\n").encode()


async def test_call_media_transcodes_then_relays_after_a_reinvite(
    allocator: PortAllocator,
) -> None:
    session = session_for(allocator, clock=FakeClock())
    origins: dict[Side, Origin] = {
        "a": Origin("edgegw", "1", 1, "IN", "IP4", LOOPBACK),
        "b": Origin("edgegw", "2", 1, "IN", "IP4", LOOPBACK),
    }
    async with trio.open_nursery() as nursery:
        media = CallMedia(
            session,
            {"a": APP_POLICY, "b": TRUNK_POLICY},
            origins,
            call_id="test",
            settings=TranscodeSettings(opus=OpusSettings(bitrate=24000), rtcp_interval=1.0),
        )
        media.bind(session.open(nursery))
        assert media.transcoding  # the negotiator may offer codecs the other leg lacks
        media.offer("a", body(4000, "111"))
        media.answer("b", body(6000, "8"))
        assert session.transcoding
        stats = session.stats()["a"]["transcoding"]["in"]
        assert (stats["codec_in"], stats["codec_out"], stats["packet_ms"]) == ("opus", "PCMA", 20)
        ssrc = stats["ssrc"]
        # A refresh that changes nothing keeps the running transcoders (same stream).
        media.offer("a", body(4000, "111"))
        media.answer("b", body(6000, "8"))
        assert session.stats()["a"]["transcoding"]["in"]["ssrc"] == ssrc
        # The caller now offers PCMA too: the legs share it, and the relay takes over.
        media.offer("a", body(4000, "8", "111"))
        media.answer("b", body(6000, "8"))
        assert not session.transcoding
        assert "transcoding" not in session.stats()["a"]
        await trio.sleep(0.01)
        assert len(nursery.child_tasks) == 1  # the pumps' group only
        nursery.cancel_scope.cancel()
    session.close()


def test_media_config_gives_the_transcoding_settings() -> None:
    text = """
    [media]
    opus_bitrate = 24000
    opus_complexity = 8
    opus_fec = false
    opus_packet_loss = 10
    opus_dtx = true
    jitter_initial = 0.05
    jitter_min = 0.03
    jitter_max = 0.3
    """
    settings = transcode_settings(parse_config(text, source="edgegw.toml").media)
    assert settings.opus == OpusSettings(24000, 8, False, 10, True)
    assert settings.jitter == JitterSettings(0.05, 0.03, 0.3)
    defaults = transcode_settings(parse_config("", source="edgegw.toml").media)
    assert defaults.opus == OpusSettings() and defaults.jitter == JitterSettings()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("opus_bitrate = 1000", "media.opus_bitrate: must be from 6000 to 510000 (b/s), got 1000"),
        ("opus_complexity = 11", "media.opus_complexity: must be from 0 to 10, got 11"),
        ("opus_packet_loss = -1", "media.opus_packet_loss: must be from 0 to 100 (%), got -1"),
        ("jitter_min = 0", "media.jitter_min: must be a number of seconds greater than 0"),
        ("jitter_max = 3.0", "media.jitter_max: must be at most 2.0 seconds, got 3.0"),
        ("jitter_initial = 0.5", "media.jitter_initial: must lie from media.jitter_min (0.02)"),
        ("jitter_initial = 0.01", "media.jitter_initial: must lie from media.jitter_min (0.02)"),
        ('opus_fec = "yes"', "media.opus_fec: expected"),
    ],
)
def test_bad_transcoding_settings_are_refused_by_key(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[media]\n{line}\n", source="edgegw.toml")
    assert str(caught.value).startswith(f"edgegw.toml: {message}")
