"""A transcoded call through the whole gateway, in-process, over real sockets.

App user 1001 offers only Opus (plain RTP/AVP, or SRTP with SDES keys); the carrier
trunk (a UDP peer of the test) takes only PCMA. The gateway must offer the trunk its own
codecs (it can transcode), answer the app with Opus, and carry the audio both ways: the
app's 1 kHz sine, sent as Opus in 20 ms packets, reaches the trunk as PCMA carrying 1 kHz;
the trunk's 600 Hz sine, sent as PCMA in 30 ms packets, reaches the app as Opus carrying
600 Hz. Neither peer ever sees the other's codec or stream (SSRC).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest
import trio

from gateway.calls.negotiation import Codec
from gateway.media.codecs import AudioCodec, OpusSettings, make_codec, opus_packet_samples
from gateway.media.rtp import is_rtcp, parse_rtp_header
from gateway.media.srtp import (
    CryptoAttribute,
    SrtpReceiver,
    SrtpSender,
    SrtpSuite,
    new_crypto,
    parse_crypto,
)
from gateway.sip.message import Request, Response, new_tag
from gateway.sip.sdp import parse_sdp
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    in_dialog,
)
from tests.speech import Audio, dominant_frequency, rms_dbov

TRUNK_NUMBER = "+4930123456"
OPUS = Codec("opus", 111, 48000, 2, "useinbandfec=1")
PCMA = Codec("PCMA", 8, 8000)
APP_HZ, CARRIER_HZ = 1000.0, 600.0
SECONDS = 1.2
APP_SSRC, CARRIER_SSRC = 0xA0A0A0A0, 0xC0C0C0C0


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    return GatewaySettings(ipv6=False)


@pytest.fixture
async def app(gw: GatewayUnderTest) -> AsyncIterator[UdpPeer]:
    peer = await UdpPeer.open(gw.udp4)
    try:
        yield peer
    finally:
        peer.close()


def sdp(
    port: int,
    formats: list[tuple[int, str, str | None]],
    ptime: int,
    sid: int,
    crypto: CryptoAttribute | None = None,
) -> bytes:
    proto = "RTP/SAVP" if crypto else "RTP/AVP"
    lines = [
        "v=0",
        f"o=test {sid} {sid} IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        f"m=audio {port} {proto} {' '.join(str(pt) for pt, _, _ in formats)}",
    ]
    for pt, rtpmap, fmtp in formats:
        lines.append(f"a=rtpmap:{pt} {rtpmap}")
        if fmtp:
            lines.append(f"a=fmtp:{pt} {fmtp}")
    lines += [f"a=ptime:{ptime}", "a=sendrecv"]
    if crypto is not None:
        lines.append(f"a=crypto:{crypto.to_value()}")
    return ("\r\n".join(lines) + "\r\n").encode()


async def media_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


def tone(rate: int, hz: float) -> np.ndarray:
    t = np.arange(round(rate * SECONDS)) / rate
    return np.round(6000 * np.sin(2 * math.pi * hz * t)).astype("<i2")


async def send_tone(
    sock: trio.socket.SocketType,
    to: tuple[str, int],
    codec: AudioCodec,
    pt: int,
    ptime: int,
    hz: float,
    ssrc: int,
    srtp: SrtpSender | None = None,
) -> None:
    """The sine as RTP (SRTP with ``srtp``) in real time, one packet per ptime."""
    signal = tone(codec.pcm_rate, hz)
    step = codec.samples(ptime)
    start = trio.current_time()
    for i, offset in enumerate(range(0, len(signal) - step + 1, step)):
        payload = codec.encode(signal[offset : offset + step].tobytes())
        ts = (i * codec.rtp_clock * ptime // 1000).to_bytes(4, "big")
        header = bytes([0x80, pt | (0x80 if i == 0 else 0)]) + i.to_bytes(2, "big") + ts
        packet = header + ssrc.to_bytes(4, "big") + payload
        await sock.sendto(srtp.protect_rtp(packet) if srtp else packet, to)
        await trio.sleep_until(start + (i + 1) * ptime / 1000)


async def collect(
    sock: trio.socket.SocketType,
    into: list[bytes],
    until: float,
    srtp: SrtpReceiver | None = None,
) -> None:
    with trio.move_on_at(until):
        while True:
            data, _ = await sock.recvfrom(4096)
            if not is_rtcp(data):
                into.append(srtp.unprotect_rtp(data) if srtp else data)


def heard(codec: AudioCodec, packets: list[bytes]) -> Audio:
    pcm = b"".join(codec.decode(packet[12:]) for packet in packets)
    samples = np.frombuffer(pcm, "<i2").astype(np.float64)
    return Audio(samples[codec.samples(100) :], codec.pcm_rate)


@dataclass
class Established:
    invite: Request
    response: Response
    app_leg: int
    """The gateway's RTP port toward the app."""
    trunk_leg: int
    srtp: tuple[SrtpSender, SrtpReceiver] | None
    """The app's SRTP: its sender (its own key) and receiver (the gateway's key)."""


