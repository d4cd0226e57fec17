"""Masked numbers end to end (issue 4, partners): a binding made through the HTTP API,
then real SIP calls to its number from either party.

Partner ``acme`` binds the app user 1001 (A) and the phone +8613800138000 (B) to a
number X of its pool. 1001 dialling X reaches B on the carrier showing X; B's phone
dialling X (a carrier call to our number) reaches 1001's app showing X; anyone else,
or X once unbound, gets 480. The partner pays.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from gateway.sip.message import Request
from gateway.store.model import Cdr
from gateway.transport.flow import hostport
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    ack_for_failure,
    sdp_offer,
)

PHONE = "+8613800138000"
POOL = ["+8617000000010", "+8617000000011"]
BROKE_POOL = "+8617100000010"


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    extra = f"""
[[partners]]
name = "acme"
api_key = "key-acme-masked"
budget = "50.00"
masked_pool = ["{POOL[0]}", "{POOL[1]}"]

[[partners]]
name = "broke"
api_key = "key-broke-masked"
budget = "0.00"
masked_pool = ["{BROKE_POOL}"]

[[tariffs]]
prefix = "86138"
per_minute = "0.10"
"""
    return GatewaySettings(ipv6=False, extra_toml=extra)


@pytest.fixture
async def api(gw: GatewayUnderTest) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://{gw.running.config.http.listen}"
    headers = {"Authorization": "Bearer key-acme-masked"}
    async with httpx.AsyncClient(base_url=base, headers=headers, trust_env=False) as client:
        yield client


async def bind(api: httpx.AsyncClient, a: str, b: str) -> dict[str, object]:
    response = await api.post("/v1/bindings", json={"a": a, "b": b, "ttl_s": 600})
    assert response.status_code == 201, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


async def app_calls(gw: GatewayUnderTest, user: str, number: str) -> tuple[UdpPeer, Request]:
    peer = await UdpPeer.open(gw.udp4)
    invite = peer.invite(user, number)
    invite = peer.authorize(invite, await peer.transact(invite), user)
    await peer.send(invite)
    return peer, invite


async def refuse(carrier: UdpPeer, gw: GatewayUnderTest) -> Request:
    request = await carrier.expect_request("INVITE")
    await carrier.reply(request, 486, to_tag="busy", to=gw.udp4)
    await carrier.expect_request("ACK")
    return request


async def cdrs(gw: GatewayUnderTest, count: int) -> list[Cdr]:
    with trio.fail_after(10):
        while len(found := await gw.running.store.list_cdrs()) < count:
            await trio.sleep(0.05)
    return found


async def test_a_dialling_x_reaches_b_showing_x_and_the_partner_pays(
    gw: GatewayUnderTest, api: httpx.AsyncClient, trunk: UdpPeer
) -> None:
    binding = await bind(api, "1001", PHONE)
    number = str(binding["number"])
    assert number in POOL
    caller, invite = await app_calls(gw, "1001", number)
    carried = await refuse(trunk, gw)
    assert carried.uri.startswith(f"sip:{PHONE}@")
    sender = carried.headers.get("From") or ""
    assert number in sender and "+8613900139001" not in sender  # B sees X, not A's number
    assert number in (carried.headers.get("P-Asserted-Identity") or "")
    response = await caller.expect_response(invite)
    assert response.status == 486
    await caller.send(ack_for_failure(invite, response))
    [cdr] = await cdrs(gw, 1)
    assert (cdr.route, cdr.partner, cdr.callee) == ("masked", "acme", PHONE)
    caller.close()


async def test_b_dialling_x_from_its_phone_reaches_a_showing_x(
    gw: GatewayUnderTest, api: httpx.AsyncClient, trunk: UdpPeer
) -> None:
    app = await UdpPeer.open(gw.udp4)
    register = app.request("REGISTER", f"sip:{app.domain}", from_user="1001", to_user="1001")
    assert (await app.with_auth(register, "1001")).status == 200
    number = str((await bind(api, "1001", PHONE))["number"])
    invite = trunk.request(
        "INVITE",
        f"sip:{number}@{hostport(gw.udp4)}",
        from_user=PHONE,
        to_user=number,
        body=sdp_offer("127.0.0.1", 42000),
    )
    await trunk.send(invite, gw.udp4)
    ringing = await app.expect_request("INVITE")
    sender = ringing.headers.get("From") or ""
    assert number in sender and PHONE not in sender  # A sees X, not B's phone
    await app.reply(ringing, 486, to_tag="busy", to=gw.udp4)
    await app.expect_request("ACK")
    response = await trunk.expect_response(invite)
    assert response.status == 486
    await trunk.send(ack_for_failure(invite, response), gw.udp4)
    app.close()


async def test_strangers_and_unbound_numbers_get_480(
    gw: GatewayUnderTest, api: httpx.AsyncClient, trunk: UdpPeer
) -> None:
    binding = await bind(api, "1001", PHONE)
    number = str(binding["number"])
    # 1002 is no party of the binding.
    stranger, invite = await app_calls(gw, "1002", number)
    response = await stranger.expect_response(invite)
    assert response.status == 480
    await stranger.send(ack_for_failure(invite, response))
    # Unbound through the API: 1001 now gets 480 too, and nothing reaches the carrier.
    deleted = await api.delete(f"/v1/bindings/{binding['id']}")
    assert deleted.status_code == 204
    caller, again = await app_calls(gw, "1001", number)
    response = await caller.expect_response(again)
    assert response.status == 480
    await caller.send(ack_for_failure(again, response))
    await trunk.expect_silence(0.3)
    stranger.close()
    caller.close()


async def test_a_partner_whose_budget_is_spent_gets_403_on_sip(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    # The API refuses such a partner new bindings (402); one made before still exists.
    store = gw.running.store
    await store.bind_masked("broke", [BROKE_POOL], "1001", PHONE, 600, time.time())
    caller, invite = await app_calls(gw, "1001", BROKE_POOL)
    response = await caller.expect_response(invite)
    assert (response.status, response.reason) == (403, "Partner Budget Spent")
    await caller.send(ack_for_failure(invite, response))
    await trunk.expect_silence(0.3)  # nothing reached a carrier
    caller.close()
