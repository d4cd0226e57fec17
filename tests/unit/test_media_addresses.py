"""Media addresses by network role: which address a leg binds on, and the relay using them.

The lookup tests need no sockets (a PortAllocator binds nothing until it allocates).
The relay tests bind real UDP sockets on two loopback addresses, 127.0.0.1 standing
for the access (app side) address and 127.0.0.2 for the carrier one (Linux routes
all of 127/8 to loopback).
"""

from __future__ import annotations

import random
import socket
from functools import partial

import pytest
import trio

from gateway.media.addresses import MediaAddress, MediaAddresses
from gateway.media.relay import LocalPorts, MediaSession, PortAllocator
from tests.unit.test_relay import FakeClock, rtp

ACCESS_HOST = "127.0.0.1"
CARRIER_HOST = "127.0.0.2"
# What SDP says for the carrier address: the public side of a 1:1 NAT.
CARRIER_PUBLIC = "198.51.100.7"
V4, V6 = socket.AF_INET, socket.AF_INET6


def unbound(host: str) -> PortAllocator:
    return PortAllocator(host, 40000, 40099)


# ---- the lookup ------------------------------------------------------------------------------


def test_pick_prefers_the_roles_address_of_the_family_then_role_less_ones() -> None:
    main4, main6 = unbound("192.0.2.1"), unbound("2001:db8::1")
    access4, carrier6 = unbound("192.0.2.10"), unbound("2001:db8::20")
    addresses = MediaAddresses(
        [
            MediaAddress("", main4, "192.0.2.1"),
            MediaAddress("", main6, "2001:db8::1"),
            MediaAddress("access", access4, "203.0.113.10"),
            MediaAddress("carrier", carrier6, "2001:db8::20"),
        ]
    )
    assert addresses.pick("access", V4).allocator is access4  # exact
    assert addresses.pick("access", V6).allocator is main6  # role-less of the family
    assert addresses.pick("carrier", V6).allocator is carrier6
    assert addresses.pick("carrier", V4).allocator is main4
    assert addresses.pick("", V6).allocator is main6
    assert addresses.pick("mgmt", V6).allocator is main6  # a role without addresses
    # No family asked: the role's first address, else the default's family.
    assert addresses.pick("carrier").allocator is carrier6
    assert addresses.pick("mgmt").allocator is main4
    assert addresses.default.allocator is main4
    assert addresses.families("carrier") == (V4, V6)
    assert addresses.families() == (V4, V6)


def test_pick_falls_back_to_the_roles_other_family_then_to_the_default() -> None:
    access4, carrier6 = unbound("192.0.2.10"), unbound("2001:db8::20")
    addresses = MediaAddresses(
        [MediaAddress("access", access4, "192.0.2.10"), MediaAddress("carrier", carrier6, "::20")]
    )
    # The carrier has no IPv4 address and there is no role-less one: its IPv6 one
    # (the offer/answer then refuses the IPv4 peer), never the access address.
    assert addresses.pick("carrier", V4).allocator is carrier6
    assert addresses.pick("mgmt", V6).allocator is access4  # nothing fits: the default
    assert addresses.pick("", V4).allocator is access4
    assert addresses.families("carrier") == (V6,)
    assert addresses.families("mgmt") == (V4,)  # the default's, when the role has none


def test_single_is_the_role_less_shape_of_one_allocator_and_its_alternate() -> None:
    main4, main6 = unbound("192.0.2.1"), unbound("2001:db8::1")
    addresses = MediaAddresses.single(main4, "203.0.113.1", main6)
    assert [(a.role, a.family, a.sdp_host) for a in addresses.entries] == [
        ("", V4, "203.0.113.1"),
        ("", V6, "2001:db8::1"),  # no SDP address given: the allocator's host
    ]
    only = MediaAddresses.single(main6, "2001:DB8:0::1")
    assert only.default.sdp_host == "2001:db8::1"  # canonical, as the kernel reports sources
    assert only.families() == (V6,)
    with pytest.raises(ValueError, match="alternate media allocator must be of the other family"):
        MediaAddresses.single(main4, "192.0.2.1", unbound("192.0.2.2"))


