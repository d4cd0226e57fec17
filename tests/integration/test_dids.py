"""Carrier calls to our numbers (DIDs), over real SIP (issue 4, routing).

The carrier trunk is a socket of the test (the ``trunk`` fixture): the gateway knows it
by its address and port, so its INVITEs need no credentials. Subscriber 3001 owns
+8613900133001 and has a mobile, +8613800133001; 1002 owns +8613900139002 and has none.
"""

from __future__ import annotations

import pytest
import trio

from gateway.sip.message import Request
from gateway.store.model import Cdr
from gateway.transport.flow import hostport
from tests.integration.sipclient import (
    NUMBERS,
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    ack_for_failure,
    sdp_offer,
)

OWNER_NUMBER = "+8613900133001"
OWNER_MOBILE = "+8613800133001"
CARRIER_CALLER = "+8613700137000"


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    extra = f"""
[routing]
ring_timeout = 1.0

[[subscribers]]
username = "3001"
password = "pw-3001-not-demo"
numbers = ["{OWNER_NUMBER}"]
mobile = "{OWNER_MOBILE}"
balance = "10.00"
"""
    return GatewaySettings(ipv6=False, extra_toml=extra)


def carrier_invite(trunk: UdpPeer, gw: GatewayUnderTest, number: str) -> Request:
    invite = trunk.request(
        "INVITE",
        f"sip:{number}@{hostport(gw.udp4)}",
        from_user=CARRIER_CALLER,
        to_user=number,
        body=sdp_offer("127.0.0.1", 42000),
    )
    return invite


async def registered_app(gw: GatewayUnderTest) -> UdpPeer:
    """Subscriber 1002's app, registered."""
    app = await UdpPeer.open(gw.udp4)
    register = app.request("REGISTER", f"sip:{app.domain}", from_user="1002", to_user="1002")
    assert (await app.with_auth(register, "1002")).status == 200
    return app


async def ring_the_app(
    gw: GatewayUnderTest, trunk: UdpPeer, *, require: str | None = None
) -> tuple[UdpPeer, Request, Request]:
    """The carrier calls 1002's number and the registered app gets the INVITE: the app,
    the carrier's INVITE (with `Require: require` if given) and the app's."""
    app = await registered_app(gw)
    invite = carrier_invite(trunk, gw, NUMBERS["1002"])
    if require is not None:
        invite.headers.add("Require", require)
    await trunk.send(invite, gw.udp4)
    return app, invite, await app.expect_request("INVITE")


async def carrier_cancels(gw: GatewayUnderTest, trunk: UdpPeer, invite: Request) -> None:
    """The carrier's CANCEL (RFC 3261 9.1: the INVITE's Via, Call-ID, tags and CSeq number):
    200 for it, 487 for the INVITE, which the carrier ACKs."""
    cancel = Request("CANCEL", invite.uri, invite.headers.copy())
    cancel.headers.set("CSeq", f"{invite.cseq.seq} CANCEL")
    cancel.headers.remove("Content-Type")
    cancel.body = b""
    await trunk.send(cancel, gw.udp4)
    assert (await trunk.expect_response(cancel)).status == 200
    terminated = await trunk.expect_response(invite)
    assert terminated.status == 487
    await trunk.send(ack_for_failure(invite, terminated), gw.udp4)


async def cdrs(gw: GatewayUnderTest, count: int) -> list[Cdr]:
    with trio.fail_after(10):
        while len(found := await gw.running.store.list_cdrs()) < count:
            await trio.sleep(0.05)
    return found


