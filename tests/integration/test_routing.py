"""Routing decisions through the whole gateway (issue 4), in-process, over real sockets.

* 1001 calls 1002 while 1002 has no registration: the call leaves on the carrier
  trunk to 1002's number (DESIGN.md's embedded-default demo), and the CDR says so.
* An emergency short code goes to the carrier even when the caller is over its call
  rate limit, which refuses every other call with 503.
* A national number is read in the country's plan and leaves in E.164.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from gateway.sip.message import Request
from tests.integration.sipclient import (
    NUMBERS,
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    ack_for_failure,
)


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    # One call attempt per second per account: the second is over the limit.
    return GatewaySettings(ipv6=False, cps_per_account=1)


@pytest.fixture
async def peer(gw: GatewayUnderTest) -> AsyncIterator[UdpPeer]:
    client = await UdpPeer.open(gw.udp4)
    try:
        yield client
    finally:
        client.close()


async def place(peer: UdpPeer, to_user: str) -> Request:
    """An authenticated INVITE from 1001 to ``to_user``, sent; the request."""
    invite = peer.invite("1001", to_user)
    challenge = await peer.transact(invite)
    invite = peer.authorize(invite, challenge, "1001")
    await peer.send(invite)
    return invite


async def refuse_at_the_trunk(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer, invite: Request
) -> Request:
    """The trunk's side of the call: the INVITE it got, then 486 back to the caller."""
    carried = await trunk.expect_request("INVITE")
    await trunk.reply(carried, 486, to_tag="carrier", to=gw.udp4)
    response = await peer.expect_response(invite)
    assert response.status == 486
    await peer.send(ack_for_failure(invite, response))
    await trunk.expect_request("ACK")
    return carried


async def test_unregistered_subscriber_is_called_on_its_number(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    invite = await place(peer, "1002")
    carried = await refuse_at_the_trunk(gw, peer, trunk, invite)
    assert carried.uri == f"sip:{NUMBERS['1002']}@127.0.0.1:{trunk.local[1]}"
    with trio.fail_after(5):
        while not (cdrs := await gw.running.store.list_cdrs()):
            await trio.sleep(0.05)
    assert [(c.route, c.callee) for c in cdrs] == [("fallback", "+8613900139002")]


async def test_emergency_call_passes_the_rate_limit_that_refuses_others(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    first = await place(peer, "13800138000")  # national mobile form, the one attempt allowed
    carried = await refuse_at_the_trunk(gw, peer, trunk, first)
    assert carried.uri == f"sip:+8613800138000@127.0.0.1:{trunk.local[1]}"
    over = await place(peer, "13800138001")
    response = await peer.expect_response(over)
    assert (response.status, response.reason) == (503, "Call Rate Limit Exceeded")
    emergency = await place(peer, "110")
    carried = await refuse_at_the_trunk(gw, peer, trunk, emergency)
    assert carried.uri == f"sip:110@127.0.0.1:{trunk.local[1]}"
