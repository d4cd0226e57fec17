"""Least-cost routing, trunk failover and the fallback from an app to its number (issue 4).

Three carriers, each a UDP socket of the test that answers as a carrier's SBC would:

* ``specific`` takes +86138 (the longest prefix there), costs 0.09, 1 channel, and
  ends calls after 2 s (its ``max_duration``);
* ``cheap`` takes +86 at 0.01;
* ``test-carrier`` (the ``trunk`` fixture) takes every number at 0.00, but its empty
  prefix is the shortest, so it comes last.

An app user (1002) registers from a socket of the test, which rings and answers or
refuses as each test needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from gateway.sip.message import Request, Response, make_response
from gateway.store.model import Cdr
from tests.integration.sipclient import (
    NUMBERS,
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    ack_for_failure,
    in_dialog,
    sdp_offer,
)

RING_TIMEOUT = 1.0
TRUNK_RESPONSE_TIMEOUT = 1.0


async def _carrier() -> UdpPeer:
    return await UdpPeer.open(("127.0.0.1", 9), host="127.0.0.1")


@pytest.fixture
async def specific() -> AsyncIterator[UdpPeer]:
    peer = await _carrier()
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
async def cheap() -> AsyncIterator[UdpPeer]:
    peer = await _carrier()
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def gateway_settings(specific: UdpPeer, cheap: UdpPeer) -> GatewaySettings:
    extra = f"""
[routing]
ring_timeout = {RING_TIMEOUT}
trunk_response_timeout = {TRUNK_RESPONSE_TIMEOUT}

[[trunks]]
name = "cheap"
host = "127.0.0.1"
port = {cheap.local[1]}
prefixes = ["86"]
price_per_minute = "0.01"

[[trunks]]
name = "specific"
host = "127.0.0.1"
port = {specific.local[1]}
prefixes = ["86138"]
price_per_minute = "0.09"
max_channels = 1
max_duration = 2.0
"""
    return GatewaySettings(ipv6=False, extra_toml=extra)


@pytest.fixture
async def caller(gw: GatewayUnderTest) -> AsyncIterator[UdpPeer]:
    peer = await UdpPeer.open(gw.udp4)
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
async def app(gw: GatewayUnderTest) -> AsyncIterator[UdpPeer]:
    """1002's app, registered from a socket of the test."""
    peer = await UdpPeer.open(gw.udp4)
    request = peer.request("REGISTER", f"sip:{peer.domain}", from_user="1002", to_user="1002")
    assert (await peer.with_auth(request, "1002")).status == 200
    try:
        yield peer
    finally:
        peer.close()


async def place(peer: UdpPeer, to_user: str) -> Request:
    """An authenticated INVITE from 1001 to ``to_user``, sent; the request."""
    invite = peer.invite("1001", to_user)
    challenge = await peer.transact(invite)
    invite = peer.authorize(invite, challenge, "1001")
    await peer.send(invite)
    return invite


async def final(peer: UdpPeer, invite: Request, timeout: float = 5.0) -> Response:
    """The caller's final response to ``invite`` (provisionals skipped)."""
    return await peer.expect_response(invite, timeout=timeout)


async def refused(caller: UdpPeer, invite: Request, status: int) -> None:
    response = await final(caller, invite)
    assert response.status == status, f"{response.status} {response.reason}"
    await caller.send(ack_for_failure(invite, response))


async def reject(
    carrier: UdpPeer, gw: GatewayUnderTest, status: int, *, q850: int | None = None
) -> Request:
    """The next INVITE at ``carrier``, refused with ``status`` (and its ACK taken),
    with a Reason header carrying Q.850 cause ``q850`` when one is given."""
    carried = await carrier.expect_request("INVITE")
    response = make_response(carried, status, to_tag=f"t{status}")
    if q850 is not None:
        response.headers.set("Reason", f'Q.850;cause={q850};text="from the carrier"')
    await carrier.send(response, gw.udp4)
    await carrier.expect_request("ACK")
    return carried


async def answer(carrier: UdpPeer, gw: GatewayUnderTest) -> Request:
    """The next INVITE at ``carrier``, answered with PCMA (and its ACK taken)."""
    carried = await carrier.expect_request("INVITE")
    body = sdp_offer("127.0.0.1", 41000)
    contact = f"<sip:carrier@127.0.0.1:{carrier.local[1]}>"
    await carrier.reply(carried, 200, to_tag="up", body=body, contact=contact, to=gw.udp4)
    await carrier.expect_request("ACK")
    return carried


