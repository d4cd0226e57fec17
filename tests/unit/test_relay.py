"""Tests for gateway.media.relay: real UDP sockets on loopback under Trio.

The relay's clock is injected (a settable fake) so latch windows and
last_activity are checked without sleeping; the sockets run on trio's real
clock. "Nothing was forwarded" is proven by ordering: a marker packet sent on
the same socket after the bad one arrives first and alone.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import AsyncIterator, Callable

import pytest
import trio

from gateway.media.relay import (
    LocalPorts,
    MediaSession,
    PortAllocator,
    PortPair,
    PortsExhausted,
)

LOOPBACK = "127.0.0.1"


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rtp(seq: int, payload: bytes = b"\xd5" * 160) -> bytes:
    return bytes([0x80, 0x08]) + seq.to_bytes(2, "big") + bytes(8) + payload


def rtcp_rr() -> bytes:
    # RFC 3550 6.4.2: an RR with no report blocks, PT 201, length 1.
    return bytes([0x80, 201, 0x00, 0x01]) + b"\x12\x34\x56\x78"


class Peer:
    """A phone on loopback: one UDP socket."""

    def __init__(self, sock: trio.socket.SocketType, host: str) -> None:
        self.sock = sock
        self.host = host
        # Where the relay listens: the loopback address of the peer's family.
        self.relay_host = "::1" if ":" in host else LOOPBACK

    @classmethod
    async def bind(cls, host: str = LOOPBACK, port: int = 0) -> Peer:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        await sock.bind((host, port))
        return cls(sock, host)

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    async def send(self, data: bytes, port: int) -> None:
        await self.sock.sendto(data, (self.relay_host, port))

    async def recv(self, timeout: float = 2.0) -> tuple[bytes, int]:
        with trio.fail_after(timeout):
            data, src = await self.sock.recvfrom(4096)
        return data, src[1]

    async def assert_quiet(self, wait: float = 0.05) -> None:
        with trio.move_on_after(wait):
            data, src = await self.sock.recvfrom(4096)
            pytest.fail(f"unexpected packet {data[:16]!r} from {src}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def allocator() -> PortAllocator:
    base = random.randrange(40000, 44000, 2)
    return PortAllocator(LOOPBACK, base, base + 199)


def free_pair(pairs: int = 1) -> int:
    """An even port from which ``pairs`` pairs are free right now (small allocators)."""
    for _ in range(200):
        port = random.randrange(45000, 50000, 2)
        probes = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2 * pairs)]
        try:
            for offset, probe in enumerate(probes):
                probe.bind((LOOPBACK, port + offset))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return port
    raise RuntimeError("no free port pair found for the test")


def session_for(
    allocator: PortAllocator,
    *,
    latch_window: float = 10.0,
    clock: Callable[[], float] | None = None,
    any_host: bool = True,
) -> MediaSession:
    return MediaSession(
        allocator,
        host_for_sdp=allocator.host,
        latch_window=latch_window,
        clock=clock or FakeClock(),
        symmetric_any_host=any_host,
    )


async def start(nursery: trio.Nursery, session: MediaSession) -> LocalPorts:
    ports: LocalPorts = await nursery.start(session.run)
    return ports


@pytest.fixture
async def peers() -> AsyncIterator[tuple[Peer, Peer]]:
    a, b = await Peer.bind(), await Peer.bind()
    yield a, b
    a.close()
    b.close()


async def connected(
    nursery: trio.Nursery,
    allocator: PortAllocator,
    a: Peer,
    b: Peer,
    clock: Callable[[], float] | None = None,
) -> tuple[MediaSession, LocalPorts]:
    session = session_for(allocator, clock=clock)
    ports = await start(nursery, session)
    session.set_remote("a", a.host, a.port)
    session.set_remote("b", b.host, b.port)
    return session, ports


async def wait_for_drops(session: MediaSession, leg: str, count: int) -> None:
    """Wait until the relay has counted ``count`` drops on ``leg`` (it runs concurrently)."""
    with trio.fail_after(2):
        while sum(session.stats()[leg]["drops"].values()) < count:
            await trio.sleep(0.002)


# --- ports ----------------------------------------------------------------


async def test_ports_are_bound_before_they_are_reported(
    nursery: trio.Nursery, allocator: PortAllocator
) -> None:
    session = session_for(allocator)
    ports = await start(nursery, session)
    assert set(ports) == {"a", "b"}
    for rtp_port, rtcp_port in ports.values():
        assert rtp_port % 2 == 0
        assert rtcp_port == rtp_port + 1
        assert allocator.port_min <= rtp_port < rtcp_port <= allocator.port_max
        for port in (rtp_port, rtcp_port):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                with pytest.raises(OSError) as info:
                    probe.bind((LOOPBACK, port))
                assert info.value.errno == errno.EADDRINUSE
    assert ports["a"] != ports["b"]
    assert session.local_ports == ports
    assert allocator.in_use == 2


async def test_ports_released_after_cancel(nursery: trio.Nursery) -> None:
    base = free_pair(2)
    # Two pairs exactly: one session takes the whole range.
    allocator = PortAllocator(LOOPBACK, base, base + 3)
    for _ in range(2):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                await inner.start(session_for(allocator).run)
                assert allocator.in_use == 2
                scope.cancel()
        assert allocator.in_use == 0
    pair = allocator.allocate()
    pair.close()


async def test_port_exhaustion_raises() -> None:
    port = free_pair()
    allocator = PortAllocator(LOOPBACK, port, port + 1)
    assert allocator.capacity == 1
    pair = allocator.allocate()
    with pytest.raises(PortsExhausted, match=f"{port}-{port + 1}"):
        allocator.allocate()
    pair.close()
    pair.close()  # idempotent
    allocator.allocate().close()


async def test_session_start_fails_cleanly_when_ports_run_out(nursery: trio.Nursery) -> None:
    port = free_pair()
    allocator = PortAllocator(LOOPBACK, port, port + 1)
    with pytest.raises(PortsExhausted):
        await nursery.start(session_for(allocator).run)
    assert allocator.in_use == 0


def test_allocator_skips_ports_taken_by_others() -> None:
    port = free_pair(2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((LOOPBACK, port + 1))  # the RTCP half of the first pair
        allocator = PortAllocator(LOOPBACK, port, port + 3)
        try:
            pair = allocator.allocate()
        except PortsExhausted:
            pytest.skip("the second pair is in use by another process")
        assert (pair.rtp_port, pair.rtcp_port) == (port + 2, port + 3)
        with pytest.raises(PortsExhausted):
            allocator.allocate()
        pair.close()


def test_allocator_round_robin_wraps_around() -> None:
    port = free_pair(2)
    allocator = PortAllocator(LOOPBACK, port - 1, port + 3)  # odd start rounds up
    pairs: list[PortPair] = []
    try:
        first = allocator.allocate()
        pairs.append(first)
        assert first.rtp_port in (port, port + 2)
        first.close()
        second = allocator.allocate()
        pairs.append(second)
        assert second.rtp_port != first.rtp_port  # a freed port is not reused at once
        third = allocator.allocate()
        pairs.append(third)
        assert third.rtp_port == first.rtp_port  # wrapped around
    except PortsExhausted:
        pytest.skip("ports of the test range are in use by another process")
    finally:
        for pair in pairs:
            pair.close()


@pytest.mark.parametrize(
    ("host", "low", "high", "message"),
    [
        (LOOPBACK, 0, 10, "is invalid"),
        (LOOPBACK, 20, 10, "is invalid"),
        (LOOPBACK, 10, 70000, "is invalid"),
        (LOOPBACK, 11, 12, "no even/odd"),
        (LOOPBACK, 10, 10, "no even/odd"),
        ("localhost", 10000, 10001, "not a numeric"),
    ],
)
def test_allocator_validation(host: str, low: int, high: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PortAllocator(host, low, high)


def test_allocator_refuses_address_not_on_this_host() -> None:
    allocator = PortAllocator("198.51.100.1", 40000, 40001)
    with pytest.raises(OSError, match=r"cannot bind media port 198\.51\.100\.1"):
        allocator.allocate()


# --- relaying -------------------------------------------------------------


async def test_both_directions_delivered_and_counted(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    session, ports = await connected(nursery, allocator, a, b)
    await a.send(rtp(1), ports["a"][0])
    assert await b.recv() == (rtp(1), ports["b"][0])
    await b.send(rtp(2, b"back"), ports["b"][0])
    assert await a.recv() == (rtp(2, b"back"), ports["a"][0])
    stats = session.stats()
    assert stats["a"]["rtp"]["packets_in"] == 1
    assert stats["a"]["rtp"]["bytes_in"] == len(rtp(1))
    assert stats["b"]["rtp"]["packets_out"] == 1
    assert stats["b"]["rtp"]["packets_in"] == 1
    assert stats["a"]["rtp"]["packets_out"] == 1
    assert stats["a"]["packets_in"] == 1
    assert stats["a"]["rtp"]["latched"] == [LOOPBACK, a.port]
    assert stats["a"]["rtp"]["local"] == [LOOPBACK, ports["a"][0]]
    assert stats["b"]["rtcp"]["expected"] == [LOOPBACK, b.port + 1]
    assert stats["a"]["drops"] == {}


async def test_rtcp_on_rtp_plus_one_is_relayed(
    nursery: trio.Nursery, allocator: PortAllocator
) -> None:
    peer_ports = PortAllocator(LOOPBACK, 44000, 44999)
    pa, pb = peer_ports.allocate(), peer_ports.allocate()
    a_rtcp = Peer(trio.socket.from_stdlib_socket(pa.rtcp_socket), LOOPBACK)
    b_rtcp = Peer(trio.socket.from_stdlib_socket(pb.rtcp_socket), LOOPBACK)
    try:
        session = session_for(allocator)
        ports = await start(nursery, session)
        session.set_remote("a", LOOPBACK, pa.rtp_port)  # RTCP implied at rtp + 1
        session.set_remote("b", LOOPBACK, pb.rtp_port, pb.rtcp_port)
        await a_rtcp.send(rtcp_rr(), ports["a"][1])
        assert await b_rtcp.recv() == (rtcp_rr(), ports["b"][1])
        await b_rtcp.send(rtcp_rr(), ports["b"][1])
        assert await a_rtcp.recv() == (rtcp_rr(), ports["a"][1])
        assert session.stats()["a"]["rtcp"]["packets_in"] == 1
        assert session.stats()["a"]["rtp"]["packets_in"] == 0
    finally:
        pa.close()
        pb.close()


async def test_rtp_bleed_other_source_after_latch_is_never_forwarded(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    session, ports = await connected(nursery, allocator, a, b)
    await a.send(rtp(1), ports["a"][0])
    await b.recv()
    attacker_same_host = await Peer.bind()
    attacker_other_host = await Peer.bind("127.0.0.2")
    try:
        await attacker_same_host.send(rtp(666), ports["a"][0])
        await attacker_other_host.send(rtp(667), ports["a"][0])
        await a.send(rtp(2), ports["a"][0])  # marker, same socket, after the attack
        assert await b.recv() == (rtp(2), ports["b"][0])
        await b.assert_quiet()
        # The attackers get nothing back either: b's media still goes to a.
        await b.send(rtp(3), ports["b"][0])
        assert (await a.recv())[0] == rtp(3)
        await attacker_same_host.assert_quiet(0.01)
        await attacker_other_host.assert_quiet(0.01)
    finally:
        attacker_same_host.close()
        attacker_other_host.close()
    stats = session.stats()["a"]["rtp"]
    assert stats["drops"] == {"unexpected-source": 2}
    assert stats["packets_in"] == 2
    assert stats["latched"] == [LOOPBACK, a.port]


async def test_nat_source_latches_within_window(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    clock = FakeClock()
    session = session_for(allocator, latch_window=5.0, clock=clock)
    ports = await start(nursery, session)
    # The SDP of "a" names a private address; its packets come from elsewhere.
    session.set_remote("a", "127.0.0.3", 7000)
    session.set_remote("b", b.host, b.port)
    clock.now += 4.0
    await a.send(rtp(1), ports["a"][0])
    assert (await b.recv())[0] == rtp(1)
    # Symmetric RTP: the answer goes to where "a" really is.
    await b.send(rtp(2), ports["b"][0])
    assert (await a.recv())[0] == rtp(2)
    assert session.stats()["a"]["rtp"]["latched"] == [LOOPBACK, a.port]


async def test_any_host_off_needs_the_sdp_host(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    session = session_for(allocator, any_host=False)
    ports = await start(nursery, session)
    session.set_remote("a", "127.0.0.3", 7000)
    session.set_remote("b", b.host, b.port)
    await a.send(rtp(1), ports["a"][0])
    await wait_for_drops(session, "a", 1)
    await b.assert_quiet()
    assert session.stats()["a"]["rtp"]["drops"] == {"unexpected-source": 1}
    session.set_remote("a", LOOPBACK, 7000)  # same host as the real source now
    await a.send(rtp(3), ports["a"][0])
    assert (await b.recv())[0] == rtp(3)


async def test_unexpected_source_after_window_is_dropped(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    clock = FakeClock()
    session = session_for(allocator, latch_window=5.0, clock=clock)
    ports = await start(nursery, session)
    session.set_remote("a", LOOPBACK, 9)  # SDP port differs from the real one
    session.set_remote("b", b.host, b.port)
    clock.now += 5.5
    await a.send(rtp(1), ports["a"][0])
    await wait_for_drops(session, "a", 1)
    await b.send(rtp(2), ports["b"][0])
    await a.assert_quiet()  # b's packet went to port 9, a is not latched
    await b.assert_quiet()
    assert session.stats()["a"]["rtp"]["drops"] == {"unexpected-source": 1}
    # The call may re-open the window once answered.
    session.open_latch_window("a")
    await a.send(rtp(3), ports["a"][0])
    assert (await b.recv())[0] == rtp(3)


async def test_non_rtp_junk_is_dropped_and_does_not_latch(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    session, ports = await connected(nursery, allocator, a, b)
    await a.send(b"hello", ports["a"][0])
    await a.send(b"\x00\x01" + bytes(18), ports["a"][0])  # a STUN-like header
    await a.send(b"\x80" * 11, ports["a"][0])
    await a.send(bytes(3000), ports["a"][0])  # larger than the relay's buffer
    await b.send(rtp(1), ports["b"][0])
    assert (await a.recv())[0] == rtp(1)
    await b.assert_quiet()
    stats = session.stats()["a"]
    assert stats["rtp"]["drops"] == {"not-rtp": 3, "too-large": 1}
    assert stats["rtp"]["latched"] is None
    assert stats["drops"] == {"not-rtp": 3, "too-large": 1}


async def test_no_destination_drop_then_delivery_once_sdp_arrives(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    session = session_for(allocator)
    ports = await start(nursery, session)
    session.set_remote("a", a.host, a.port)
    await a.send(rtp(1), ports["a"][0])
    await wait_for_drops(session, "a", 1)
    stats = session.stats()["a"]["rtp"]
    assert stats["drops"] == {"no-destination": 1}
    assert stats["latched"] == [LOOPBACK, a.port]
    session.set_remote("b", b.host, b.port)
    await a.send(rtp(2), ports["a"][0])
    assert (await b.recv())[0] == rtp(2)
    await b.assert_quiet()


async def test_port_zero_disables_a_stream(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    session, ports = await connected(nursery, allocator, a, b)
    session.set_remote("b", "0.0.0.0", 0)  # refused: port 0 wins over the hold address
    await a.send(rtp(1), ports["a"][0])
    await b.send(rtp(2), ports["b"][0])
    await a.send(rtp(3), ports["a"][0])
    await wait_for_drops(session, "a", 2)
    await wait_for_drops(session, "b", 1)
    await b.assert_quiet()
    await a.assert_quiet()
    assert session.stats()["a"]["rtp"]["drops"] == {"no-destination": 2}
    assert session.stats()["b"]["rtp"]["drops"] == {"unexpected-source": 1}
    assert session.stats()["b"]["rtcp"]["expected"] is None


async def test_unchanged_sdp_keeps_strict_latch_and_hold_address_is_ignored(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    session, ports = await connected(nursery, allocator, a, b)
    await a.send(rtp(1), ports["a"][0])
    await b.recv()
    session.set_remote("a", a.host, a.port)  # a re-INVITE with the same address
    session.set_remote("a", "0.0.0.0", a.port)  # old-style hold
    other = await Peer.bind()
    try:
        await other.send(rtp(9), ports["a"][0])
        await a.send(rtp(2), ports["a"][0])
        assert (await b.recv())[0] == rtp(2)
        await b.assert_quiet()
    finally:
        other.close()
    assert session.stats()["a"]["rtp"]["expected"] == [LOOPBACK, a.port]


async def test_reinvite_moves_latch_to_new_address(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    session, ports = await connected(nursery, allocator, a, b)
    await a.send(rtp(1), ports["a"][0])
    await b.recv()
    moved = await Peer.bind()
    moved_port = moved.port
    try:
        session.set_remote("a", moved.host, moved_port)
        await a.send(rtp(2), ports["a"][0])  # old latch still valid
        assert (await b.recv())[0] == rtp(2)
        await moved.send(rtp(3), ports["a"][0])
        assert (await b.recv())[0] == rtp(3)
        await b.send(rtp(4), ports["b"][0])
        assert (await moved.recv())[0] == rtp(4)
        await a.send(rtp(5), ports["a"][0])  # the old source is now refused
        await moved.send(rtp(6), ports["a"][0])
        assert (await b.recv())[0] == rtp(6)
        await b.assert_quiet()
    finally:
        moved.close()
    stats = session.stats()["a"]["rtp"]
    assert stats["drops"] == {"unexpected-source": 1}
    assert stats["latched"] == [LOOPBACK, moved_port]


async def test_last_activity_advances(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    clock = FakeClock(500.0)
    session, ports = await connected(nursery, allocator, a, b, clock=clock)
    assert session.last_activity == 500.0
    clock.now = 503.0
    await a.send(rtp(1), ports["a"][0])
    await b.recv()
    assert session.last_activity == 503.0
    clock.now = 504.0
    await b.send(rtp(2), ports["b"][0])
    await a.recv()
    assert session.last_activity == 504.0
    # Dropped packets are not activity.
    clock.now = 510.0
    other = await Peer.bind()
    await other.send(rtp(3), ports["a"][0])
    await a.send(rtp(4), ports["a"][0])
    await b.recv()
    other.close()
    assert session.last_activity == 510.0
    assert session.stats()["a"]["rtp"]["last_rx"] == 510.0
    assert session.stats()["a"]["rtp"]["drops"] == {"unexpected-source": 1}


async def test_thousand_packets_each_way_none_lost(
    nursery: trio.Nursery, allocator: PortAllocator, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    session, ports = await connected(nursery, allocator, a, b)
    count = 1000
    received: dict[str, list[int]] = {"a": [], "b": []}

    async def sender(peer: Peer, port: int) -> None:
        for seq in range(count):
            await peer.send(rtp(seq), port)
            if seq % 50 == 49:
                await trio.sleep(0.001)

    async def receiver(peer: Peer, name: str) -> None:
        while len(received[name]) < count:
            data, _ = await peer.recv(timeout=5.0)
            received[name].append(int.from_bytes(data[2:4], "big"))

    async with trio.open_nursery() as inner:
        inner.start_soon(receiver, a, "a")
        inner.start_soon(receiver, b, "b")
        inner.start_soon(sender, a, ports["a"][0])
        inner.start_soon(sender, b, ports["b"][0])
    assert received["a"] == list(range(count))
    assert received["b"] == list(range(count))
    stats = session.stats()
    for leg in ("a", "b"):
        assert stats[leg]["rtp"]["packets_in"] == count
        assert stats[leg]["rtp"]["packets_out"] == count
        assert stats[leg]["rtp"]["bytes_out"] == count * len(rtp(0))
        assert stats[leg]["drops"] == {}


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback (::1) on this host")
async def test_ipv6_relay(nursery: trio.Nursery) -> None:
    base = random.randrange(40000, 44000, 2)
    allocator = PortAllocator("::1", base, base + 99)
    a, b = await Peer.bind("::1"), await Peer.bind("::1")
    try:
        session, ports = await connected(nursery, allocator, a, b)
        await a.send(rtp(1), ports["a"][0])
        assert await b.recv() == (rtp(1), ports["b"][0])
        await b.send(rtp(2), ports["b"][0])
        assert await a.recv() == (rtp(2), ports["a"][0])
        assert session.stats()["a"]["rtp"]["latched"] == ["::1", a.port]
        with pytest.raises(ValueError, match="is IPv4 but the leg's media sockets are IPv6"):
            session.set_remote("b", LOOPBACK, 4000)
    finally:
        a.close()
        b.close()


# --- API misuse -------------------------------------------------------------


async def test_set_remote_validation(allocator: PortAllocator) -> None:
    session = session_for(allocator)
    with pytest.raises(ValueError, match="not a numeric"):
        session.set_remote("a", "phone.example.com", 4000)
    with pytest.raises(ValueError, match="RTP port 70000 is out of range"):
        session.set_remote("a", LOOPBACK, 70000)
    with pytest.raises(ValueError, match="RTCP port 65536 is out of range"):
        session.set_remote("a", LOOPBACK, 65535)
    with pytest.raises(ValueError, match="unknown leg 'c'"):
        session.set_remote("c", LOOPBACK, 4000)
    with pytest.raises(ValueError, match="unknown leg 'x'"):
        session.open_latch_window("x")
    with pytest.raises(ValueError, match="is IPv6 but the leg's media sockets are IPv4"):
        session.set_remote("a", "2001:db8::1", 4000)
    with pytest.raises(ValueError, match="not a numeric"):
        MediaSession(allocator, host_for_sdp="gw.example.com", latch_window=1.0)


async def test_run_once_and_ports_only_after_start(
    nursery: trio.Nursery, allocator: PortAllocator
) -> None:
    session = session_for(allocator)
    with pytest.raises(RuntimeError, match="start run"):
        session.local_ports  # noqa: B018
    with pytest.raises(RuntimeError, match="not started"):
        session.last_activity  # noqa: B018
    assert session.stats()["a"]["rtp"]["local"] is None
    await start(nursery, session)
    with pytest.raises(RuntimeError, match="only once"):
        await session.run()


@pytest.mark.skipif(not has_ipv6(), reason="this machine has no IPv6 loopback (::1)")
async def test_legs_of_different_families_are_bridged() -> None:
    """Leg a on IPv6, leg b on IPv4: each leg's sockets are its peer's family."""
    base = free_pair(2)
    v4 = PortAllocator(LOOPBACK, base, base + 3)
    v6 = PortAllocator("::1", base, base + 3)
    session = MediaSession(
        v4, host_for_sdp=LOOPBACK, latch_window=10.0, clock=FakeClock(), alternate=v6
    )
    a, b = await Peer.bind("::1"), await Peer.bind(LOOPBACK)
    try:
        async with trio.open_nursery() as nursery:
            ports = session.open(nursery, {"a": socket.AF_INET6, "b": socket.AF_INET})
            assert (session.sdp_host("a"), session.sdp_host("b")) == ("::1", LOOPBACK)
            session.set_remote("a", "::1", a.port)
            session.set_remote("b", LOOPBACK, b.port)
            with pytest.raises(ValueError, match="is IPv4 but the leg's media sockets are IPv6"):
                session.set_remote("a", LOOPBACK, a.port)
            await a.send(rtp(1), ports["a"][0])
            assert (await b.recv())[0] == rtp(1)
            await b.send(rtp(2), ports["b"][0])
            assert (await a.recv())[0] == rtp(2)
            nursery.cancel_scope.cancel()
    finally:
        session.close()
        a.close()
        b.close()
    with pytest.raises(ValueError, match="must be of the other family"):
        MediaSession(v4, host_for_sdp=LOOPBACK, latch_window=1.0, alternate=v4)
