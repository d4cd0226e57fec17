"""Fax on a transcoded call, through the whole gateway in-process, over real sockets.

App user 1001 offers only Opus; the carrier trunk (a UDP peer of the test) answers PCMA
with telephone-event, so the call is transcoded. Then:

* The carrier's fax calls: its PCMA carries the CNG cadence (1100 Hz, 0.5 s on, 3 s
  off). The gateway hears it and re-INVITEs the app offering only PCMA (and the trunk's
  telephone-event), with the app's SRTP key unchanged; the app takes it, and from then
  on the call is relayed: the app's PCMA packets reach the trunk byte for byte and the
  trunk's reach the app byte for byte (no jitter buffer, no re-encoding, no new stream).
  The same when the answer tone (CED, 2100 Hz) comes from the app's side, as Opus.
* The app refuses that re-INVITE (488): the call stays transcoded.
* The app answers the gateway's re-INVITE with 491 (and its own crossing re-INVITE gets
  491, RFC 3261 14.2): the gateway tries once more within 2 s (14.1).
* The carrier re-INVITEs to T.38: the app is offered T.38 from the gateway's port; when
  it takes it, UDPTL datagrams pass both ways as they are; when it refuses (488, or 2xx
  with the image stream at port 0, after which it is offered its audio back), the
  carrier gets 488 "T.38 Not Accepted By Other Leg" and the audio goes on transcoded.
  An initial INVITE with T.38 only goes to the trunk as T.38 the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest
import trio

from gateway.calls.b2bua import Call
from gateway.media.codecs import OpusSettings, make_codec
from gateway.media.rtp import parse_rtp_header
from gateway.media.srtp import (
    CryptoAttribute,
    SrtpReceiver,
    SrtpSender,
    SrtpSuite,
    new_crypto,
    parse_crypto,
)
from gateway.sip.headers import parse_name_addr
from gateway.sip.message import Headers, Request, Response, new_tag
from gateway.sip.sdp import Media, parse_sdp
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    ack_for_failure,
    in_dialog,
    via_value,
)
from tests.integration.test_transcoding import (
    OPUS,
    PCMA,
    collect,
    hang_up,
    media_socket,
    sdp,
    send_tone,
)

TRUNK_NUMBER = "+4930123456"
APP_SSRC, CARRIER_SSRC = 0xA1A1A1A1, 0xC1C1C1C1
T38_LINES = (
    "a=T38FaxVersion:0",
    "a=T38MaxBitRate:14400",
    "a=T38FaxRateManagement:transferredTCF",
    "a=T38FaxMaxDatagram:176",
    "a=T38FaxUdpEC:t38UDPRedundancy",
)
# UDPTL (T.38 Annex A): not RTP (the first byte is a sequence number), some short.
UDPTL = [b"\x00\x00\x06\xc0\x01\x80\x00\x00", b"\x00\x01" + bytes(range(120)), b"\x00\x02"]


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


@dataclass
class MediaSockets:
    """The two peers' RTP sockets."""

    app: trio.socket.SocketType
    carrier: trio.socket.SocketType

    @property
    def app_port(self) -> int:
        port: int = self.app.getsockname()[1]
        return port

    @property
    def carrier_port(self) -> int:
        port: int = self.carrier.getsockname()[1]
        return port


@pytest.fixture
async def sockets() -> AsyncIterator[MediaSockets]:
    pair = MediaSockets(await media_socket(), await media_socket())
    try:
        yield pair
    finally:
        pair.app.close()
        pair.carrier.close()


@dataclass
class Established:
    invite: Request
    response: Response
    carried: Request
    """The INVITE the trunk got; the trunk answered it with ``trunk_tag``."""
    trunk_tag: str
    app_leg: int
    trunk_leg: int
    app_key: str | None
    """The a=crypto value of the gateway's answer to the app (its key toward the app)."""
    app_crypto: CryptoAttribute | None
    """The app's own key."""
    srtp: tuple[SrtpSender, SrtpReceiver] | None