async def answered(caller: UdpPeer, invite: Request) -> Response:
    ok = await final(caller, invite)
    assert ok.status == 200, f"{ok.status} {ok.reason}"
    await caller.send(
        in_dialog(invite, ok, "ACK", invite.cseq.seq, transport="UDP", local=caller.local)
    )
    return ok


async def hang_up(caller: UdpPeer, invite: Request, ok: Response, carrier: UdpPeer) -> None:
    bye = in_dialog(invite, ok, "BYE", invite.cseq.seq + 1, transport="UDP", local=caller.local)
    await caller.send(bye)
    carried = await carrier.expect_request("BYE")
    await carrier.reply(carried, 200)
    assert (await caller.expect_response(bye)).status == 200


async def cdrs(gw: GatewayUnderTest, count: int) -> list[Cdr]:
    with trio.fail_after(10):
        while len(found := await gw.running.store.list_cdrs()) < count:
            await trio.sleep(0.05)
    return sorted(found, key=lambda cdr: cdr.start)


# ---- least-cost routing and failover between trunks --------------------------------------


async def test_longest_prefix_first_then_the_cheapest_and_busy_ends_it(
    gw: GatewayUnderTest, caller: UdpPeer, specific: UdpPeer, cheap: UdpPeer, trunk: UdpPeer
) -> None:
    invite = await place(caller, "13800138000")
    first = await reject(specific, gw, 503)
    refused_at = trio.current_time()
    second = await reject(cheap, gw, 486)
    # At once, not after routing.trunk_response_timeout: the 503 was the trunk's answer.
    assert trio.current_time() - refused_at < TRUNK_RESPONSE_TIMEOUT / 2
    await refused(caller, invite, 486)
    # One callee-side dialog identity, a higher CSeq: no carrier sees a merged request.
    assert first.call_id == second.call_id
    assert second.cseq.seq > first.cseq.seq
    assert first.uri.startswith("sip:+8613800138000@") and second.uri.startswith(
        "sip:+8613800138000@"
    )
    await trunk.expect_silence(0.5)  # 486 is the callee's answer: no third carrier
    [cdr] = await cdrs(gw, 1)
    assert (cdr.trunk, cdr.sip_status, cdr.disposition) == ("cheap", 486, "busy")


async def test_a_silent_trunk_gives_way_after_the_response_timeout(
    gw: GatewayUnderTest, caller: UdpPeer, specific: UdpPeer, cheap: UdpPeer
) -> None:
    invite = await place(caller, "13800138000")
    ignored = await specific.expect_request("INVITE")
    started = trio.current_time()
    await answer(cheap, gw)
    waited = trio.current_time() - started
    assert TRUNK_RESPONSE_TIMEOUT - 0.1 <= waited <= TRUNK_RESPONSE_TIMEOUT + 1.0, waited
    ok = await answered(caller, invite)
    await hang_up(caller, invite, ok, cheap)
    # The silent trunk's INVITE was cancelled when it was given up.
    cancel = await specific.expect_request("CANCEL")
    assert cancel.cseq.seq == ignored.cseq.seq
    [cdr] = await cdrs(gw, 1)
    assert (cdr.trunk, cdr.disposition, cdr.route) == ("cheap", "answered", "trunk")


@pytest.mark.parametrize("status", [486, 603, 404])
async def test_callee_answers_are_never_failed_over(
    gw: GatewayUnderTest, caller: UdpPeer, specific: UdpPeer, cheap: UdpPeer, status: int
) -> None:
    invite = await place(caller, "13800138000")
    await reject(specific, gw, status)
    await refused(caller, invite, status)
    await cheap.expect_silence(0.5)


async def test_a_carrier_cause_of_the_called_party_stops_failover(
    gw: GatewayUnderTest, caller: UdpPeer, specific: UdpPeer, cheap: UdpPeer
) -> None:
    # 503 would fail over, but Q.850 cause 17 (user busy) says the callee was reached.
    invite = await place(caller, "13800138000")
    await reject(specific, gw, 503, q850=17)
    await refused(caller, invite, 503)
    await cheap.expect_silence(0.5)
    [cdr] = await cdrs(gw, 1)
    assert (cdr.q850_cause, cdr.reason_text) == (17, "from the carrier")


