"""The relay with SRTP on one leg: real sockets, real libsrtp, hostile packets.

Leg "a" is an app speaking SRTP (its key is ``A_KEY``; the relay's key toward
it is ``RELAY_KEY``), leg "b" a carrier speaking plain RTP. What must hold:
decrypted media reaches the carrier, encrypted media reaches the app, and
forged, replayed or foreign packets are counted and never forwarded or latched.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import trio

from gateway.media.relay import MediaSession, PortAllocator
from gateway.media.srtp import SrtpReceiver, SrtpSender, SrtpSuite, new_crypto
from tests.unit.test_relay import LOOPBACK, FakeClock, Peer, session_for, start

SUITES = list(SrtpSuite)


def rtp(seq: int, pt: int = 8, ssrc: int = 0x1234) -> bytes:
    header = bytes([0x80, pt]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
    return header + ssrc.to_bytes(4, "big") + bytes([seq & 0xFF]) * 160


def rtcp_sr(ssrc: int = 0x1234) -> bytes:
    # RFC 3550 6.4.1: SR without report blocks (PT 200, length 6 words).
    return bytes([0x80, 200, 0, 6]) + ssrc.to_bytes(4, "big") + bytes(20)


@pytest.fixture
def allocator() -> PortAllocator:
    base = random.randrange(50000, 54000, 2)
    return PortAllocator(LOOPBACK, base, base + 99)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Peer, Peer, Peer]]:
    app, carrier, attacker = await Peer.bind(), await Peer.bind(), await Peer.bind()
    yield app, carrier, attacker
    for peer in (app, carrier, attacker):
        peer.close()


async def secured(
    nursery: trio.Nursery,
    allocator: PortAllocator,
    app: Peer,
    carrier: Peer,
    suite: SrtpSuite = SrtpSuite.AES_CM_128_HMAC_SHA1_80,
    *,
    mux: bool = False,
    payload_types: dict[int, int] | None = None,
) -> tuple[MediaSession, dict[str, tuple[int, int]], SrtpSender, SrtpReceiver]:
    """A session whose leg a is SRTP; returns the app's own sender and receiver."""
    app_key, relay_key = new_crypto(1, suite), new_crypto(1, suite)
    session = session_for(allocator, clock=FakeClock())
    ports = await start(nursery, session)
    session.set_remote("a", app.host, app.port, app.port if mux else app.port + 1)
    session.set_remote("b", carrier.host, carrier.port)
    session.configure(
        "a",
        rtcp_mux=mux,
        receiver=SrtpReceiver(app_key),
        sender=SrtpSender(relay_key),
        payload_types=payload_types,
    )
    return session, ports, SrtpSender(app_key), SrtpReceiver(relay_key)


@pytest.mark.parametrize("suite", SUITES, ids=[s.value for s in SUITES])
async def test_srtp_app_and_plain_carrier_hear_each_other(
    nursery: trio.Nursery,
    allocator: PortAllocator,
    pair: tuple[Peer, Peer, Peer],
    suite: SrtpSuite,
) -> None:
    app, carrier, _ = pair
    session, ports, app_tx, app_rx = await secured(nursery, allocator, app, carrier, suite)
    for seq in range(1, 6):
        await app.send(app_tx.protect_rtp(rtp(seq)), ports["a"][0])
        data, _ = await carrier.recv()
        assert data == rtp(seq)
        await carrier.send(rtp(seq, ssrc=0x9999), ports["b"][0])
        data, _ = await app.recv()
        assert data != rtp(seq, ssrc=0x9999)  # encrypted on the wire
        assert app_rx.unprotect_rtp(data) == rtp(seq, ssrc=0x9999)
    stats = session.stats()
    assert stats["a"]["rtp"]["packets_in"] == 5
    assert stats["b"]["rtp"]["packets_in"] == 5


