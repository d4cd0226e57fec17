"""The partner HTTP API of a running gateway, end to end: a real HTTP client, the call core
placing click-to-call calls on the carrier trunk (a SIP socket of the test), signed
callbacks to a real local receiver, masked-number bindings and budgets in the store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from gateway.sip.message import Request
from tests.integration.sipclient import GatewaySettings, GatewayUnderTest, UdpPeer, sdp_offer
from tests.partner_peers import CallbackReceiver, free_tcp_port, serve_asgi

A, B = "+8613800138000", "+8613800138001"
SECRET = "hook-secret"
HOOK_PORT = free_tcp_port()
POOL = ["+8617000000000", "+8617000000001"]


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    partners = f"""
[[partners]]
name = "acme"
api_key = "key-acme"
budget = "5.00"
masked_pool = ["{POOL[0]}", "{POOL[1]}"]
callback_url = "http://127.0.0.1:{HOOK_PORT}/hook"
callback_secret = "{SECRET}"

[[partners]]
name = "broke"
api_key = "key-broke"
budget = "0.00"
masked_pool = ["+8617100000000"]
"""
    return GatewaySettings(ipv6=False, extra_toml=partners)


@pytest.fixture
async def client(gw: GatewayUnderTest) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://{gw.running.config.http.listen}"
    headers = {"Authorization": "Bearer key-acme"}
    async with httpx.AsyncClient(base_url=base, headers=headers, trust_env=False) as opened:
        yield opened


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> CallbackReceiver:
    hook = CallbackReceiver(SECRET.encode())
    await serve_asgi(nursery, hook, HOOK_PORT)
    return hook


async def answer(trunk: UdpPeer, gw: GatewayUnderTest, port: int) -> Request:
    invite = await trunk.expect_request("INVITE")
    contact = f"<sip:carrier@127.0.0.1:{trunk.local[1]}>"
    body = sdp_offer("127.0.0.1", port)
    await trunk.reply(invite, 200, to_tag=f"t{port}", body=body, contact=contact, to=gw.udp4)
    await trunk.expect_request("ACK")
    return invite


async def state_of(client: httpx.AsyncClient, call_id: str, state: str) -> dict[str, object]:
    with trio.fail_after(5):
        while (call := (await client.get(f"/v1/calls/{call_id}")).json())["state"] != state:
            await trio.sleep(0.02)
    return dict(call)


async def test_click_to_call_through_the_api(
    gw: GatewayUnderTest,
    trunk: UdpPeer,
    client: httpx.AsyncClient,
    receiver: CallbackReceiver,
    nursery: trio.Nursery,
) -> None:
    response = await client.post("/v1/calls", json={"from": "13800138000", "to": B})
    assert response.status_code == 201, response.text
    call_id = response.json()["id"]
    to_a = await answer(trunk, gw, 41000)
    assert to_a.uri.startswith(f"sip:{A}@")
    await state_of(client, call_id, "calling_b")
    to_b = await answer(trunk, gw, 41002)
    assert to_b.uri.startswith(f"sip:{B}@")
    await state_of(client, call_id, "bridged")

    async def answer_byes() -> None:
        for _ in range(2):
            await trunk.reply(await trunk.expect_request("BYE"), 200, to=gw.udp4)

    nursery.start_soon(answer_byes)
    ended = await client.delete(f"/v1/calls/{call_id}")
    assert ended.status_code == 200
    assert (ended.json()["state"], ended.json()["cause"]) == ("ended", "api-delete")

    events = [arrival.json() for arrival in await receiver.wait_for(4)]
    assert [(e["sequence"], e["state"]) for e in events] == [
        (1, "calling_a"),
        (2, "calling_b"),
        (3, "bridged"),
        (4, "ended"),
    ]
    assert all(arrival.signature_ok for arrival in receiver.arrivals)
    with trio.fail_after(5):
        while not await gw.running.store.list_cdrs():
            await trio.sleep(0.05)
    [stored] = await gw.running.store.list_cdrs()
    assert (stored.id, stored.partner, stored.payer) == (call_id, "acme", "partner:acme")
    [cdr] = (await client.get("/v1/cdrs")).json()  # the partner's own CDRs
    assert (cdr["id"], cdr["route"], cdr["caller"], cdr["callee"]) == (
        call_id,
        "click-to-call",
        A,
        B,
    )
    other = await client.get("/v1/cdrs", headers={"Authorization": "Bearer key-broke"})
    assert other.json() == []


async def test_a_call_to_nowhere_is_refused_and_leaves_nothing(
    gw: GatewayUnderTest, trunk: UdpPeer, client: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    for body in ({"from": A, "to": "110"}, {"from": "99", "to": B}, {"from": A}):
        response = await client.post("/v1/calls", json=body)
        assert response.status_code == 400, response.text
    broke = await client.post(
        "/v1/calls", json={"from": A, "to": B}, headers={"Authorization": "Bearer key-broke"}
    )
    assert broke.status_code == 402
    unauthorized = await client.post(
        "/v1/calls", json={"from": A, "to": B}, headers={"Authorization": "Bearer nope"}
    )
    assert unauthorized.status_code == 401
    await trunk.expect_silence(0.3)
    assert not gw.running.core.calls and receiver.arrivals == []


async def test_bindings_and_metrics_of_the_running_gateway(
    gw: GatewayUnderTest, client: httpx.AsyncClient
) -> None:
    made = await client.post("/v1/bindings", json={"a": A, "b": "1002", "ttl_s": 300})
    assert made.status_code == 201, made.text
    number = made.json()["number"]
    assert number in POOL
    stored = await gw.running.store.masked_binding(number, time.time())
    assert stored is not None and (stored.a, stored.b) == (A, "1002")
    assert (await client.delete(f"/v1/bindings/{made.json()['id']}")).status_code == 204
    broke = await client.post(
        "/v1/bindings",
        json={"a": A, "b": B, "ttl_s": 300},
        headers={"Authorization": "Bearer key-broke"},
    )
    assert broke.status_code == 402
    metrics = (await client.get("/metrics", headers={})).text.splitlines()
    assert "edgegw_calls_active 0.0" in metrics
    assert any(line.startswith("edgegw_calls_started_total ") for line in metrics)
    assert any(line.startswith('edgegw_http_requests_total{method="POST"') for line in metrics)


async def test_a_spent_budget_survives_a_restart(
    gw: GatewayUnderTest, client: httpx.AsyncClient
) -> None:
    store = gw.running.store
    await store.adjust_balance("partner", "acme", "-5.00", "adjustment")
    await gw.restart()
    # The configured budget provisions the account once; a restart does not top it up.
    account = await gw.running.store.get_account("partner", "acme")
    assert account is not None and account.balance == "0.00"
    with trio.fail_after(5):
        while True:
            try:
                response = await client.post("/v1/calls", json={"from": A, "to": B})
                break
            except httpx.ConnectError:
                await trio.sleep(0.05)  # the HTTP side is still starting
    assert response.status_code == 402
