"""A trunk named by its domain: RFC 3263 lookups and failover across the records.

The carrier's domain ``carrier.test`` has two SRV records for SIP over UDP: priority 10
on one SBC (a socket of the test that answers 503), priority 20 on another (which
answers 486). A tiny DNS server of the test serves them; the gateway asks it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.dnsserver import TinyDns, tiny_dns
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    ack_for_failure,
)


@pytest.fixture
async def first() -> AsyncIterator[UdpPeer]:
    peer = await UdpPeer.open(("127.0.0.1", 9), host="127.0.0.1")
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
async def second() -> AsyncIterator[UdpPeer]:
    peer = await UdpPeer.open(("127.0.0.1", 9), host="127.0.0.1")
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
async def zone(first: UdpPeer, second: UdpPeer) -> AsyncIterator[TinyDns]:
    async with tiny_dns() as server:
        server.add(
            "_sip._udp.carrier.test",
            "SRV",
            f"20 10 {second.local[1]} two.carrier.test.",
            f"10 10 {first.local[1]} one.carrier.test.",
        )
        server.add("one.carrier.test", "A", "127.0.0.1")
        server.add("two.carrier.test", "A", "127.0.0.1")
        yield server


@pytest.fixture
def gateway_settings(zone: TinyDns) -> GatewaySettings:
    extra = f"""
[dns]
servers = ["127.0.0.1:{zone.port}"]
timeout = 1.0

[[trunks]]
name = "by-domain"
host = "carrier.test"
resolve = "rfc3263"
prefixes = ["86138"]
"""
    return GatewaySettings(ipv6=False, extra_toml=extra)


async def test_the_next_srv_target_is_tried_after_a_503(
    gw: GatewayUnderTest, zone: TinyDns, first: UdpPeer, second: UdpPeer, trunk: UdpPeer
) -> None:
    caller = await UdpPeer.open(gw.udp4)
    invite = caller.invite("1001", "+8613800138000")
    invite = caller.authorize(invite, await caller.transact(invite), "1001")
    await caller.send(invite)
    for peer, status in ((first, 503), (second, 486)):
        carried = await peer.expect_request("INVITE")
        # The Request-URI names the domain; DNS said which address to send it to.
        assert carried.uri == "sip:+8613800138000@carrier.test"
        await peer.reply(carried, status, to_tag=f"t{status}", to=gw.udp4)
        await peer.expect_request("ACK")
    response = await caller.expect_response(invite)
    assert response.status == 486
    await caller.send(ack_for_failure(invite, response))
    await trunk.expect_silence(0.3)  # the busy callee ends it: no other trunk
    assert ("_sip._udp.carrier.test", "SRV") in zone.queries
    caller.close()