def trunk_sdp(port: int, sid: int = 2) -> bytes:
    return sdp(port, [(8, "PCMA/8000", None), (101, "telephone-event/8000", "0-16")], 20, sid)


async def establish(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer, media: MediaSockets, *, secure: bool
) -> Established:
    key = new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80) if secure else None
    offer = sdp(media.app_port, [(111, "opus/48000/2", "useinbandfec=1")], 20, 1, key)
    invite = app.request("INVITE", from_user="1001", to_user=TRUNK_NUMBER, body=offer)
    challenge = await app.transact(invite)
    invite = app.authorize(invite, challenge, "1001")
    await app.send(invite)
    carried = await trunk.expect_request("INVITE")
    trunk_tag = new_tag()
    await trunk.reply(
        carried,
        200,
        to_tag=trunk_tag,
        body=trunk_sdp(media.carrier_port),
        contact=f"<sip:carrier@127.0.0.1:{trunk.local[1]}>",
        to=gw.udp4,
    )
    response = await app.expect_response(invite)
    assert response.status == 200
    answered = parse_sdp(response.body).media[0]
    ack = in_dialog(invite, response, "ACK", invite.cseq.seq, transport="UDP", local=app.local)
    await app.send(ack)
    await trunk.expect_request("ACK", call_id=carried.call_id)
    app_key, srtp = None, None
    if key is not None:
        (app_key,) = [v for k, v in answered.attributes if k == "crypto" and v]
        srtp = SrtpSender(key), SrtpReceiver(parse_crypto(app_key))
    trunk_leg = parse_sdp(carried.body).media[0].port
    return Established(
        invite, response, carried, trunk_tag, answered.port, trunk_leg, app_key, key, srtp
    )


def the_call(gw: GatewayUnderTest) -> Call:
    (call,) = gw.running.core.calls.values()
    return call


def from_trunk(call: Established, trunk: UdpPeer, method: str, seq: int, body: bytes) -> Request:
    """A request of the trunk (the callee) inside the callee leg's dialog."""
    contact = call.carried.headers.get("Contact") or ""
    request = Request(method, str(parse_name_addr(contact).uri), Headers())
    request.headers.add("Via", via_value("UDP", trunk.local))
    request.headers.add("Max-Forwards", "70")
    request.headers.add("From", f"{call.carried.headers.get('To')};tag={call.trunk_tag}")
    request.headers.add("To", call.carried.headers.get("From") or "")
    request.headers.add("Call-ID", call.carried.call_id)
    request.headers.add("CSeq", f"{seq} {method}")
    request.headers.add("Contact", f"<sip:carrier@127.0.0.1:{trunk.local[1]}>")
    if body:
        request.headers.add("Content-Type", "application/sdp")
        request.body = body
    return request


