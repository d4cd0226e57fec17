"""Routes that depend on the moment, over real SIP (issue 4): trunk health and call length.

* ``pinged`` is the cheapest trunk for +86138 but is health-checked with OPTIONS every
  0.2 s, one unanswered ping marking it down: while its socket stays silent the calls
  skip it for the test carrier; once it answers a ping it carries them again.
* ``routing.max_duration`` ends app-to-app calls after 1 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from gateway.sip.message import Request
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    ack_for_failure,
    in_dialog,
    sdp_offer,
)


@pytest.fixture
async def pinged() -> AsyncIterator[UdpPeer]:
    peer = await UdpPeer.open(("127.0.0.1", 9), host="127.0.0.1")
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def gateway_settings(pinged: UdpPeer) -> GatewaySettings:
    extra = f"""
[routing]
max_duration = 1.0

[[trunks]]
name = "pinged"
host = "127.0.0.1"
port = {pinged.local[1]}
prefixes = ["86138"]
price_per_minute = "0.01"
options_ping = true
options_interval = 0.2
options_failures = 1
"""
    return GatewaySettings(ipv6=False, extra_toml=extra)


async def place(gw: GatewayUnderTest, to_user: str) -> tuple[UdpPeer, Request]:
    caller = await UdpPeer.open(gw.udp4)
    invite = caller.invite("1001", to_user)
    invite = caller.authorize(invite, await caller.transact(invite), "1001")
    await caller.send(invite)
    return caller, invite


async def refused_by(
    carrier: UdpPeer, gw: GatewayUnderTest, caller: UdpPeer, invite: Request
) -> None:
    """The call's INVITE reached ``carrier``, which says 486; the caller gets it."""
    carried = await carrier.expect_request("INVITE")
    await carrier.reply(carried, 486, to_tag="busy", to=gw.udp4)
    await carrier.expect_request("ACK")
    response = await caller.expect_response(invite)
    assert response.status == 486
    await caller.send(ack_for_failure(invite, response))


async def test_a_trunk_marked_down_is_skipped_until_it_answers_again(
    gw: GatewayUnderTest, pinged: UdpPeer, trunk: UdpPeer
) -> None:
    monitor = gw.running.trunk_monitor
    with trio.fail_after(3):
        while monitor.is_up("pinged"):
            await trio.sleep(0.05)
    caller, invite = await place(gw, "+8613800138000")
    await refused_by(trunk, gw, caller, invite)  # straight to the test carrier
    pinged.backlog.clear()  # the pings it did not answer
    # It answers a ping: up again, and it carries the next call.
    while True:
        message = await pinged.expect_request("OPTIONS")
        await pinged.reply(message, 200, to=gw.udp4)
        if monitor.is_up("pinged"):
            break
    caller, invite = await place(gw, "+8613800138001")
    while True:  # answer pings until the INVITE comes
        got = await pinged.expect(lambda m: isinstance(m, Request), "a request")
        assert isinstance(got, Request)
        if got.method == "INVITE":
            break
        await pinged.reply(got, 200, to=gw.udp4)
    await pinged.reply(got, 486, to_tag="busy", to=gw.udp4)
    response = await caller.expect_response(invite)
    assert response.status == 486
    await caller.send(ack_for_failure(invite, response))


async def test_routing_max_duration_ends_app_to_app_calls(gw: GatewayUnderTest) -> None:
    app = await UdpPeer.open(gw.udp4)
    register = app.request("REGISTER", f"sip:{app.domain}", from_user="1002", to_user="1002")
    assert (await app.with_auth(register, "1002")).status == 200
    caller, invite = await place(gw, "1002")
    ringing = await app.expect_request("INVITE")
    contact = f"<sip:1002@127.0.0.1:{app.local[1]}>"
    body = sdp_offer("127.0.0.1", 43000)
    await app.reply(ringing, 200, to_tag="app", body=body, contact=contact, to=gw.udp4)
    ok = await caller.expect_response(invite)
    assert ok.status == 200
    ack = in_dialog(invite, ok, "ACK", invite.cseq.seq, transport="UDP", local=caller.local)
    await caller.send(ack)
    answered = trio.current_time()
    for peer in (caller, app):
        bye = await peer.expect_request("BYE", timeout=4)
        assert "Maximum Call Duration" in (bye.headers.get("Reason") or "")
        await peer.reply(bye, 200, to=gw.udp4)
    assert 0.9 <= trio.current_time() - answered <= 2.5
