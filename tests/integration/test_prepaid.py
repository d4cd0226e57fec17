"""Prepaid calls end when the credit does, over real SIP (issue 4, money).

1001 has 1000.00 (the test config). A retail tariff makes +86138 cost 20000.00 a
minute in 1-second increments (333.33... a second), so 1000.00 buys exactly 3 s; +86139
costs 10000.00 a minute (6 s for the balance). The carrier is a socket of the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import trio

from gateway.sip.message import Request, Response
from gateway.store.model import Cdr
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    ack_for_failure,
    in_dialog,
    sdp_offer,
)

TARIFFS = """
[[tariffs]]
prefix = "86138"
per_minute = "20000.00"
billing_increment = [1, 1]

[[tariffs]]
prefix = "86139"
per_minute = "10000.00"
billing_increment = [1, 1]
"""


@pytest.fixture
async def primary() -> AsyncIterator[UdpPeer]:
    """A cheaper carrier for +86139 that the failover test makes refuse with 503."""
    peer = await UdpPeer.open(("127.0.0.1", 9), host="127.0.0.1")
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def gateway_settings(primary: UdpPeer) -> GatewaySettings:
    trunk = f"""
[[trunks]]
name = "primary"
host = "127.0.0.1"
port = {primary.local[1]}
prefixes = ["86139"]
"""
    return GatewaySettings(ipv6=False, extra_toml=TARIFFS + trunk)


async def place(peer: UdpPeer, to_user: str) -> Request:
    invite = peer.invite("1001", to_user)
    challenge = await peer.transact(invite)
    invite = peer.authorize(invite, challenge, "1001")
    await peer.send(invite)
    return invite


async def answer(trunk: UdpPeer, gw: GatewayUnderTest, tag: str) -> Request:
    invite = await trunk.expect_request("INVITE")
    contact = f"<sip:carrier@127.0.0.1:{trunk.local[1]}>"
    body = sdp_offer("127.0.0.1", 41000)
    await trunk.reply(invite, 200, to_tag=tag, body=body, contact=contact, to=gw.udp4)
    await trunk.expect_request("ACK", call_id=invite.call_id)
    return invite


async def answered(caller: UdpPeer, invite: Request) -> Response:
    ok = await caller.expect_response(invite)
    assert ok.status == 200, f"{ok.status} {ok.reason}"
    ack = in_dialog(invite, ok, "ACK", invite.cseq.seq, transport="UDP", local=caller.local)
    await caller.send(ack)
    return ok


async def cdrs(gw: GatewayUnderTest, count: int) -> list[Cdr]:
    with trio.fail_after(15):
        while len(found := await gw.running.store.list_cdrs()) < count:
            await trio.sleep(0.05)
    return found


async def test_the_call_ends_when_the_balance_is_spent_and_the_next_is_refused(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    caller = await UdpPeer.open(gw.udp4)
    invite = await place(caller, "+8613800138000")
    carried = await answer(trunk, gw, "up")
    await answered(caller, invite)
    started = trio.current_time()
    with trio.fail_after(6):
        bye = await trunk.expect_request("BYE", call_id=carried.call_id, timeout=6)
    held = trio.current_time() - started
    assert 2.9 <= held <= 3.6, held
    assert "Credit Exhausted" in (bye.headers.get("Reason") or "")
    await trunk.reply(bye, 200, to=gw.udp4)
    to_caller = await caller.expect_request("BYE")
    await caller.reply(to_caller, 200, to=gw.udp4)
    [cdr] = await cdrs(gw, 1)
    assert (cdr.payer, cdr.billable_seconds, cdr.cost) == ("subscriber:1001", 3, "1000.00")
    assert cdr.end_reason == "credit-exhausted"
    account = await gw.running.store.get_account("subscriber", "1001")
    assert account is not None and account.balance == "0.00"
    [row] = [e for e in await gw.running.store.ledger("subscriber", "1001") if e.reason == "call"]
    assert (row.amount, row.call_id, row.balance_after) == ("-1000.00", cdr.id, "0.00")
    # Nothing left: the next paid call is refused and never reaches the carrier.
    again = await place(caller, "+8613800138001")
    refused = await caller.expect_response(again)
    assert (refused.status, refused.reason) == (403, "Insufficient Balance")
    await caller.send(ack_for_failure(again, refused))
    await trunk.expect_silence(0.5)
    caller.close()


async def refuse(carrier: UdpPeer, gw: GatewayUnderTest) -> None:
    invite = await carrier.expect_request("INVITE")
    await carrier.reply(invite, 503, to_tag="full", to=gw.udp4)
    await carrier.expect_request("ACK")


async def test_two_calls_at_once_never_overdraw(
    gw: GatewayUnderTest, trunk: UdpPeer, primary: UdpPeer
) -> None:
    caller = await UdpPeer.open(gw.udp4)
    first = await place(caller, "+8613900139000")
    await refuse(primary, gw)
    await answer(trunk, gw, "one")
    await answered(caller, first)
    second = await place(caller, "+8613900139001")
    await refuse(primary, gw)
    await answer(trunk, gw, "two")
    await answered(caller, second)
    with trio.fail_after(10):
        for _ in range(2):
            bye = await trunk.expect_request("BYE", timeout=10)
            await trunk.reply(bye, 200, to=gw.udp4)
    records = await cdrs(gw, 2)
    spent = sum(Decimal(c.cost) for c in records)
    assert spent <= Decimal("1000.00")
    assert sum(c.billable_seconds for c in records) <= 6
    account = await gw.running.store.get_account("subscriber", "1001")
    assert account is not None and Decimal(account.balance) == Decimal("1000.00") - spent
    assert Decimal(account.balance) >= 0
    caller.close()


async def test_a_call_that_failed_over_is_charged_once(
    gw: GatewayUnderTest, trunk: UdpPeer, primary: UdpPeer
) -> None:
    caller = await UdpPeer.open(gw.udp4)
    invite = await place(caller, "+8613900139000")
    await refuse(primary, gw)  # the first trunk's reservation goes back
    carried = await answer(trunk, gw, "up")
    ok = await answered(caller, invite)
    await trio.sleep(1.0)
    bye = in_dialog(invite, ok, "BYE", invite.cseq.seq + 1, transport="UDP", local=caller.local)
    await caller.send(bye)
    to_carrier = await trunk.expect_request("BYE", call_id=carried.call_id)
    await trunk.reply(to_carrier, 200, to=gw.udp4)
    [cdr] = await cdrs(gw, 1)
    assert cdr.trunks_tried == ["primary", "test-carrier"]
    charges = [e for e in await gw.running.store.ledger("subscriber", "1001") if e.reason == "call"]
    assert [(e.call_id, e.amount) for e in charges] == [(cdr.id, f"-{cdr.cost}")]
    assert cdr.billable_seconds in (1, 2)
    caller.close()