def t38_sdp(port: int, sid: int, *, accept: bool = True) -> bytes:
    lines = [
        "v=0",
        f"o=test {sid} {sid + 1} IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        f"m=image {port if accept else 0} udptl t38",
        *T38_LINES,
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def rtp(seq: int, ssrc: int, payload: bytes, pt: int = 8) -> bytes:
    header = bytes([0x80, pt]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
    return header + ssrc.to_bytes(4, "big") + payload


def only_media(body: bytes) -> Media:
    (media,) = [m for m in parse_sdp(body).media if m.port != 0]
    return media


async def send_cng(sock: trio.socket.SocketType, to: tuple[str, int], seconds: float) -> None:
    """The T.30 calling tone in PCMA, 20 ms a packet in real time: 0.5 s of 1100 Hz,
    then 3 s of silence (cut short at ``seconds``)."""
    codec = make_codec(PCMA)
    t = np.arange(160) / 8000
    start = trio.current_time()
    for i in range(round(seconds / 0.02)):
        if i * 0.02 < 0.5:
            phase = 2 * np.pi * 1100 * (t + i * 0.02)
            pcm = np.round(8000 * np.sin(phase)).astype("<i2").tobytes()
        else:
            pcm = bytes(320)
        await sock.sendto(rtp(i, CARRIER_SSRC, codec.encode(pcm)), to)
        await trio.sleep_until(start + (i + 1) * 0.02)


async def answer_fax_reinvite(
    app: UdpPeer, call: Established, media: MediaSockets, status: int = 200, *, after: int = 0
) -> Request:
    """The gateway's re-INVITE toward the app (CSeq above ``after``: not a retransmission
    of an earlier one), answered with PCMA (or refused)."""

    def wanted(message: Request | Response) -> bool:
        return (
            isinstance(message, Request)
            and message.method == "INVITE"
            and message.call_id == call.invite.call_id
            and message.cseq.seq > after
        )

    reinvite = await app.expect(wanted, "the gateway's re-INVITE", timeout=4)
    assert isinstance(reinvite, Request)
    if status != 200:
        await app.reply(reinvite, status)
        await app.expect_request("ACK", call_id=call.invite.call_id)  # hop-by-hop, 17.1.1.3
        return reinvite
    offered = only_media(reinvite.body)
    # The app keeps its own key too (and so its SRTP contexts).
    formats = [(8, "PCMA/8000", None), (101, "telephone-event/8000", "0-16")]
    answer = sdp(media.app_port, formats, 20, 9, call.app_crypto)
    await app.reply(reinvite, 200, body=answer, contact=f"<sip:1001@127.0.0.1:{app.local[1]}>")
    await app.expect_request("ACK", call_id=call.invite.call_id)
    assert offered.formats == ["8", "101"]
    return reinvite


async def drain(sock: trio.socket.SocketType, seconds: float = 0.15) -> None:
    with trio.move_on_after(seconds):
        while True:
            await sock.recvfrom(4096)


async def exchange_pcma(call: Established, media: MediaSockets) -> tuple[list[bytes], list[bytes]]:
    """Each side sends 25 PCMA packets of its own; what arrived at the trunk and the app."""
    app_sent = [rtp(100 + i, APP_SSRC, bytes([0xD5 ^ i]) * 160) for i in range(25)]
    carrier_sent = [rtp(200 + i, CARRIER_SSRC, bytes([0x55 ^ i]) * 160) for i in range(25)]
    at_carrier: list[bytes] = []
    at_app: list[bytes] = []
    app_tx, app_rx = call.srtp or (None, None)
    until = trio.current_time() + 1.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, media.carrier, at_carrier, until)
        nursery.start_soon(collect, media.app, at_app, until, app_rx)
        for mine, theirs in zip(app_sent, carrier_sent, strict=True):
            wire = app_tx.protect_rtp(mine) if app_tx else mine
            await media.app.sendto(wire, ("127.0.0.1", call.app_leg))
            await media.carrier.sendto(theirs, ("127.0.0.1", call.trunk_leg))
            await trio.sleep(0.02)
    assert [p for p in at_carrier if p[8:12] == APP_SSRC.to_bytes(4, "big")] == app_sent
    assert [p for p in at_app if p[8:12] == CARRIER_SSRC.to_bytes(4, "big")] == carrier_sent
    return at_carrier, at_app


@pytest.mark.parametrize("secure", [False, True], ids=["plain-app", "srtp-app"])
async def test_carrier_cng_switches_the_call_to_pcma_pass_through(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer, sockets: MediaSockets, secure: bool
) -> None:
    call = await establish(gw, app, trunk, sockets, secure=secure)
    assert the_call(gw).media.transcoding
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_cng, sockets.carrier, ("127.0.0.1", call.trunk_leg), 1.2)
        reinvite = await answer_fax_reinvite(app, call, sockets)
    offered = only_media(reinvite.body)
    assert [e.encoding for e in offered.rtpmap().values()] == ["PCMA", "telephone-event"]
    assert offered.port == call.app_leg
    cryptos = [v for k, v in offered.attributes if k == "crypto"]
    assert cryptos == ([call.app_key] if secure else [])
    assert offered.proto == ("RTP/SAVP" if secure else "RTP/AVP")
    gateway_call = the_call(gw)
    assert not gateway_call.media.transcoding
    assert gateway_call.summary()["fax"] == {
        "tone": "cng",
        "heard_from": "b",
        "leg": "a",
        "outcome": "pass-through",
        "status": None,
        "reason": None,
    }
    await drain(sockets.app)
    await drain(sockets.carrier)
    await exchange_pcma(call, sockets)
    await hang_up(app, trunk, call.invite, call.response)


