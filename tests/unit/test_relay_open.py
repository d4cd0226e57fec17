"""MediaSession.open/close: the relay run in a nursery the caller owns (the call's)."""

from __future__ import annotations

import pytest
import trio

from gateway.media.relay import MediaSession, PortAllocator, PortsExhausted
from tests.unit.test_relay import LOOPBACK, Peer, free_pair, rtp, session_for


async def test_open_relays_in_the_given_nursery_and_close_frees_the_ports() -> None:
    base = free_pair(2)
    allocator = PortAllocator(LOOPBACK, base, base + 3)
    session = session_for(allocator)
    a, b = await Peer.bind(), await Peer.bind()
    try:
        async with trio.open_nursery() as nursery:
            ports = session.open(nursery)
            assert ports == session.local_ports
            assert allocator.in_use == 2
            session.set_remote("a", LOOPBACK, a.port)
            session.set_remote("b", LOOPBACK, b.port)
            await a.send(rtp(1), ports["a"][0])
            data, source = await b.recv()
            assert data == rtp(1)
            assert source == ports["b"][0]  # leaves through the other leg's RTP socket
            nursery.cancel_scope.cancel()
        assert allocator.in_use == 2  # nothing closes until close()
        session.close()
        session.close()  # idempotent
        assert allocator.in_use == 0
        async with trio.open_nursery() as nursery:
            with pytest.raises(RuntimeError, match="only once"):
                session.open(nursery)
    finally:
        a.close()
        b.close()


async def test_open_without_ports_raises_and_leaves_nothing_bound() -> None:
    port = free_pair()
    allocator = PortAllocator(LOOPBACK, port, port + 1)
    session = session_for(allocator)
    async with trio.open_nursery() as nursery:
        with pytest.raises(PortsExhausted):
            session.open(nursery)
    session.close()  # nothing was bound: a no-op
    assert allocator.in_use == 0


def test_close_before_open_is_a_no_op() -> None:
    base = free_pair()
    allocator = PortAllocator(LOOPBACK, base, base + 1)
    session: MediaSession = session_for(allocator)
    session.close()
    assert allocator.in_use == 0
