"""Click-to-call through the call core, over real SIP (issue 4, partners).

The gateway calls A on the carrier trunk (a socket of the test), and only once A has
answered calls B (another number on the same trunk, or the app user 1002), then
bridges them. The partner API drives the same core method; its HTTP side is tested in
tests/integration/test_partner_api.py.
"""

from __future__ import annotations

import pytest
import trio

from gateway.calls.origination import CallRefused, ClickToCallState
from gateway.sip.headers import parse_name_addr
from gateway.sip.message import Headers, Request
from gateway.store.model import Cdr
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    sdp_offer,
    via_value,
)

A = "+8613800138000"
B = "+8613800138001"


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    # Partner "p" has a budget and no masked numbers (so each party sees the other).
    extra = """
[[partners]]
name = "p"
api_key = "p-secret-key"
budget = "100.00"
"""
    return GatewaySettings(ipv6=False, extra_toml=extra)


class States:
    """What the call reported, in order (the partner logic's view)."""

    def __init__(self) -> None:
        self.seen: list[tuple[ClickToCallState, str | None]] = []
        self.changed = trio.Event()

    def __call__(self, state: ClickToCallState, cause: str | None) -> None:
        self.seen.append((state, cause))
        self.changed.set()
        self.changed = trio.Event()

    async def until(self, state: ClickToCallState, timeout: float = 5.0) -> str | None:
        with trio.fail_after(timeout):
            while not any(s is state for s, _ in self.seen):
                await self.changed.wait()
        return next(cause for s, cause in self.seen if s is state)


async def answer(trunk: UdpPeer, gw: GatewayUnderTest, port: int) -> Request:
    invite = await trunk.expect_request("INVITE")
    contact = f"<sip:carrier@127.0.0.1:{trunk.local[1]}>"
    body = sdp_offer("127.0.0.1", port)
    await trunk.reply(invite, 200, to_tag=f"t{port}", body=body, contact=contact, to=gw.udp4)
    await trunk.expect_request("ACK")
    return invite


async def cdrs(gw: GatewayUnderTest, count: int) -> list[Cdr]:
    with trio.fail_after(10):
        while len(found := await gw.running.store.list_cdrs()) < count:
            await trio.sleep(0.05)
    return found