async def test_ced_from_the_app_side_switches_the_call_too(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer, sockets: MediaSockets
) -> None:
    call = await establish(gw, app, trunk, sockets, secure=False)
    opus = make_codec(OPUS, OpusSettings(complexity=10))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            send_tone, sockets.app, ("127.0.0.1", call.app_leg), opus, 111, 20, 2100.0, APP_SSRC
        )
        await answer_fax_reinvite(app, call, sockets)
    fax = the_call(gw).fax
    assert fax is not None and (fax.tone, fax.heard_from, fax.outcome) == (
        "ced",
        "a",
        "pass-through",
    )
    await drain(sockets.app)
    await drain(sockets.carrier)
    await exchange_pcma(call, sockets)
    await hang_up(app, trunk, call.invite, call.response)


async def test_app_refusing_pass_through_keeps_the_call_transcoded(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer, sockets: MediaSockets
) -> None:
    call = await establish(gw, app, trunk, sockets, secure=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_cng, sockets.carrier, ("127.0.0.1", call.trunk_leg), 1.0)
        await answer_fax_reinvite(app, call, sockets, status=488)
    gateway_call = the_call(gw)
    with trio.fail_after(2):
        while gateway_call.fax is None or gateway_call.fax.outcome == "switching":
            await trio.sleep(0.02)
    assert gateway_call.summary()["fax"] == {
        "tone": "cng",
        "heard_from": "b",
        "leg": "a",
        "outcome": "refused",
        "status": 488,
        "reason": "Not Acceptable Here",
    }
    assert gateway_call.media.transcoding
    # The app's Opus still reaches the trunk as PCMA on the gateway's own stream.
    await assert_transcoded(call, sockets)
    # And only once per call: more CNG brings no second re-INVITE.
    await send_cng(sockets.carrier, ("127.0.0.1", call.trunk_leg), 1.0)
    await app.expect_silence(0.3)
    await hang_up(app, trunk, call.invite, call.response)


async def test_glare_491_is_retried_once_and_a_crossing_reinvite_gets_491(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer, sockets: MediaSockets
) -> None:
    call = await establish(gw, app, trunk, sockets, secure=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_cng, sockets.carrier, ("127.0.0.1", call.trunk_leg), 1.0)
        ours = await app.expect_request("INVITE", call_id=call.invite.call_id, timeout=4)
    # The app's own re-INVITE crosses ours: RFC 3261 14.2, it gets 491.
    crossing = in_dialog(
        call.invite,
        call.response,
        "INVITE",
        call.invite.cseq.seq + 1,
        transport="UDP",
        local=app.local,
    )
    crossing.headers.set("Contact", f"<sip:1001@127.0.0.1:{app.local[1]}>")
    crossing.headers.set("Content-Type", "application/sdp")
    crossing.body = sdp(sockets.app_port, [(111, "opus/48000/2", None)], 20, 1)
    assert (await app.transact(crossing)).status == 491
    # The app answers ours with 491 too; the gateway (not the Call-ID's owner on this
    # leg) tries again within 2 s (14.1), and that one is taken.
    started = trio.current_time()
    await app.reply(ours, 491)
    await app.expect_request("ACK", call_id=call.invite.call_id)
    again = await answer_fax_reinvite(app, call, sockets, after=ours.cseq.seq)
    assert trio.current_time() - started <= 2.5
    assert only_media(again.body).formats == only_media(ours.body).formats
    assert again.cseq.seq > ours.cseq.seq
    fax = the_call(gw).fax
    assert fax is not None and fax.outcome == "pass-through"
    bye = in_dialog(
        call.invite,
        call.response,
        "BYE",
        call.invite.cseq.seq + 2,
        transport="UDP",
        local=app.local,
    )
    await app.send(bye)
    await trunk.reply(await trunk.expect_request("BYE"), 200)
    assert (await app.expect_response(bye)).status == 200


