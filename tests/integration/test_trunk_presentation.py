"""What a carrier is shown of a call, over real SIP (issue 4: RFC 3325, RFC 3323, rewriting).

The ``national`` trunk takes +86138 numbers written nationally behind a tech prefix
(99), wants an account header and asserted identities; the test carrier (every other
number) takes E.164 as it is and has P-Asserted-Identity switched off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.sip.message import Request
from tests.integration.sipclient import (
    NUMBERS,
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    ack_for_failure,
)


@pytest.fixture
async def national() -> AsyncIterator[UdpPeer]:
    peer = await UdpPeer.open(("127.0.0.1", 9), host="127.0.0.1")
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def gateway_settings(national: UdpPeer) -> GatewaySettings:
    extra = f"""
[[trunks]]
name = "national"
host = "127.0.0.1"
port = {national.local[1]}
prefixes = ["86138"]
number_format = "national"
add_prefix = "99"
add_headers = ["X-Account: 42"]
"""
    return GatewaySettings(ipv6=False, extra_toml=extra)


async def carried(
    gw: GatewayUnderTest, carrier: UdpPeer, to_user: str, privacy: str | None = None
) -> Request:
    """1001 calls ``to_user``; the INVITE the carrier got (refused, so the call ends)."""
    caller = await UdpPeer.open(gw.udp4)
    invite = caller.invite("1001", to_user)
    if privacy is not None:
        invite.headers.add("Privacy", privacy)
    invite = caller.authorize(invite, await caller.transact(invite), "1001")
    await caller.send(invite)
    request = await carrier.expect_request("INVITE")
    await carrier.reply(request, 486, to_tag="busy", to=gw.udp4)
    response = await caller.expect_response(invite)
    await caller.send(ack_for_failure(invite, response))
    caller.close()
    return request


async def test_numbers_are_written_the_trunks_way_with_identity_and_headers(
    gw: GatewayUnderTest, national: UdpPeer
) -> None:
    request = await carried(gw, national, "13800138000")
    assert request.uri.startswith("sip:99013800138000@")
    assert "sip:99013800138000@" in (request.headers.get("To") or "")
    # 1001's number, +8613900139001, written nationally in From and asserted in E.164.
    assert "sip:013900139001@" in (request.headers.get("From") or "")
    asserted = request.headers.get("P-Asserted-Identity") or ""
    assert f"tel:{NUMBERS['1001']}" in asserted and "013900139001" in asserted
    assert request.headers.get("X-Account") == "42"
    assert request.headers.get("Privacy") is None


async def test_a_caller_asking_for_privacy_is_anonymous_but_asserted_to_the_carrier(
    gw: GatewayUnderTest, national: UdpPeer
) -> None:
    request = await carried(gw, national, "13800138000", privacy="id")
    sender = request.headers.get("From") or ""
    assert "anonymous@anonymous.invalid" in sender and "013900139001" not in sender
    assert f"tel:{NUMBERS['1001']}" in (request.headers.get("P-Asserted-Identity") or "")
    assert request.headers.get("Privacy") == "id"


async def test_e164_trunk_gets_the_number_as_it_is(gw: GatewayUnderTest, trunk: UdpPeer) -> None:
    request = await carried(gw, trunk, "+4420794600000")
    assert request.uri.startswith("sip:+4420794600000@")
    assert f"sip:{NUMBERS['1001']}@" in (request.headers.get("From") or "")
    assert request.headers.get("X-Account") is None