async def test_a_network_cause_fails_over_whatever_the_status(
    gw: GatewayUnderTest, caller: UdpPeer, specific: UdpPeer, cheap: UdpPeer
) -> None:
    # 480 alone ends the call; with Q.850 cause 34 (no circuit) the next carrier is tried.
    invite = await place(caller, "13800138000")
    await reject(specific, gw, 480, q850=34)
    await reject(cheap, gw, 486)
    await refused(caller, invite, 486)
    [cdr] = await cdrs(gw, 1)
    assert (cdr.trunks_tried, cdr.q850_cause) == (["specific", "cheap"], 17)


async def test_every_trunk_failing_gives_the_last_failure(
    gw: GatewayUnderTest, caller: UdpPeer, specific: UdpPeer, cheap: UdpPeer, trunk: UdpPeer
) -> None:
    invite = await place(caller, "13800138000")
    await reject(specific, gw, 500)
    await reject(cheap, gw, 408)
    await reject(trunk, gw, 503)
    await refused(caller, invite, 503)


async def test_a_trunk_at_max_channels_is_skipped(
    gw: GatewayUnderTest, caller: UdpPeer, specific: UdpPeer, cheap: UdpPeer
) -> None:
    first = await place(caller, "13800138000")
    await answer(specific, gw)
    first_ok = await answered(caller, first)
    second = await place(caller, "13800138001")
    await answer(cheap, gw)  # specific's one channel is taken
    second_ok = await answered(caller, second)
    await hang_up(caller, second, second_ok, cheap)
    await hang_up(caller, first, first_ok, specific)
    records = await cdrs(gw, 2)
    assert [c.trunk for c in records] == ["specific", "cheap"]


async def test_max_duration_of_the_trunk_ends_the_call(
    gw: GatewayUnderTest, caller: UdpPeer, specific: UdpPeer
) -> None:
    invite = await place(caller, "13800138000")
    await answer(specific, gw)
    await answered(caller, invite)
    with trio.fail_after(5):
        to_carrier = await specific.expect_request("BYE")
        to_caller = await caller.expect_request("BYE")
    for peer, bye in ((specific, to_carrier), (caller, to_caller)):
        assert "Maximum Call Duration" in (bye.headers.get("Reason") or "")
        await peer.reply(bye, 200, to=gw.udp4)
    [cdr] = await cdrs(gw, 1)
    assert cdr.end_reason == "max-duration"
    assert 1.9 <= cdr.duration <= 3.0, cdr.duration


# ---- an app that does not answer: its subscriber's number -------------------------------


async def test_app_that_does_not_answer_falls_back_to_its_number(
    gw: GatewayUnderTest, caller: UdpPeer, app: UdpPeer, cheap: UdpPeer
) -> None:
    invite = await place(caller, "1002")
    ringing = await app.expect_request("INVITE")
    await app.reply(ringing, 180, to_tag="app", to=gw.udp4)
    assert (await caller.expect_response(invite, final=False)).status == 180
    started = trio.current_time()
    cancel = await app.expect_request("CANCEL", timeout=RING_TIMEOUT + 2)
    assert RING_TIMEOUT - 0.1 <= trio.current_time() - started <= RING_TIMEOUT + 1.0
    await app.reply(cancel, 200, to=gw.udp4)
    await app.reply(ringing, 487, to_tag="app", to=gw.udp4)
    await app.expect_request("ACK")
    carried = await answer(cheap, gw)  # +86139...: the cheap trunk takes it
    assert carried.uri.startswith(f"sip:{NUMBERS['1002']}@")
    ok = await answered(caller, invite)
    await hang_up(caller, invite, ok, cheap)
    [cdr] = await cdrs(gw, 1)
    assert (cdr.route, cdr.callee, cdr.trunk) == ("fallback", NUMBERS["1002"], "cheap")


@pytest.mark.parametrize("status", [408, 480, 503])
async def test_app_unreachable_falls_back_at_once(
    gw: GatewayUnderTest, caller: UdpPeer, app: UdpPeer, cheap: UdpPeer, status: int
) -> None:
    invite = await place(caller, "1002")
    await reject(app, gw, status)
    await reject(cheap, gw, 486)
    await refused(caller, invite, 486)


@pytest.mark.parametrize("status", [486, 603])
async def test_app_busy_or_declining_is_not_called_on_its_number(
    gw: GatewayUnderTest, caller: UdpPeer, app: UdpPeer, cheap: UdpPeer, status: int
) -> None:
    invite = await place(caller, "1002")
    await reject(app, gw, status)
    await refused(caller, invite, status)
    await cheap.expect_silence(0.5)
    [cdr] = await cdrs(gw, 1)
    assert (cdr.route, cdr.callee) == ("app", "1002")