async def establish(
    gw: GatewayUnderTest,
    app: UdpPeer,
    trunk: UdpPeer,
    app_port: int,
    trunk_port: int,
    *,
    secure: bool,
) -> Established:
    """The app's Opus-only call answered by the PCMA-only trunk."""
    key = new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80) if secure else None
    offer = sdp(app_port, [(111, "opus/48000/2", "useinbandfec=1")], 20, 1, key)
    invite = app.request("INVITE", from_user="1001", to_user=TRUNK_NUMBER, body=offer)
    challenge = await app.transact(invite)
    assert challenge.status == 407
    invite = app.authorize(invite, challenge, "1001")
    await app.send(invite)

    carried = await trunk.expect_request("INVITE")
    offered = parse_sdp(carried.body).media[0]
    assert {entry.encoding for entry in offered.rtpmap().values()} >= {"PCMA"}
    assert "opus" not in {entry.encoding.lower() for entry in offered.rtpmap().values()}
    answer = sdp(trunk_port, [(8, "PCMA/8000", None), (101, "telephone-event/8000", "0-16")], 30, 2)
    await trunk.reply(
        carried,
        200,
        to_tag=new_tag(),
        body=answer,
        contact=f"<sip:carrier@127.0.0.1:{trunk.local[1]}>",
        to=gw.udp4,
    )
    response = await app.expect_response(invite)
    assert response.status == 200
    answered = parse_sdp(response.body).media[0]
    assert next(entry.encoding for entry in answered.rtpmap().values()) == "opus"
    ack = in_dialog(invite, response, "ACK", invite.cseq.seq, transport="UDP", local=app.local)
    await app.send(ack)
    await trunk.expect_request("ACK", call_id=carried.call_id)
    srtp = None
    if key is not None:
        (theirs,) = [parse_crypto(v) for k, v in answered.attributes if k == "crypto" and v]
        srtp = SrtpSender(key), SrtpReceiver(theirs)
    assert offered.proto == "RTP/AVP"  # the trunk's policy: plain RTP
    return Established(invite, response, answered.port, offered.port, srtp)


async def hang_up(app: UdpPeer, trunk: UdpPeer, invite: Request, response: Response) -> None:
    bye = in_dialog(invite, response, "BYE", invite.cseq.seq + 1, transport="UDP", local=app.local)
    await app.send(bye)
    carried_bye = await trunk.expect_request("BYE")
    await trunk.reply(carried_bye, 200)
    assert (await app.expect_response(bye)).status == 200


@pytest.mark.parametrize("secure", [False, True], ids=["plain-app", "srtp-app"])
async def test_opus_app_and_pcma_carrier_hear_each_other(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer, secure: bool
) -> None:
    app_media, carrier_media = await media_socket(), await media_socket()
    try:
        call = await establish(
            gw,
            app,
            trunk,
            app_media.getsockname()[1],
            carrier_media.getsockname()[1],
            secure=secure,
        )
        to_app_leg, to_trunk_leg = ("127.0.0.1", call.app_leg), ("127.0.0.1", call.trunk_leg)
        app_tx, app_rx = call.srtp or (None, None)
        at_carrier: list[bytes] = []
        at_app: list[bytes] = []
        opus = make_codec(OPUS, OpusSettings(complexity=10))
        until = trio.current_time() + SECONDS + 0.6
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, carrier_media, at_carrier, until)
            nursery.start_soon(collect, app_media, at_app, until, app_rx)
            nursery.start_soon(
                send_tone, app_media, to_app_leg, opus, 111, 20, APP_HZ, APP_SSRC, app_tx
            )
            nursery.start_soon(
                send_tone,
                carrier_media,
                to_trunk_leg,
                make_codec(PCMA),
                8,
                30,
                CARRIER_HZ,
                CARRIER_SSRC,
            )
        await hang_up(app, trunk, call.invite, call.response)
    finally:
        app_media.close()
        carrier_media.close()

    # The carrier gets PCMA in the 30 ms it asked for, on the gateway's own stream.
    headers = [parse_rtp_header(packet) for packet in at_carrier]
    assert {h.payload_type for h in headers if h} == {8}
    assert len({h.ssrc for h in headers if h} - {APP_SSRC}) == 1
    assert {len(packet) - 12 for packet in at_carrier} == {240}
    assert len(at_carrier) >= 35
    audio = heard(make_codec(PCMA), at_carrier)
    assert dominant_frequency(audio) == pytest.approx(APP_HZ, abs=5)
    assert rms_dbov(audio) > -20
    # The app gets Opus in 20 ms packets carrying the carrier's tone.
    headers = [parse_rtp_header(packet) for packet in at_app]
    assert {h.payload_type for h in headers if h} == {111}
    assert len({h.ssrc for h in headers if h} - {CARRIER_SSRC}) == 1
    assert {opus_packet_samples(packet[12:]) for packet in at_app} == {960}
    assert len(at_app) >= 55
    audio = heard(make_codec(OPUS), at_app)
    assert dominant_frequency(audio) == pytest.approx(CARRIER_HZ, abs=5)
    assert rms_dbov(audio) > -20