async def assert_transcoded(call: Established, media: MediaSockets) -> None:
    at_carrier: list[bytes] = []
    opus = make_codec(OPUS, OpusSettings(complexity=10))
    until = trio.current_time() + 0.8
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, media.carrier, at_carrier, until)
        await send_tone(media.app, ("127.0.0.1", call.app_leg), opus, 111, 20, 1000.0, APP_SSRC)
    headers = [h for h in (parse_rtp_header(p) for p in at_carrier) if h is not None]
    ours = [h for h in headers if h.ssrc != APP_SSRC and h.ssrc != CARRIER_SSRC]
    assert len(ours) >= 20 and {h.payload_type for h in ours} == {8}
    assert not [h for h in headers if h.ssrc == APP_SSRC]


# ---- T.38 ---------------------------------------------------------------------------------


async def test_t38_reinvite_accepted_carries_udptl_both_ways(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer, sockets: MediaSockets
) -> None:
    call = await establish(gw, app, trunk, sockets, secure=False)
    app_udptl, trunk_udptl = await media_socket(), await media_socket()
    try:
        reinvite = from_trunk(call, trunk, "INVITE", 10, t38_sdp(trunk_udptl.getsockname()[1], 30))
        await trunk.send(reinvite, gw.udp4)
        at_app = await app.expect_request("INVITE", call_id=call.invite.call_id)
        offered = only_media(at_app.body)
        assert (offered.media, offered.port, offered.proto) == ("image", call.app_leg, "udptl")
        assert [f"a={k}:{v}" for k, v in offered.attributes if k.startswith("T38")] == list(
            T38_LINES
        )
        await app.reply(
            at_app,
            200,
            body=t38_sdp(app_udptl.getsockname()[1], 40),
            contact=f"<sip:1001@127.0.0.1:{app.local[1]}>",
        )
        await app.expect_request("ACK", call_id=call.invite.call_id)
        ok = await trunk.expect_response(reinvite)
        assert ok.status == 200
        answered = only_media(ok.body)
        assert (answered.media, answered.port) == ("image", call.trunk_leg)
        ack = from_trunk(call, trunk, "ACK", 10, b"")
        ack.uri = str(parse_name_addr(ok.headers.get("Contact") or "").uri)
        await trunk.send(ack, gw.udp4)
        for datagram in UDPTL:
            await trunk_udptl.sendto(datagram, ("127.0.0.1", call.trunk_leg))
            with trio.fail_after(1):
                data, _ = await app_udptl.recvfrom(4096)
            assert data == datagram
            await app_udptl.sendto(datagram[::-1], ("127.0.0.1", call.app_leg))
            with trio.fail_after(1):
                data, _ = await trunk_udptl.recvfrom(4096)
            assert data == datagram[::-1]
        stats = the_call(gw).media.stats()
        assert stats["a"]["drops"].get("not-rtp", 0) == stats["b"]["drops"].get("not-rtp", 0) == 0
        await hang_up(app, trunk, call.invite, call.response)
    finally:
        app_udptl.close()
        trunk_udptl.close()


