"""The per-leg quality of a relayed call, from the peers' RTCP the gateway passes through.

The app (user 1001) and the carrier trunk both speak PCMA over plain RTP, so the gateway
relays (no transcoding, no RTCP of its own). Each side sends RTP, then an SR; the other
side's RR answers it with a known fraction lost and jitter. The call's live quality and
its CDR carry those figures, a round trip per leg and a MOS, source "rtcp-relayed".
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from gateway.media.rtcp import (
    ReceiverReport,
    ReportBlock,
    SenderInfo,
    SenderReport,
    build_rtcp,
    ntp_short,
    ntp_timestamp,
)
from gateway.sip.message import Request, Response, new_tag
from gateway.sip.sdp import parse_sdp
from tests.integration.sipclient import GatewaySettings, GatewayUnderTest, UdpPeer, in_dialog

TRUNK_NUMBER = "+4930123456"
APP_SSRC, TRUNK_SSRC = 0x0A0A0A0A, 0x0C0C0C0C
PACKETS = 20


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


class MediaPeer:
    """A phone's RTP and RTCP sockets, and the gateway's ports it sends to."""

    def __init__(self, rtp: trio.socket.SocketType, rtcp: trio.socket.SocketType) -> None:
        self.rtp, self.rtcp = rtp, rtcp
        self.gateway_rtp = 0

    @classmethod
    async def open(cls) -> MediaPeer:
        socks = []
        for _ in range(2):
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return cls(*socks)

    def sdp(self, sid: int) -> bytes:
        lines = [
            "v=0",
            f"o=test {sid} {sid} IN IP4 127.0.0.1",
            "s=-",
            "c=IN IP4 127.0.0.1",
            "t=0 0",
            f"m=audio {self.rtp.getsockname()[1]} RTP/AVP 8",
            "a=rtpmap:8 PCMA/8000",
            f"a=rtcp:{self.rtcp.getsockname()[1]}",
            "a=ptime:20",
            "a=sendrecv",
        ]
        return ("\r\n".join(lines) + "\r\n").encode()

    async def send_rtp(self, ssrc: int) -> None:
        for seq in range(PACKETS):
            header = bytes([0x80, 8]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
            await self.rtp.sendto(
                header + ssrc.to_bytes(4, "big") + b"\xd5" * 160,
                ("127.0.0.1", self.gateway_rtp),
            )
            await trio.sleep(0.005)

    async def send_rtcp(self, data: bytes) -> None:
        await self.rtcp.sendto(data, ("127.0.0.1", self.gateway_rtp + 1))

    async def recv_rtcp(self) -> bytes:
        with trio.fail_after(2):
            data: bytes = await self.rtcp.recv(2048)
        return data

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


def sender_report(ssrc: int, wallclock: float) -> tuple[bytes, int]:
    ntp = ntp_timestamp(wallclock)
    return build_rtcp([SenderReport(ssrc, SenderInfo(ntp, 3200, PACKETS, 3200))]), ntp_short(ntp)


def receiver_report(ssrc: int, about: int, lsr: int, fraction: int, jitter: int) -> bytes:
    block = ReportBlock(about, fraction, fraction // 13, PACKETS, jitter, lsr, 0)
    return build_rtcp([ReceiverReport(ssrc, (block,))])


async def establish(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer, app_media: MediaPeer, trunk_media: MediaPeer
) -> tuple[Request, Response]:
    """App 1001's PCMA call to the trunk number, answered in PCMA: relayed."""
    invite = app.request("INVITE", from_user="1001", to_user=TRUNK_NUMBER, body=app_media.sdp(1))
    challenge = await app.transact(invite)
    assert challenge.status == 407
    invite = app.authorize(invite, challenge, "1001")
    await app.send(invite)
    carried = await trunk.expect_request("INVITE")
    trunk_media.gateway_rtp = parse_sdp(carried.body).media[0].port
    await trunk.reply(
        carried,
        200,
        to_tag=new_tag(),
        body=trunk_media.sdp(2),
        contact=f"<sip:carrier@127.0.0.1:{trunk.local[1]}>",
        to=gw.udp4,
    )
    response = await app.expect_response(invite)
    assert response.status == 200
    app_media.gateway_rtp = parse_sdp(response.body).media[0].port
    ack = in_dialog(invite, response, "ACK", invite.cseq.seq, transport="UDP", local=app.local)
    await app.send(ack)
    await trunk.expect_request("ACK", call_id=carried.call_id)
    return invite, response


async def test_relayed_call_quality_from_passing_rtcp_reaches_the_cdr(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer
) -> None:
    app_media, trunk_media = await MediaPeer.open(), await MediaPeer.open()
    try:
        invite, response = await establish(gw, app, trunk, app_media, trunk_media)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app_media.send_rtp, APP_SSRC)
            nursery.start_soon(trunk_media.send_rtp, TRUNK_SSRC)
        # The trunk's SR reaches the app, whose RR answers it: 26/256 lost, jitter 80
        # timestamp units (10 ms at 8 kHz). And the other way: no loss, 1 ms jitter.
        sr, trunk_lsr = sender_report(TRUNK_SSRC, 1_700_000_000.5)
        await trunk_media.send_rtcp(sr)
        assert await app_media.recv_rtcp() == sr
        await app_media.send_rtcp(receiver_report(APP_SSRC, TRUNK_SSRC, trunk_lsr, 26, 80))
        await trunk_media.recv_rtcp()
        sr, app_lsr = sender_report(APP_SSRC, 1_700_000_001.5)
        await app_media.send_rtcp(sr)
        assert await trunk_media.recv_rtcp() == sr
        await trunk_media.send_rtcp(receiver_report(TRUNK_SSRC, APP_SSRC, app_lsr, 0, 8))
        await app_media.recv_rtcp()

        (call,) = gw.running.core.calls.values()
        summary = call.summary()
        media = summary["media"]
        assert isinstance(media, dict)
        assert media["a"].get("transcoding") is None  # relayed, not transcoded
        live = summary["quality"]
        assert isinstance(live, dict)
        for leg in ("a", "b"):
            assert live[leg]["source"] == "rtcp-relayed"
            assert live[leg]["codec"] == "PCMA"
            assert live[leg]["rtt_ms"] is not None and 0.0 <= live[leg]["rtt_ms"] < 500
        assert live["a"]["loss_pct"] == pytest.approx(100 * 26 / 256, abs=0.01)
        assert live["a"]["jitter_ms"] == 10.0
        assert live["b"]["loss_pct"] == 0.0 and live["b"]["jitter_ms"] == 1.0

        bye = in_dialog(
            invite, response, "BYE", invite.cseq.seq + 1, transport="UDP", local=app.local
        )
        await app.send(bye)
        await trunk.reply(await trunk.expect_request("BYE"), 200)
        assert (await app.expect_response(bye)).status == 200
        with trio.fail_after(5):
            while (cdrs := await gw.running.store.list_cdrs()) == []:
                await trio.sleep(0.02)
    finally:
        app_media.close()
        trunk_media.close()

    (cdr,) = cdrs
    assert cdr.loss_a == pytest.approx(10.16, abs=0.01) and cdr.loss_b == 0.0
    assert cdr.jitter_a == 10.0 and cdr.jitter_b == 1.0
    assert cdr.rtt_a is not None and cdr.rtt_b is not None
    assert cdr.mos_a is not None and cdr.mos_b is not None
    assert 1.0 <= cdr.mos_a < cdr.mos_b <= 4.5  # leg a's peer lost 10 %