async def test_forged_and_replayed_srtp_is_dropped_and_never_latches(
    nursery: trio.Nursery, allocator: PortAllocator, pair: tuple[Peer, Peer, Peer]
) -> None:
    app, carrier, attacker = pair
    session, ports, app_tx, _ = await secured(nursery, allocator, app, carrier)
    # Before the app has sent anything, an attacker sprays the port: forged SRTP.
    stranger = SrtpSender(new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80))
    await attacker.send(stranger.protect_rtp(rtp(1)), ports["a"][0])
    tampered = bytearray(app_tx.protect_rtp(rtp(2)))
    tampered[20] ^= 0x01
    await attacker.send(bytes(tampered), ports["a"][0])
    await carrier.assert_quiet()
    assert session.state.a_rtp.latched is None
    drops = session.stats()["a"]["drops"]
    assert drops == {"srtp-auth": 2}
    # The real app latches; a replay of its packet from the attacker is refused.
    genuine = app_tx.protect_rtp(rtp(3))
    await app.send(genuine, ports["a"][0])
    assert (await carrier.recv())[0] == rtp(3)
    await attacker.send(genuine, ports["a"][0])  # another source after latching
    await app.send(genuine, ports["a"][0])  # the same packet again from the app itself
    await app.send(app_tx.protect_rtp(rtp(4)), ports["a"][0])
    assert (await carrier.recv())[0] == rtp(4)
    await carrier.assert_quiet()
    drops = session.stats()["a"]["drops"]
    assert drops == {"srtp-auth": 2, "unexpected-source": 1, "srtp-replay": 1}
    assert session.state.a_rtp.latched == (LOOPBACK, app.port)


async def test_rtcp_mux_on_the_app_leg_goes_to_the_carrier_rtcp_port(
    nursery: trio.Nursery, allocator: PortAllocator, pair: tuple[Peer, Peer, Peer]
) -> None:
    app, carrier, _ = pair
    carrier_rtcp = await Peer.bind()
    try:
        session, ports, app_tx, app_rx = await secured(nursery, allocator, app, carrier, mux=True)
        session.set_remote("b", carrier.host, carrier.port, carrier_rtcp.port)
        await app.send(app_tx.protect_rtcp(rtcp_sr()), ports["a"][0])
        assert (await carrier_rtcp.recv())[0] == rtcp_sr()
        await carrier_rtcp.send(rtcp_sr(0x77), ports["b"][1])
        data, port = await app.recv()
        assert port == ports["a"][0]  # muxed: from the app leg's RTP port
        assert app_rx.unprotect_rtcp(data) == rtcp_sr(0x77)
        await carrier.assert_quiet()
    finally:
        carrier_rtcp.close()


async def test_payload_types_are_mapped_between_legs(
    nursery: trio.Nursery, allocator: PortAllocator, pair: tuple[Peer, Peer, Peer]
) -> None:
    app, carrier, _ = pair
    session, ports, app_tx, app_rx = await secured(
        nursery, allocator, app, carrier, payload_types={101: 96}
    )
    session.configure("b", payload_types={96: 101})
    await app.send(app_tx.protect_rtp(rtp(1, pt=96)), ports["a"][0])
    assert (await carrier.recv())[0] == rtp(1, pt=101)
    await carrier.send(rtp(1, pt=101, ssrc=5), ports["b"][0])
    data, _ = await app.recv()
    assert app_rx.unprotect_rtp(data) == rtp(1, pt=96, ssrc=5)


async def test_plain_legs_switch_to_srtp_mid_call(
    nursery: trio.Nursery, allocator: PortAllocator, pair: tuple[Peer, Peer, Peer]
) -> None:
    app, carrier, _ = pair
    session = session_for(allocator, clock=FakeClock())
    ports = await start(nursery, session)
    session.set_remote("a", app.host, app.port)
    session.set_remote("b", carrier.host, carrier.port)
    await app.send(rtp(1), ports["a"][0])
    assert (await carrier.recv())[0] == rtp(1)
    key = new_crypto(1, SrtpSuite.AEAD_AES_256_GCM)
    session.configure("a", receiver=SrtpReceiver(key))
    await app.send(rtp(2), ports["a"][0])  # plain now fails authentication
    await app.send(SrtpSender(key).protect_rtp(rtp(3)), ports["a"][0])
    assert (await carrier.recv())[0] == rtp(3)
    assert session.stats()["a"]["drops"] == {"srtp-auth": 1}
