"""IPv6 on one leg, IPv4 on the other: the relay bridges them (issue 3, transcoding bullet 1).

The gateway has media addresses in both families (``media.host = 127.0.0.1``,
``media.host6 = ::1``). App user 1001 calls from IPv6 (its SDP says ``IN IP6 ::1``); the
carrier trunk is IPv4. Each leg gets sockets of its peer's family and an SDP with an
address of that family, and RTP crosses from one family to the other both ways, byte
for byte (the legs share PCMA, so nothing is transcoded).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from gateway.sip.message import new_tag
from gateway.sip.sdp import parse_sdp
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    has_ipv6_loopback,
    in_dialog,
)

pytestmark = pytest.mark.skipif(
    not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)"
)

TRUNK_NUMBER = "+4930123456"


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    return GatewaySettings(ipv6=False, media_host6="::1")


@pytest.fixture
async def app(gw: GatewayUnderTest) -> AsyncIterator[UdpPeer]:
    peer = await UdpPeer.open(gw.udp4)
    try:
        yield peer
    finally:
        peer.close()


def sdp(family: str, host: str, port: int) -> bytes:
    lines = [
        "v=0",
        f"o=test 1 1 IN {family} {host}",
        "s=-",
        f"c=IN {family} {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 8 101",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def rtp(seq: int, ssrc: int) -> bytes:
    return (
        bytes([0x80, 8])
        + seq.to_bytes(2, "big")
        + bytes(4)
        + ssrc.to_bytes(4, "big")
        + (bytes([seq & 0xFF]) * 160)
    )


async def udp(host: str) -> trio.socket.SocketType:
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


async def test_ipv6_app_and_ipv4_carrier_are_bridged(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer
) -> None:
    app_media, carrier_media = await udp("::1"), await udp("127.0.0.1")
    try:
        offer = sdp("IP6", "::1", app_media.getsockname()[1])
        invite = app.request("INVITE", from_user="1001", to_user=TRUNK_NUMBER, body=offer)
        challenge = await app.transact(invite)
        invite = app.authorize(invite, challenge, "1001")
        await app.send(invite)

        carried = await trunk.expect_request("INVITE")
        toward_trunk = parse_sdp(carried.body)
        assert toward_trunk.connection is not None
        assert (toward_trunk.connection.addrtype, toward_trunk.connection.address) == (
            "IP4",
            "127.0.0.1",
        )
        answer = sdp("IP4", "127.0.0.1", carrier_media.getsockname()[1])
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
        toward_app = parse_sdp(response.body)
        assert toward_app.connection is not None
        assert (toward_app.connection.addrtype, toward_app.connection.address) == ("IP6", "::1")
        await app.send(
            in_dialog(invite, response, "ACK", invite.cseq.seq, transport="UDP", local=app.local)
        )

        app_leg = ("::1", toward_app.media[0].port)
        trunk_leg = ("127.0.0.1", toward_trunk.media[0].port)
        with trio.fail_after(5):
            for seq in range(1, 11):
                await app_media.sendto(rtp(seq, 0xA), app_leg)
                data, source = await carrier_media.recvfrom(2048)
                assert data == rtp(seq, 0xA)
                assert source[:2] == trunk_leg
                await carrier_media.sendto(rtp(seq, 0xC), trunk_leg)
                data, source = await app_media.recvfrom(2048)
                assert data == rtp(seq, 0xC)
                assert source[:2] == app_leg
        (call,) = gw.running.core.calls.values()
        media = call.summary()["media"]
        assert media["a"]["rtp"]["latched"][0] == "::1"  # type: ignore[index]
        assert media["b"]["rtp"]["latched"][0] == "127.0.0.1"  # type: ignore[index]
    finally:
        app_media.close()
        carrier_media.close()