async def test_a_is_called_first_then_b_then_bridged_until_hung_up(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    states = States()
    call_id = await gw.running.core.click_to_call(partner="p", a=A, b=B, on_state=states)
    to_a = await answer(trunk, gw, 41000)
    assert to_a.uri.startswith(f"sip:{A}@")
    # A sees B's number (no masked pool for this partner), B sees A's.
    assert B in (to_a.headers.get("From") or "")
    assert await states.until(ClickToCallState.CALLING_B) is None
    to_b = await answer(trunk, gw, 41002)
    assert to_b.uri.startswith(f"sip:{B}@") and A in (to_b.headers.get("From") or "")
    assert to_a.call_id != to_b.call_id
    await states.until(ClickToCallState.BRIDGED)
    # B was offered what A took: its leg is plain G.711 and relayed, not transcoded.
    assert b"PCMU" in to_b.body or b"PCMA" in to_b.body
    assert gw.running.core.hangup(call_id)
    byes = {(await trunk.expect_request("BYE")).call_id for _ in range(2)}
    assert byes == {to_a.call_id, to_b.call_id}
    assert await states.until(ClickToCallState.ENDED) == "api-delete"
    [cdr] = await cdrs(gw, 1)
    assert (cdr.route, cdr.caller, cdr.callee, cdr.disposition) == (
        "click-to-call",
        A,
        B,
        "answered",
    )


async def test_a_busy_ends_it_before_b_is_called(gw: GatewayUnderTest, trunk: UdpPeer) -> None:
    states = States()
    await gw.running.core.click_to_call(partner="p", a=A, b=B, on_state=states)
    invite = await trunk.expect_request("INVITE")
    await trunk.reply(invite, 486, to_tag="busy", to=gw.udp4)
    await trunk.expect_request("ACK")
    assert await states.until(ClickToCallState.ENDED) == "a-busy"
    await trunk.expect_silence(0.5)  # B is never called
    assert [s for s, _ in states.seen] == [ClickToCallState.CALLING_A, ClickToCallState.ENDED]


async def test_b_busy_hangs_up_a(gw: GatewayUnderTest, trunk: UdpPeer) -> None:
    states = States()
    await gw.running.core.click_to_call(partner="p", a=A, b=B, on_state=states)
    to_a = await answer(trunk, gw, 41000)
    to_b = await trunk.expect_request("INVITE")
    await trunk.reply(to_b, 486, to_tag="busy", to=gw.udp4)
    await trunk.expect_request("ACK")
    bye = await trunk.expect_request("BYE")
    assert bye.call_id == to_a.call_id
    await trunk.reply(bye, 200, to=gw.udp4)
    assert await states.until(ClickToCallState.ENDED) == "b-busy"


async def hang_up_while_a_rings(
    gw: GatewayUnderTest, trunk: UdpPeer, states: States
) -> tuple[str, Request, Request]:
    """A click-to-call the partner hangs up while A rings: its id, A's INVITE, our CANCEL."""
    call_id = await gw.running.core.click_to_call(partner="p", a=A, b=B, on_state=states)
    invite = await trunk.expect_request("INVITE")
    await trunk.reply(invite, 180, to_tag="ring", to=gw.udp4)
    assert gw.running.core.hangup(call_id)
    cancel = await trunk.expect_request("CANCEL")
    assert cancel.call_id == invite.call_id
    return call_id, invite, cancel


async def test_hang_up_while_calling_a_cancels_it(gw: GatewayUnderTest, trunk: UdpPeer) -> None:
    states = States()
    call_id, invite, cancel = await hang_up_while_a_rings(gw, trunk, states)
    await trunk.reply(cancel, 200, to=gw.udp4)
    await trunk.reply(invite, 487, to_tag="ring", to=gw.udp4)
    assert await states.until(ClickToCallState.ENDED) == "api-delete"
    assert not gw.running.core.hangup(call_id)


async def test_an_answer_from_a_crossing_the_cancel_is_acked_and_hung_up(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    # The partner hangs up while A rings, and A answers as the CANCEL reaches it: A's 2xx
    # is ACKed and A hung up (RFC 3261 9.1), and B is never called.
    states = States()
    _, invite, cancel = await hang_up_while_a_rings(gw, trunk, states)
    contact = f"<sip:carrier@127.0.0.1:{trunk.local[1]}>"
    body = sdp_offer("127.0.0.1", 41000)
    await trunk.reply(invite, 200, to_tag="ring", body=body, contact=contact, to=gw.udp4)
    await trunk.reply(cancel, 200, to=gw.udp4)
    ack = await trunk.expect_request("ACK", call_id=invite.call_id)
    assert ack.cseq.seq == invite.cseq.seq
    bye = await trunk.expect_request("BYE", call_id=invite.call_id)
    await trunk.reply(bye, 200, to=gw.udp4)
    assert await states.until(ClickToCallState.ENDED) == "api-delete"
    await trunk.expect_silence(0.5)  # no INVITE toward B


@pytest.mark.parametrize(
    ("a", "b", "status"),
    [("110", B, 403), (A, "112", 403), ("nonsense", B, 404), (A, "", 404)],
)
async def test_parties_that_cannot_be_called_are_refused_before_anything_is_sent(
    gw: GatewayUnderTest, trunk: UdpPeer, a: str, b: str, status: int
) -> None:
    with pytest.raises(CallRefused) as refused:
        await gw.running.core.click_to_call(partner="p", a=a, b=b, on_state=States())
    assert refused.value.status == status
    await trunk.expect_silence(0.3)
    assert not gw.running.core.calls


async def test_b_can_be_an_app_user(gw: GatewayUnderTest, trunk: UdpPeer) -> None:
    app = await UdpPeer.open(gw.udp4)
    request = app.request("REGISTER", f"sip:{app.domain}", from_user="1002", to_user="1002")
    assert (await app.with_auth(request, "1002")).status == 200
    states = States()
    await gw.running.core.click_to_call(partner="p", a=A, b="1002", on_state=states)
    await answer(trunk, gw, 41000)
    to_app = await app.expect_request("INVITE")
    # Toward the app the gateway offers SRTP (its policy), whatever A took.
    assert b"RTP/SAVP" in to_app.body
    app.close()


async def test_a_re_invite_from_a_after_the_bridge_is_carried_to_b(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    # A puts B on hold: the re-INVITE crosses to B, and B's 200 comes back to A.
    states = States()
    call_id = await gw.running.core.click_to_call(partner="p", a=A, b=B, on_state=states)
    to_a = await answer(trunk, gw, 41000)
    to_b = await answer(trunk, gw, 41002)
    await states.until(ClickToCallState.BRIDGED)
    contact = parse_name_addr(to_a.headers.get("Contact") or "").uri
    hold = Request("INVITE", str(contact), Headers())
    hold.headers.add("Via", via_value("UDP", trunk.local))
    hold.headers.add("Max-Forwards", "70")
    hold.headers.add("From", f"{to_a.headers.get('To')};tag=t41000")
    hold.headers.add("To", to_a.headers.get("From") or "")
    hold.headers.add("Call-ID", to_a.call_id)
    hold.headers.add("CSeq", "1 INVITE")
    hold.headers.add("Contact", f"<sip:carrier@127.0.0.1:{trunk.local[1]}>")
    hold.headers.add("Content-Type", "application/sdp")
    hold.body = sdp_offer("127.0.0.1", 41000).replace(b"a=sendrecv", b"a=sendonly")
    await trunk.send(hold, gw.udp4)
    carried = await trunk.expect_request("INVITE", call_id=to_b.call_id)
    assert b"a=sendonly" in carried.body  # the hold crosses as it was offered
    contact_b = f"<sip:carrier@127.0.0.1:{trunk.local[1]}>"
    answer_b = sdp_offer("127.0.0.1", 41002).replace(b"a=sendrecv", b"a=recvonly")
    await trunk.reply(carried, 200, body=answer_b, contact=contact_b, to=gw.udp4)
    await trunk.expect_request("ACK", call_id=to_b.call_id)
    ok = await trunk.expect_response(hold)
    assert ok.status == 200 and ok.headers.get("Contact")
    assert gw.running.core.hangup(call_id)
    assert await states.until(ClickToCallState.ENDED) == "api-delete"