async def test_a_carrier_call_to_a_number_rings_its_owners_app(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    app, invite, ringing = await ring_the_app(gw, trunk)
    assert CARRIER_CALLER in (ringing.headers.get("From") or "")
    assert b"RTP/SAVP" in ringing.body  # the app leg gets SRTP, the carrier's stays plain
    await app.reply(ringing, 486, to_tag="busy", to=gw.udp4)
    await app.expect_request("ACK")
    refused = await trunk.expect_response(invite)
    assert refused.status == 486
    await trunk.send(ack_for_failure(invite, refused), gw.udp4)
    [cdr] = await cdrs(gw, 1)
    assert (cdr.caller, cdr.callee, cdr.route) == (CARRIER_CALLER, "1002", "app")
    app.close()


async def test_an_offline_owner_with_a_mobile_is_forwarded_there(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    invite = carrier_invite(trunk, gw, OWNER_NUMBER)
    await trunk.send(invite, gw.udp4)
    forwarded = await trunk.expect_request("INVITE")
    assert forwarded.uri.startswith(f"sip:{OWNER_MOBILE}@")
    assert CARRIER_CALLER in (forwarded.headers.get("From") or "")
    await trunk.reply(forwarded, 486, to_tag="busy", to=gw.udp4)
    await trunk.expect_request("ACK")
    refused = await trunk.expect_response(invite)
    assert refused.status == 486
    await trunk.send(ack_for_failure(invite, refused), gw.udp4)
    [cdr] = await cdrs(gw, 1)
    assert (cdr.route, cdr.callee, cdr.trunk) == ("fallback", OWNER_MOBILE, "test-carrier")


@pytest.mark.parametrize(
    ("number", "status"),
    [
        (NUMBERS["1002"], 480),  # ours, the app offline, no mobile
        ("+8613800138000", 404),  # not ours: carriers get no transit
        ("+8617000000001", 404),
    ],
)
async def test_carrier_calls_that_go_nowhere(
    gw: GatewayUnderTest, trunk: UdpPeer, number: str, status: int
) -> None:
    invite = carrier_invite(trunk, gw, number)
    await trunk.send(invite, gw.udp4)
    response = await trunk.expect_response(invite)
    assert response.status == status
    await trunk.send(ack_for_failure(invite, response), gw.udp4)
    await trunk.expect_silence(0.3)  # nothing went back out to a carrier


async def test_the_same_invite_from_an_unknown_peer_is_challenged(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    stranger = await UdpPeer.open(gw.udp4)
    invite = carrier_invite(stranger, gw, NUMBERS["1002"])
    response = await stranger.transact(invite)
    assert response.status == 407  # only an app user with credentials may call from there
    stranger.close()


async def test_an_extension_we_do_not_have_gets_420(gw: GatewayUnderTest, trunk: UdpPeer) -> None:
    invite = carrier_invite(trunk, gw, NUMBERS["1002"])
    invite.headers.add("Require", "100rel, precondition")
    await trunk.send(invite, gw.udp4)
    response = await trunk.expect_response(invite)
    assert (response.status, response.headers.get("Unsupported")) == (420, "precondition")
    await trunk.send(ack_for_failure(invite, response), gw.udp4)


async def test_national_called_number_and_asserted_caller_are_read_as_e164(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    app = await registered_app(gw)
    # 1002's number in the national form, the caller in P-Asserted-Identity (trusted).
    invite = carrier_invite(trunk, gw, "13900139002")
    invite.headers.add("P-Asserted-Identity", "<tel:+8613600136000>")
    await trunk.send(invite, gw.udp4)
    ringing = await app.expect_request("INVITE")
    assert "+8613600136000" in (ringing.headers.get("From") or "")
    await app.reply(ringing, 486, to_tag="busy", to=gw.udp4)
    await app.expect_request("ACK")
    response = await trunk.expect_response(invite)
    await trunk.send(ack_for_failure(invite, response), gw.udp4)
    [cdr] = await cdrs(gw, 1)
    assert cdr.caller == "+8613600136000"
    app.close()


async def test_a_caller_that_never_prack_s_can_still_cancel_the_held_answer(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    # The carrier requires 100rel; the app rings and answers at once. Our 2xx waits for the
    # PRACK of the reliable 180, which never comes: the carrier's CANCEL gets the INVITE a
    # 487, the app is hung up, and the call was never answered (nor billed).
    app, invite, ringing = await ring_the_app(gw, trunk, require="100rel")
    await app.reply(ringing, 180, to_tag="app", to=gw.udp4)
    contact = f"<sip:1002@127.0.0.1:{app.local[1]}>"
    body = sdp_offer("127.0.0.1", 43000)
    await app.reply(ringing, 200, to_tag="app", body=body, contact=contact, to=gw.udp4)
    await app.expect_request("ACK")
    reliable = await trunk.expect_response(invite, final=False)
    assert reliable.status == 180 and reliable.headers.get("RSeq")
    await carrier_cancels(gw, trunk, invite)
    bye = await app.expect_request("BYE")
    await app.reply(bye, 200, to=gw.udp4)
    [cdr] = await cdrs(gw, 1)
    assert (cdr.disposition, cdr.end_reason, cdr.answer) == ("cancelled", "caller-cancel", None)
    app.close()


async def test_an_answer_crossing_our_cancel_is_acked_and_hung_up_once(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    # The carrier cancels while the app rings, and the app answers just as the gateway's
    # CANCEL reaches it (RFC 3261 9.1: the CANCEL then changes nothing). The carrier still
    # gets its 487; the app's 2xx is ACKed and the app hung up, or it would hold an answered
    # call nobody is on until it gave up on the ACK. Its retransmitted 2xx is ACKed again
    # and draws no second BYE.
    app, invite, ringing = await ring_the_app(gw, trunk)
    await app.reply(ringing, 180, to_tag="app", to=gw.udp4)
    await carrier_cancels(gw, trunk, invite)
    ours = await app.expect_request("CANCEL")
    assert ours.call_id == ringing.call_id
    contact = f"<sip:1002@127.0.0.1:{app.local[1]}>"
    body = sdp_offer("127.0.0.1", 43000)
    ok = await app.reply(ringing, 200, to_tag="app", body=body, contact=contact, to=gw.udp4)
    await app.reply(ours, 200, to=gw.udp4)
    ack = await app.expect_request("ACK", call_id=ringing.call_id)
    assert ack.cseq.seq == ringing.cseq.seq
    bye = await app.expect_request("BYE", call_id=ringing.call_id)
    assert "tag=app" in (bye.headers.get("To") or "")
    await app.send(ok, gw.udp4)  # the 2xx again, as if our ACK were lost
    await app.expect_request("ACK", call_id=ringing.call_id)
    await app.reply(bye, 200, to=gw.udp4)
    await app.expect_silence(0.5)
    [cdr] = await cdrs(gw, 1)
    assert (cdr.disposition, cdr.end_reason, cdr.answer) == ("cancelled", "caller-cancel", None)
    app.close()