def test_allocators_are_counted_once_each() -> None:
    shared, carrier = unbound("192.0.2.1"), PortAllocator("192.0.2.2", 40000, 40009)
    addresses = MediaAddresses(
        [
            MediaAddress("", shared, "192.0.2.1"),
            MediaAddress("access", shared, "203.0.113.1"),
            MediaAddress("carrier", carrier, "192.0.2.2"),
        ]
    )
    assert addresses.allocators == (shared, carrier)
    assert [a.role for a in addresses] == ["", "access", "carrier"]
    assert len(addresses) == 3
    assert addresses.capacity == shared.capacity + carrier.capacity == 50 + 5
    assert addresses.in_use == 0


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "need at least one address"),
        (
            [
                MediaAddress("carrier", unbound("192.0.2.1"), "192.0.2.1"),
                MediaAddress("carrier", unbound("192.0.2.2"), "192.0.2.2"),
            ],
            r"two IPv4 addresses for role 'carrier' \(192.0.2.1 and 192.0.2.2\)",
        ),
        (
            [
                MediaAddress("", unbound("::1"), "::1"),
                MediaAddress("", unbound("2001:db8::1"), "2001:db8::1"),
            ],
            "two IPv6 addresses for role ''",
        ),
    ],
    ids=["empty", "same-role-and-family", "two-role-less-ipv6"],
)
def test_bad_address_lists_are_refused(entries: list[MediaAddress], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MediaAddresses(entries)


def test_bad_sdp_addresses_are_refused() -> None:
    with pytest.raises(ValueError, match="SDP address 2001:db8::1 is IPv6, the sockets are IPv4"):
        MediaAddress("carrier", unbound("192.0.2.1"), "2001:db8::1")
    with pytest.raises(ValueError, match=r"not a numeric IPv4 or IPv6 address: 'gw\.example\.com'"):
        MediaAddress("carrier", unbound("192.0.2.1"), "gw.example.com")


# ---- the relay on two role addresses ---------------------------------------------------------


class Phone:
    """A peer on one loopback address; sends to the relay's address of its own role."""

    def __init__(self, sock: trio.socket.SocketType, relay_host: str) -> None:
        self.sock = sock
        self.relay_host = relay_host

    @classmethod
    async def bind(cls, host: str) -> Phone:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind((host, 0))
        return cls(sock, host)

    @property
    def host(self) -> str:
        host: str = self.sock.getsockname()[0]
        return host

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    async def send(self, data: bytes, port: int) -> None:
        await self.sock.sendto(data, (self.relay_host, port))

    async def recv(self, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
        """A datagram and its full source (host and port)."""
        with trio.fail_after(timeout):
            data, src = await self.sock.recvfrom(4096)
        return data, (src[0], src[1])

    async def assert_quiet(self, wait: float = 0.05) -> None:
        with trio.move_on_after(wait):
            data, src = await self.sock.recvfrom(4096)
            pytest.fail(f"unexpected packet {data[:16]!r} from {src}")

    def close(self) -> None:
        self.sock.close()


def role_addresses(pairs: int = 50) -> tuple[MediaAddresses, PortAllocator, PortAllocator]:
    """Access on 127.0.0.1 and carrier on 127.0.0.2 (advertised as a public address)."""
    base = random.randrange(40000, 44000, 2)
    access = PortAllocator(ACCESS_HOST, base, base + 2 * pairs - 1)
    carrier = PortAllocator(CARRIER_HOST, base, base + 2 * pairs - 1)
    addresses = MediaAddresses(
        [
            MediaAddress("access", access, ACCESS_HOST),
            MediaAddress("carrier", carrier, CARRIER_PUBLIC),
        ]
    )
    return addresses, access, carrier


def local_host(session: MediaSession, leg: str) -> tuple[str, int]:
    host, port = session.stats()[leg]["rtp"]["local"]
    return host, port


async def test_legs_bind_on_their_roles_addresses_and_relay_across_them() -> None:
    addresses, access, carrier = role_addresses()
    session = MediaSession(addresses, latch_window=10.0, clock=FakeClock())
    app, trunk = await Phone.bind(ACCESS_HOST), await Phone.bind(CARRIER_HOST)
    try:
        async with trio.open_nursery() as nursery:
            ports = session.open(nursery, {"b": V4}, roles={"a": "access", "b": "carrier"})
            assert (access.in_use, carrier.in_use) == (1, 1)
            assert local_host(session, "a") == (ACCESS_HOST, ports["a"][0])
            assert local_host(session, "b") == (CARRIER_HOST, ports["b"][0])
            assert session.stats()["b"]["rtcp"]["local"] == [CARRIER_HOST, ports["b"][1]]
            assert (session.sdp_host("a"), session.sdp_host("b")) == (ACCESS_HOST, CARRIER_PUBLIC)
            assert session.address("b").role == "carrier"
            session.set_remote("a", app.host, app.port)
            session.set_remote("b", trunk.host, trunk.port)
            await app.send(rtp(1), ports["a"][0])
            assert await trunk.recv() == (rtp(1), (CARRIER_HOST, ports["b"][0]))
            await trunk.send(rtp(2), ports["b"][0])
            assert await app.recv() == (rtp(2), (ACCESS_HOST, ports["a"][0]))
            nursery.cancel_scope.cancel()
    finally:
        session.close()
        app.close()
        trunk.close()
    assert (access.in_use, carrier.in_use) == (0, 0)


async def test_run_takes_roles_too() -> None:
    addresses, access, carrier = role_addresses()
    session = MediaSession(addresses, latch_window=10.0, clock=FakeClock())
    async with trio.open_nursery() as nursery:
        ports: LocalPorts = await nursery.start(partial(session.run, roles={"a": "carrier"}))
        assert local_host(session, "a") == (CARRIER_HOST, ports["a"][0])
        assert local_host(session, "b") == (ACCESS_HOST, ports["b"][0])  # role "": the default
        nursery.cancel_scope.cancel()
    assert (access.in_use, carrier.in_use) == (0, 0)


def test_media_addresses_carry_their_own_sdp_hosts() -> None:
    addresses, _, _ = role_addresses()
    with pytest.raises(ValueError, match="host_for_sdp and alternate go with a PortAllocator"):
        MediaSession(addresses, host_for_sdp=ACCESS_HOST, latch_window=1.0)
    session = MediaSession(addresses, latch_window=1.0)
    assert session.host_for_sdp == ACCESS_HOST
    assert session.sdp_host("b") == ACCESS_HOST  # not opened yet: the default address
