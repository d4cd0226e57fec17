"""SIP and RTP leave from the address of each leg's network role (issue 5), over loopback.

The gateway's access role is 127.0.0.1 for SIP and 127.0.0.4 for media; its carrier role
is 127.0.0.2 for both (`sip.listen[].role`, `[[media.addresses]]`); the role-less media
host 127.0.0.1 is there too, and no leg may use it. The carrier trunk is 127.0.0.3.

* App user 1001 calls a carrier number: the INVITE reaches the trunk from 127.0.0.2 with
  Via, Contact and SDP naming 127.0.0.2; the caller's answer names 127.0.0.4; RTP crosses
  and each side sees it come from its own role's address.
* 1001 calls 1002, whose app refuses with 480: the call falls back to 1002's number on
  the trunk, and the callee leg's media moves from the access address to a new port on
  the carrier address before the INVITE to the trunk; the access port goes back to its
  allocator, and RTP crosses as above.

On a box with policy routing per role (`edgegw net apply`), a packet from the wrong
address would leave through the wrong interface or not at all: tests/integration/
test_network_calls.py places a call that way in namespaces.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator

import pytest
import trio

from gateway.media.addresses import MediaAddress
from gateway.sip.message import Request, new_tag
from gateway.sip.sdp import parse_sdp
from tests.integration.sipclient import (
    NUMBERS,
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    free_sip_port,
    in_dialog,
)

ACCESS_MEDIA = "127.0.0.4"
CARRIER = "127.0.0.2"  # the gateway's carrier address, SIP and media
TRUNK = "127.0.0.3"
TRUNK_NUMBER = "+8613800138000"


@pytest.fixture(scope="module")
def trunk_port() -> int:
    return free_sip_port([TRUNK])


@pytest.fixture
def gateway_settings(trunk_port: int) -> GatewaySettings:
    extra = f"""
        [routing]
        ring_timeout = 5.0

        [[media.addresses]]
        role = "access"
        host = "{ACCESS_MEDIA}"

        [[media.addresses]]
        role = "carrier"
        host = "{CARRIER}"

        [[trunks]]
        name = "carrier"
        host = "{TRUNK}"
        port = {trunk_port}
        prefixes = ["86"]
        codecs = ["PCMA"]
    """
    return GatewaySettings(
        ipv6=False,
        listen_role="access",
        carrier_host=CARRIER,
        extra_toml=textwrap.dedent(extra),
    )


@pytest.fixture
async def app(gw: GatewayUnderTest) -> AsyncIterator[UdpPeer]:
    peer = await UdpPeer.open(gw.udp4)
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
async def carrier(gw: GatewayUnderTest, trunk_port: int) -> AsyncIterator[UdpPeer]:
    peer = await UdpPeer.open((CARRIER, gw.sip_port), host=TRUNK, port=trunk_port)
    try:
        yield peer
    finally:
        peer.close()


def pcma_offer(host: str, port: int) -> bytes:
    lines = [
        "v=0",
        f"o=test 1 1 IN IP4 {host}",
        "s=-",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 8",
        "a=rtpmap:8 PCMA/8000",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def rtp(seq: int, ssrc: int) -> bytes:
    header = bytes([0x80, 8]) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big")
    return header + bytes([seq & 0xFF]) * 160


def media_address(body: bytes) -> tuple[str, int]:
    sdp = parse_sdp(body)
    assert sdp.connection is not None
    return sdp.connection.address, sdp.media[0].port


async def udp(host: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


async def request_from(peer: UdpPeer, method: str) -> tuple[Request, tuple[str, int]]:
    """The next `method` request reaching `peer`, with the address it came from."""
    with trio.fail_after(5):
        while True:
            item = await peer.receive()
            assert item is not None, f"no {method} within the timeout"
            message, source = item
            if isinstance(message, Request) and message.method == method:
                return message, source


async def invite_from_1001(app: UdpPeer, to_user: str, media: trio.socket.SocketType) -> Request:
    invite = app.request(
        "INVITE",
        from_user="1001",
        to_user=to_user,
        body=pcma_offer("127.0.0.1", media.getsockname()[1]),
    )
    challenge = await app.transact(invite)
    invite = app.authorize(invite, challenge, "1001")
    await app.send(invite)
    return invite


def assert_from_carrier_role(invite: Request, source: tuple[str, int], sip_port: int) -> None:
    assert source == (CARRIER, sip_port), f"the INVITE to the trunk came from {source}"
    via = invite.headers.get("Via") or ""
    assert f"SIP/2.0/UDP {CARRIER}:{sip_port}" in via, via
    assert invite.headers.get("Contact") == f"<sip:{CARRIER}:{sip_port}>", invite.headers
    assert media_address(invite.body)[0] == CARRIER, invite.body


async def answer_and_talk(
    gw: GatewayUnderTest,
    app: UdpPeer,
    carrier: UdpPeer,
    invite: Request,
    carried: Request,
    app_media: trio.socket.SocketType,
) -> None:
    """The trunk answers; RTP crosses both ways, each side seeing its role's address."""
    carrier_media = await udp(TRUNK)
    try:
        answer = pcma_offer(TRUNK, carrier_media.getsockname()[1])
        contact = f"<sip:carrier@{TRUNK}:{carrier.local[1]}>"
        await carrier.reply(carried, 200, to_tag=new_tag(), body=answer, contact=contact)
        response = await app.expect_response(invite)
        assert response.status == 200, response
        ack = in_dialog(invite, response, "ACK", invite.cseq.seq, transport="UDP", local=app.local)
        await app.send(ack)
        _ack, source = await request_from(carrier, "ACK")
        assert source == (CARRIER, gw.sip_port)

        access_leg = media_address(response.body)
        carrier_leg = (CARRIER, media_address(carried.body)[1])
        assert access_leg[0] == ACCESS_MEDIA, response.body
        with trio.fail_after(5):
            for seq in range(1, 6):
                await app_media.sendto(rtp(seq, 0xA), access_leg)
                data, source = await carrier_media.recvfrom(2048)
                assert (data, source[:2]) == (rtp(seq, 0xA), carrier_leg)
                await carrier_media.sendto(rtp(seq, 0xC), carrier_leg)
                data, source = await app_media.recvfrom(2048)
                assert (data, source[:2]) == (rtp(seq, 0xC), access_leg)
        (call,) = gw.running.core.calls.values()
        media = call.summary()["media"]
        assert media["a"]["rtp"]["local"][0] == ACCESS_MEDIA  # type: ignore[index]
        assert media["b"]["rtp"]["local"][0] == CARRIER  # type: ignore[index]
        in_use = {(a.role, a.allocator.host): a.allocator.in_use for a in media_of(gw)}
        assert in_use == {
            ("", "127.0.0.1"): 0,
            ("access", ACCESS_MEDIA): 1,
            ("carrier", CARRIER): 1,
        }

        bye = in_dialog(
            invite, response, "BYE", invite.cseq.seq + 1, transport="UDP", local=app.local
        )
        await app.send(bye)
        carried_bye, source = await request_from(carrier, "BYE")
        assert source == (CARRIER, gw.sip_port)
        await carrier.reply(carried_bye, 200)
        assert (await app.expect_response(bye)).status == 200
    finally:
        carrier_media.close()