@pytest.mark.parametrize("refusal", ["488", "200-port-0"])
async def test_t38_refused_by_the_app_gets_488_and_audio_goes_on(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer, sockets: MediaSockets, refusal: str
) -> None:
    call = await establish(gw, app, trunk, sockets, secure=False)
    reinvite = from_trunk(call, trunk, "INVITE", 10, t38_sdp(40000, 30))
    await trunk.send(reinvite, gw.udp4)
    at_app = await app.expect_request("INVITE", call_id=call.invite.call_id)
    assert only_media(at_app.body).media == "image"
    if refusal == "488":
        await app.reply(at_app, 488)
    else:
        await app.reply(
            at_app,
            200,
            body=t38_sdp(0, 40, accept=False),
            contact=f"<sip:1001@127.0.0.1:{app.local[1]}>",
        )
        await app.expect_request("ACK", call_id=call.invite.call_id)
    refused = await trunk.expect_response(reinvite)
    assert (refused.status, refused.reason) == (488, "T.38 Not Accepted By Other Leg")
    await trunk.send(ack_for_failure(reinvite, refused), gw.udp4)
    if refusal == "200-port-0":
        # The app took the offer but not its stream, so it has no media: it is offered
        # its audio back (Opus, its own codec) from the same port.
        restore = await app.expect_request("INVITE", call_id=call.invite.call_id)
        offered = only_media(restore.body)
        assert (offered.media, offered.port) == ("audio", call.app_leg)
        assert next(e.encoding for e in offered.rtpmap().values()) == "opus"
        opus_answer = sdp(sockets.app_port, [(111, "opus/48000/2", "useinbandfec=1")], 20, 50)
        await app.reply(
            restore, 200, body=opus_answer, contact=f"<sip:1001@127.0.0.1:{app.local[1]}>"
        )
        await app.expect_request("ACK", call_id=call.invite.call_id)
    assert the_call(gw).media.transcoding
    assert the_call(gw).call_media.t38 is None
    await assert_transcoded(call, sockets)
    await hang_up(app, trunk, call.invite, call.response)


@pytest.mark.parametrize("accepted", [True, False], ids=["accepted", "refused"])
async def test_initial_t38_invite_is_offered_to_the_trunk_as_t38(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer, sockets: MediaSockets, accepted: bool
) -> None:
    invite = app.request(
        "INVITE", from_user="1001", to_user=TRUNK_NUMBER, body=t38_sdp(sockets.app_port, 1)
    )
    challenge = await app.transact(invite)
    invite = app.authorize(invite, challenge, "1001")
    await app.send(invite)
    carried = await trunk.expect_request("INVITE")
    offered = only_media(carried.body)
    assert (offered.media, offered.proto, offered.formats) == ("image", "udptl", ["t38"])
    if not accepted:
        await trunk.reply(carried, 488, to_tag=new_tag(), to=gw.udp4)
        refused = await app.expect_response(invite)
        assert (refused.status, refused.reason) == (488, "T.38 Not Accepted By Other Leg")
        await app.send(ack_for_failure(invite, refused))
        return
    await trunk.reply(
        carried,
        200,
        to_tag=new_tag(),
        body=t38_sdp(sockets.carrier_port, 2),
        contact=f"<sip:carrier@127.0.0.1:{trunk.local[1]}>",
        to=gw.udp4,
    )
    response = await app.expect_response(invite)
    assert response.status == 200
    answered = only_media(response.body)
    assert answered.media == "image"
    ack = in_dialog(invite, response, "ACK", invite.cseq.seq, transport="UDP", local=app.local)
    await app.send(ack)
    await trunk.expect_request("ACK", call_id=carried.call_id)
    for datagram in UDPTL:
        await sockets.app.sendto(datagram, ("127.0.0.1", answered.port))
        with trio.fail_after(1):
            data, _ = await sockets.carrier.recvfrom(4096)
        assert data == datagram
        await sockets.carrier.sendto(datagram[::-1], ("127.0.0.1", offered.port))
        with trio.fail_after(1):
            data, _ = await sockets.app.recvfrom(4096)
        assert data == datagram[::-1]
    await hang_up(app, trunk, invite, response)
