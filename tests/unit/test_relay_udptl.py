"""The relay's datagram mode for T.38 (UDPTL): real sockets on loopback.

UDPTL is not RTP: its first byte is a sequence number, not version 2, and its
packets can be shorter than an RTP header. A leg in datagram mode carries them
as they are; a leg that is not keeps dropping them as not-RTP. Either way only
the accepted source gets through: strict source and latching still hold.
CallMedia puts both legs in that mode for a T.38 plan and takes them out again
when audio is answered.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import trio

from gateway.calls.call_media import CallMedia
from gateway.calls.negotiation import LegPolicy, Side, T38Plan, UdptlLeg
from gateway.media.relay import MediaSession, PortAllocator
from gateway.media.srtp import SrtpSender, SrtpSuite, new_crypto
from gateway.sip.sdp import Origin
from tests.unit.test_relay import LOOPBACK, FakeClock, Peer, connected, rtp, wait_for_drops

# UDPTL (T.38 Annex A): sequence number, then the IFP; here a short one and a longer one.
UDPTL_SHORT = b"\x00\x01\x06\xc0\x01\x80\x00\x00"
UDPTL_LONG = b"\x00\x02" + bytes(range(250))


@pytest.fixture
def allocator() -> PortAllocator:
    base = random.randrange(58000, 60000, 2)
    return PortAllocator(LOOPBACK, base, base + 99)


@pytest.fixture
async def trio_peers() -> AsyncIterator[tuple[Peer, Peer, Peer]]:
    peers = await Peer.bind(), await Peer.bind(), await Peer.bind()
    yield peers
    for peer in peers:
        peer.close()


async def test_udptl_is_dropped_as_not_rtp_outside_datagram_mode(
    nursery: trio.Nursery, allocator: PortAllocator, trio_peers: tuple[Peer, Peer, Peer]
) -> None:
    a, b, _ = trio_peers
    session, ports = await connected(nursery, allocator, a, b)
    await a.send(UDPTL_SHORT, ports["a"][0])
    await a.send(UDPTL_LONG, ports["a"][0])
    await a.send(rtp(1), ports["a"][0])  # the marker: it arrives, and alone
    assert (await b.recv())[0] == rtp(1)
    await b.assert_quiet()
    assert session.stats()["a"]["rtp"]["drops"] == {"not-rtp": 2}


async def test_datagram_mode_carries_udptl_both_ways_as_it_is(
    nursery: trio.Nursery, allocator: PortAllocator, trio_peers: tuple[Peer, Peer, Peer]
) -> None:
    a, b, _ = trio_peers
    session, ports = await connected(nursery, allocator, a, b)
    session.configure("a", datagrams=True)
    session.configure("b", datagrams=True)
    for packet in (UDPTL_SHORT, UDPTL_LONG, b"\x7f", rtp(5)):
        await a.send(packet, ports["a"][0])
        assert (await b.recv()) == (packet, ports["b"][0])
        await b.send(packet[::-1], ports["b"][0])
        assert (await a.recv()) == (packet[::-1], ports["a"][0])
    stats = session.stats()
    assert stats["a"]["rtp"]["packets_in"] == stats["b"]["rtp"]["packets_in"] == 4
    assert stats["a"]["drops"] == stats["b"]["drops"] == {}


async def test_datagram_mode_keeps_the_strict_source(
    nursery: trio.Nursery, allocator: PortAllocator, trio_peers: tuple[Peer, Peer, Peer]
) -> None:
    a, b, stranger = trio_peers
    session, ports = await connected(nursery, allocator, a, b, clock=FakeClock())
    session.configure("a", datagrams=True)
    session.configure("b", datagrams=True)
    await a.send(UDPTL_SHORT, ports["a"][0])
    assert (await b.recv())[0] == UDPTL_SHORT
    # Latched to a: another source on the same port gets nothing through.
    await stranger.send(UDPTL_LONG, ports["a"][0])
    await wait_for_drops(session, "a", 1)
    await a.send(UDPTL_LONG, ports["a"][0])
    assert (await b.recv())[0] == UDPTL_LONG
    await b.assert_quiet()
    assert session.stats()["a"]["rtp"]["drops"] == {"unexpected-source": 1}
    assert session.stats()["a"]["rtp"]["latched"] == [LOOPBACK, a.port]


async def test_datagram_mode_with_no_peer_address_accepts_nothing(
    nursery: trio.Nursery, allocator: PortAllocator, trio_peers: tuple[Peer, Peer, Peer]
) -> None:
    a, b, _ = trio_peers
    session, ports = await connected(nursery, allocator, a, b)
    session.set_remote("a", a.host, 0)  # the stream was refused
    session.configure("a", datagrams=True)
    session.configure("b", datagrams=True)
    await a.send(UDPTL_SHORT, ports["a"][0])
    await wait_for_drops(session, "a", 1)
    await b.assert_quiet()
    assert session.stats()["a"]["rtp"]["drops"] == {"unexpected-source": 1}


async def test_datagram_mode_takes_no_srtp_or_payload_types(allocator: PortAllocator) -> None:
    session = MediaSession(allocator, host_for_sdp=LOOPBACK, latch_window=1.0)
    sender = SrtpSender(new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80))
    with pytest.raises(ValueError, match="leg a: datagram mode carries bytes as they are"):
        session.configure("a", datagrams=True, sender=sender)
    with pytest.raises(ValueError, match="datagram mode"):
        session.configure("b", datagrams=True, payload_types={8: 0})


# ---- CallMedia: a T.38 plan puts both legs in datagram mode, audio takes them out -------


def body(port: int, formats: str = "8") -> bytes:
    lines = ["v=0", "o=peer 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0"]
    lines.append(f"m=audio {port} RTP/AVP {formats}")
    return ("\r\n".join(lines) + "\r\n").encode()


def t38(port: int) -> bytes:
    lines = ["v=0", "o=peer 1 2 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0"]
    lines += [f"m=image {port} udptl t38", "a=T38FaxVersion:0", "a=T38MaxBitRate:14400"]
    return ("\r\n".join(lines) + "\r\n").encode()


async def test_call_media_switches_to_t38_and_back(allocator: PortAllocator) -> None:
    policy = LegPolicy(srtp="off", codecs=("PCMA",), sdes_allowed=False)
    origins: dict[Side, Origin] = {
        "a": Origin("edgegw", "1", 1, "IN", "IP4", LOOPBACK),
        "b": Origin("edgegw", "2", 1, "IN", "IP4", LOOPBACK),
    }
    session = MediaSession(allocator, host_for_sdp=LOOPBACK, latch_window=1.0, clock=FakeClock())
    async with trio.open_nursery() as nursery:
        media = CallMedia(session, {"a": policy, "b": policy}, origins, call_id="t38")
        media.bind(session.open(nursery))
        media.offer("a", body(4000))
        media.answer("b", body(6000))
        rtp_expected = session.state.a_rtp.expected
        # The T.38 offer changes nothing until the other leg takes it.
        media.offer("b", t38(6100))
        assert session.state.b_rtp.expected == ("127.0.0.1", 6000)
        assert media.offering_t38
        media.answer("a", t38(4100))
        assert media.t38 == T38Plan(a=UdptlLeg("127.0.0.1", 4100), b=UdptlLeg("127.0.0.1", 6100))
        assert session.paths["a"].datagrams and session.paths["b"].datagrams
        assert session.state.a_rtp.expected == ("127.0.0.1", 4100)
        assert session.state.a_rtcp.expected is None  # UDPTL has no RTCP
        assert not session.transcoding
        # Audio again: RTP rules again, RTCP back on its port.
        media.offer("a", body(4000))
        media.answer("b", body(6000))
        assert media.t38 is None
        assert not session.paths["a"].datagrams and not session.paths["b"].datagrams
        assert session.state.a_rtp.expected == rtp_expected
        assert session.state.a_rtcp.expected == ("127.0.0.1", 4001)
        nursery.cancel_scope.cancel()
    session.close()