def media_of(gw: GatewayUnderTest) -> list[MediaAddress]:
    return list(gw.running.core.media_addresses)


async def test_call_to_the_trunk_leaves_from_the_carrier_role(
    gw: GatewayUnderTest, app: UdpPeer, carrier: UdpPeer
) -> None:
    app_media = await udp("127.0.0.1")
    try:
        invite = await invite_from_1001(app, TRUNK_NUMBER, app_media)
        carried, source = await request_from(carrier, "INVITE")
        assert_from_carrier_role(carried, source, gw.sip_port)
        await answer_and_talk(gw, app, carrier, invite, carried, app_media)
    finally:
        app_media.close()


async def register_1002(gw: GatewayUnderTest) -> UdpPeer:
    peer = await UdpPeer.open(gw.udp4)
    request = peer.request(
        "REGISTER",
        f"sip:{peer.domain}",
        from_user="1002",
        to_user="1002",
        extra=[("Expires", "300")],
    )
    challenge = await peer.transact(request)
    assert challenge.status == 401, challenge
    done = await peer.transact(peer.authorize(request, challenge, "1002"))
    assert done.status == 200, done
    return peer


async def test_fallback_from_the_app_moves_the_callee_leg_to_the_carrier_role(
    gw: GatewayUnderTest, app: UdpPeer, carrier: UdpPeer
) -> None:
    callee = await register_1002(gw)
    app_media = await udp("127.0.0.1")
    try:
        invite = await invite_from_1001(app, "1002", app_media)
        to_app, source = await request_from(callee, "INVITE")
        assert source == ("127.0.0.1", gw.sip_port)
        access_port = media_address(to_app.body)
        assert access_port[0] == ACCESS_MEDIA, to_app.body
        await callee.reply(to_app, 480, to_tag=new_tag())
        await request_from(callee, "ACK")

        carried, source = await request_from(carrier, "INVITE")
        assert carried.uri.startswith(f"sip:{NUMBERS['1002']}@"), carried.uri
        assert_from_carrier_role(carried, source, gw.sip_port)
        assert media_address(carried.body)[1] != access_port[1]
        await answer_and_talk(gw, app, carrier, invite, carried, app_media)
    finally:
        app_media.close()
        callee.close()
    with trio.fail_after(5):
        while not (cdrs := await gw.running.store.list_cdrs()):
            await trio.sleep(0.05)
    assert [(c.route, c.callee, c.trunk) for c in cdrs] == [
        ("fallback", NUMBERS["1002"], "carrier")
    ]
