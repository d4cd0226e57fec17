"""The gateway's SIP transports and registrar over real sockets.

UDP and TCP on IPv4 and IPv6 loopback; responses routed by RFC 3261 18.2.2 with RFC 3581
received/rport; TCP framing by Content-Length (RFC 3261 18.3), CRLF keep-alives (RFC 5626
3.5.1), framing errors and idle connections closing. A registration over TCP is reached over
that same connection (RFC 5626 5.3, RFC 5923) by a call from another user, answered, ACKed
and hung up, with its CDR written. Registrar behaviour (RFC 3261 10.3): refresh, several
contacts, removal of one or all, 423 with Min-Expires, and bindings that survive a restart.
A binding whose connection is gone fails a call at once (RFC 5626 430, told as 480), and a
flow of an earlier run never matches a connection of a later one.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.control.client import ControlClient
from gateway.sip.headers import parse_name_addr
from gateway.sip.message import Request, Response, new_call_id
from gateway.sip.sdp import parse_sdp
from gateway.transport import connections
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    Message,
    TcpPeer,
    UdpPeer,
    ack_for_failure,
    has_ipv6_loopback,
    in_dialog,
    running_gateway,
    sdp_offer,
    via_value,
)

IPV6 = has_ipv6_loopback()
FAMILIES = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(not IPV6, reason="this host has no IPv6 loopback (::1)"),
    ),
]


@pytest.fixture
async def udp(gw: GatewayUnderTest) -> AsyncIterator[UdpPeer]:
    client = await UdpPeer.open(gw.udp4)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def tcp(gw: GatewayUnderTest) -> AsyncIterator[TcpPeer]:
    client = await TcpPeer.connect(gw.tcp4)
    try:
        yield client
    finally:
        await client.aclose()


def sip_address(host: str, gw: GatewayUnderTest) -> tuple[str, int]:
    return (host, gw.sip_port)


# ---- OPTIONS on every transport and family -----------------------------------------------


@pytest.mark.parametrize("host", FAMILIES)
async def test_options_over_udp_sets_received_and_rport(gw: GatewayUnderTest, host: str) -> None:
    peer = await UdpPeer.open(sip_address(host, gw))
    try:
        response = await peer.options()
        assert (response.status, response.reason) == (200, "OK")
        top = response.top_via
        assert (top.transport, top.host, top.port) == ("UDP", host, peer.local[1])
        # RFC 3581 4: rport filled in with the source port, received with the source address.
        assert top.params["rport"] == str(peer.local[1])
        assert top.params["received"] == host
        assert "OPTIONS" in (response.headers.get("Allow") or "")

        # A sent-by that lies about the address (a NAT): the answer goes to the real source.
        request = peer.request("OPTIONS")
        fake = "203.0.113.9" if ":" not in host else "2001:db8::9"
        request.headers.set("Via", via_value("UDP", (fake, 5999)))
        response = await peer.transact(request)
        top = response.top_via
        assert (top.host, top.port) == (fake, 5999)
        assert (top.params["received"], top.params["rport"]) == (host, str(peer.local[1]))

        # Without rport (RFC 3261 18.2.2): to `received` and the port in sent-by.
        request = peer.request("OPTIONS")
        request.headers.set("Via", via_value("UDP", (fake, peer.local[1]), rport=False))
        response = await peer.transact(request)
        top = response.top_via
        assert top.params["received"] == host
        assert "rport" not in top.params
    finally:
        peer.close()


@pytest.mark.parametrize("host", FAMILIES)
async def test_options_over_tcp(gw: GatewayUnderTest, host: str) -> None:
    peer = await TcpPeer.connect(sip_address(host, gw))
    try:
        response = await peer.options()
        assert (response.status, response.reason) == (200, "OK")
        top = response.top_via
        assert (top.transport, top.host, top.port) == ("TCP", host, peer.local[1])
        # A second request rides the same connection.
        assert (await peer.options()).status == 200
        assert len(gw.running.endpoint.tcp.by_id) == 1
    finally:
        await peer.aclose()


# ---- TCP framing ----------------------------------------------------------------------------


async def test_tcp_two_requests_in_one_segment(tcp: TcpPeer) -> None:
    first, second = tcp.request("OPTIONS"), tcp.request("OPTIONS")
    await tcp.send_bytes(first.to_bytes() + second.to_bytes())
    assert (await tcp.expect_response(first)).status == 200
    assert (await tcp.expect_response(second)).status == 200


async def test_tcp_request_split_across_small_writes(tcp: TcpPeer) -> None:
    request = tcp.request("OPTIONS", body=sdp_offer("127.0.0.1", 40000))
    data = request.to_bytes()
    for offset in range(0, len(data), 7):
        await tcp.send_bytes(data[offset : offset + 7])
        await trio.sleep(0.001)  # TCP_NODELAY is on: each piece leaves as its own segment
    response = await tcp.expect_response(request)
    assert (response.status, response.reason) == (200, "OK")


async def test_tcp_crlf_keepalive_gets_a_pong(tcp: TcpPeer) -> None:
    await tcp.send_bytes(b"\r\n\r\n")
    assert await tcp.receive_raw(2.0) == b"\r\n"  # RFC 5626 3.5.1
    # A lone CRLF (a pong of ours) between messages is skipped, not a framing error.
    request = tcp.request("OPTIONS")
    await tcp.send_bytes(b"\r\n" + request.to_bytes())
    assert (await tcp.expect_response(request)).status == 200


async def test_tcp_framed_but_malformed_request_gets_400_and_keeps_the_connection(
    tcp: TcpPeer,
) -> None:
    request = tcp.request("OPTIONS")
    cseq = f"CSeq: {request.cseq.seq} "
    data = request.to_bytes().replace(f"{cseq}OPTIONS".encode(), f"{cseq}BYE".encode())
    await tcp.send_bytes(data)

    def answers(message: Message) -> bool:
        return isinstance(message, Response) and message.call_id == request.call_id

    response = await tcp.expect(answers, "400 over TCP")
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (400, "CSeq method mismatch")
    assert (await tcp.options()).status == 200  # framing was intact: the stream stays open
    assert not tcp.closed


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Content-Length: 0", "Content-Length: abc"),
        ("Content-Length: 0", "Content-Length: 0\r\nContent-Length: 5"),
        ("Content-Length: 0", "X-No-Length: 0"),
    ],
    ids=["not-a-number", "two-values", "missing"],
)
async def test_tcp_bad_content_length_closes_only_that_connection(
    gw: GatewayUnderTest, tcp: TcpPeer, old: str, new: str
) -> None:
    bystander = await TcpPeer.connect(gw.tcp4)
    try:
        assert (await bystander.options()).status == 200
        before = gw.running.endpoint.stats.malformed
        text = tcp.request("OPTIONS").to_bytes().decode()
        await tcp.send_bytes(text.replace(old, new).encode())
        await tcp.expect_closed(3.0)
        assert tcp.backlog == []  # no 400: a stream that lost its framing cannot carry one
        assert gw.running.endpoint.stats.malformed == before + 1
        assert (await bystander.options()).status == 200
        fresh = await TcpPeer.connect(gw.tcp4)
        assert (await fresh.options()).status == 200
        await fresh.aclose()
    finally:
        await bystander.aclose()


async def test_tcp_idle_connection_is_closed(short_tmp: Path, trunk: UdpPeer) -> None:
    settings = GatewaySettings(tcp_idle_timeout=1.0, ipv6=False)
    async with running_gateway(short_tmp / "var", trunk.local[1], settings) as gw:
        peer = await TcpPeer.connect(gw.tcp4)
        assert (await peer.options()).status == 200
        assert len(gw.running.endpoint.tcp.by_id) == 1
        idle = await peer.expect_closed(5.0)
        assert 0.5 <= idle <= 2.5, idle
        await trio.sleep(0.05)
        assert gw.running.endpoint.tcp.by_id == {}
        # A keep-alive counts as activity: pinging every 0.4 s keeps the connection.
        kept = await TcpPeer.connect(gw.tcp4)
        for _ in range(5):
            await kept.send_bytes(b"\r\n\r\n")
            assert await kept.receive_raw(1.0) == b"\r\n"
            await trio.sleep(0.4)
        assert (await kept.options()).status == 200
        await kept.aclose()


# ---- registration over TCP and a call back over that connection ------------------------------


def contact_expires(response: Response) -> dict[str, int]:
    """Contact URI -> expires of a REGISTER's 200 (RFC 3261 10.3 step 8)."""
    result: dict[str, int] = {}
    for value in response.headers.get_list("Contact"):
        contact = parse_name_addr(value)
        expires = contact.params.get("expires")
        assert expires is not None, value
        result[str(contact.uri)] = int(expires)
    return result


def register_request(
    peer: UdpPeer | TcpPeer,
    contacts: list[str],
    *,
    expires: int | None = None,
    call_id: str | None = None,
    user: str = "1001",
) -> Request:
    extra = [("Expires", str(expires))] if expires is not None else []
    request = peer.request(
        "REGISTER", f"sip:{peer.domain}", from_user=user, to_user=user, call_id=call_id, extra=extra
    )
    request.headers.remove("Contact")
    for contact in contacts:
        request.headers.add("Contact", contact)
    return request


async def test_call_reaches_tcp_registration_over_its_connection(
    gw: GatewayUnderTest, tcp: TcpPeer, udp: UdpPeer
) -> None:
    # The Contact names a port where nothing listens: only the connection reaches 1001.
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    contact_uri = f"sip:1001@127.0.0.1:{dead_port};transport=tcp"
    register = register_request(tcp, [f"<{contact_uri}>"], expires=600)
    challenge = await tcp.transact(register)
    assert (challenge.status, challenge.reason) == (401, "Unauthorized")
    ok = await tcp.transact(tcp.authorize(register, challenge, "1001"))
    assert (ok.status, ok.reason) == (200, "OK")
    [(uri, expires)] = contact_expires(ok).items()
    assert uri == contact_uri
    assert 595 <= expires <= 600
    [binding] = gw.running.registrar.bindings("1001")
    [connection] = gw.running.endpoint.tcp.by_id.values()
    assert connection.remote == tcp.local
    assert (binding.transport, binding.flow_id) == ("tcp", connection.conn_id)
    assert (binding.source_host, binding.source_port) == tcp.local

    # 1002 calls 1001 over UDP.
    invite = udp.invite("1002", "1001", media_port=41000)
    challenge = await udp.transact(invite)
    assert challenge.status == 407
    invite = udp.authorize(invite, challenge, "1002")
    await udp.send(invite)

    incoming = await tcp.expect_request("INVITE")
    assert incoming.uri == contact_uri
    assert incoming.top_via.transport == "TCP"
    assert incoming.call_id != invite.call_id  # a B2BUA: the legs share nothing
    offer = parse_sdp(incoming.body)
    assert offer.media[0].port != 41000  # the gateway's relay port, not the caller's
    callee_tag = "callee-tag"
    callee_contact = f"<{contact_uri}>"
    await tcp.reply(incoming, 180, to_tag=callee_tag, contact=callee_contact)
    ringing = await udp.expect_response(invite, final=False)
    assert (ringing.status, ringing.reason) == (180, "Ringing")
    await tcp.reply(
        incoming,
        200,
        to_tag=callee_tag,
        contact=callee_contact,
        body=sdp_offer("127.0.0.1", 42000),
    )

    answer = await udp.expect_response(invite)
    assert (answer.status, answer.reason) == (200, "OK")
    assert parse_sdp(answer.body).media[0].port != 42000
    ack = await tcp.expect_request("ACK", call_id=incoming.call_id)
    assert ack.uri == contact_uri
    assert ack.cseq.seq == incoming.cseq.seq
    await udp.send(
        in_dialog(invite, answer, "ACK", invite.cseq.seq, transport="UDP", local=udp.local)
    )
    await trio.sleep(0.1)
    [call] = gw.running.core.calls.values()
    assert call.record.state.value == "answered"

    bye = in_dialog(invite, answer, "BYE", invite.cseq.seq + 1, transport="UDP", local=udp.local)
    bye_ok = await udp.transact(bye)
    assert (bye_ok.status, bye_ok.reason) == (200, "OK")
    callee_bye = await tcp.expect_request("BYE", call_id=incoming.call_id)
    assert callee_bye.uri == contact_uri
    await tcp.reply(callee_bye, 200)

    cdrs = await wait_for_cdrs(gw, 1)
    [cdr] = cdrs
    assert (cdr["caller"], cdr["callee"], cdr["route"]) == ("1002", "1001", "app")
    assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "caller-bye")
    assert cdr["caller_call_id"] == invite.call_id
    assert cdr["callee_call_id"] == incoming.call_id
    assert cdr["answer"] is not None and cdr["duration"] >= 0.0
    stored = await gw.running.store.list_cdrs()
    assert [c.id for c in stored] == [cdr["id"]]
    assert gw.running.core.calls == {}


async def wait_for_cdrs(gw: GatewayUnderTest, count: int) -> list[dict[str, Any]]:
    """CDRs through the control socket (the `edgegw cdr` path), once `count` are written."""
    config = gw.running.config
    client = ControlClient(config.control_socket_path, timeout=5.0)
    with trio.fail_after(5):
        while True:
            cdrs: list[dict[str, Any]] = await trio.to_thread.run_sync(client.call, "cdr")
            if len(cdrs) >= count:
                return cdrs
            await trio.sleep(0.05)


# ---- registrar ------------------------------------------------------------------------------


async def test_registration_refresh(gw: GatewayUnderTest, udp: UdpPeer) -> None:
    call_id = new_call_id()
    contact = f"sip:1001@{udp.local[0]}:{udp.local[1]}"
    first = await udp.with_auth(
        register_request(udp, [f"<{contact}>"], expires=120, call_id=call_id), "1001"
    )
    assert first.status == 200
    assert 115 <= contact_expires(first)[contact] <= 120
    refreshed = await udp.with_auth(
        register_request(udp, [f"<{contact}>;expires=300"], call_id=call_id), "1001"
    )
    assert refreshed.status == 200
    assert list(contact_expires(refreshed)) == [contact]
    assert 295 <= contact_expires(refreshed)[contact] <= 300
    [binding] = gw.running.registrar.bindings("1001")
    assert 295 <= binding.expires_at - time.time() <= 300
    # Above max_expires is cut down to it.
    capped = await udp.with_auth(
        register_request(udp, [f"<{contact}>"], expires=99999, call_id=call_id), "1001"
    )
    assert contact_expires(capped)[contact] <= gw.running.config.sip.max_expires


async def test_several_contacts_and_removal(gw: GatewayUnderTest, udp: UdpPeer) -> None:
    c1, c2, c3 = (f"sip:1001@198.51.100.{n}:5060" for n in (1, 2, 3))
    both = await udp.with_auth(
        register_request(udp, [f"<{c1}>", f"<{c2}>;expires=200"], expires=100), "1001"
    )
    assert both.status == 200
    shown = contact_expires(both)
    assert set(shown) == {c1, c2}
    assert 95 <= shown[c1] <= 100 and 195 <= shown[c2] <= 200
    third = await udp.with_auth(register_request(udp, [f"<{c3}>"], expires=100), "1001")
    assert set(contact_expires(third)) == {c1, c2, c3}
    assert gw.running.registrar.count() == 3

    one_gone = await udp.with_auth(register_request(udp, [f"<{c2}>;expires=0"]), "1001")
    assert one_gone.status == 200
    assert set(contact_expires(one_gone)) == {c1, c3}

    query = await udp.with_auth(register_request(udp, []), "1001")
    assert (query.status, set(contact_expires(query))) == (200, {c1, c3})

    all_gone = await udp.with_auth(register_request(udp, ["*"], expires=0), "1001")
    assert all_gone.status == 200
    assert all_gone.headers.get_all("Contact") == []
    assert gw.running.registrar.bindings("1001") == []

    bad_wildcard = await udp.with_auth(register_request(udp, ["*"], expires=60), "1001")
    assert (bad_wildcard.status, bad_wildcard.reason) == (
        400,
        "Wildcard Contact needs Expires: 0 and no other Contact",
    )


async def test_expires_below_minimum_gets_423(gw: GatewayUnderTest, udp: UdpPeer) -> None:
    contact = "<sip:1001@198.51.100.1:5060>"
    too_brief = await udp.with_auth(register_request(udp, [contact], expires=30), "1001")
    assert (too_brief.status, too_brief.reason) == (423, "Interval Too Brief")
    assert too_brief.headers.get("Min-Expires") == str(gw.running.config.sip.min_expires)
    assert gw.running.registrar.bindings("1001") == []


async def test_bindings_survive_a_restart(gw: GatewayUnderTest, udp: UdpPeer) -> None:
    contact = "sip:1001@198.51.100.7:5070"
    ok = await udp.with_auth(register_request(udp, [f"<{contact}>"], expires=900), "1001")
    assert ok.status == 200
    before = gw.running.registrar.bindings("1001")
    assert len(before) == 1

    await gw.restart()

    assert gw.running.registrar.bindings("1001") == before
    query = await udp.with_auth(register_request(udp, []), "1001")
    assert query.status == 200
    assert 890 <= contact_expires(query)[contact] <= 900

    # The restored binding routes calls: 1002's INVITE reaches the address 1001 registered
    # from (this socket), and cancelling it is carried to the callee leg.
    invite = udp.invite("1002", "1001")
    challenge = await udp.transact(invite)
    retry = udp.authorize(invite, challenge, "1002")
    await udp.send(retry)
    incoming = await udp.expect_request("INVITE")
    assert incoming.uri == contact
    await udp.reply(incoming, 180, to_tag="callee")
    ringing = await udp.expect_response(retry, final=False)
    assert ringing.status == 180

    cancel = Request("CANCEL", retry.uri, retry.headers.copy())
    for name in ("Content-Type", "Contact", "Proxy-Authorization"):
        cancel.headers.remove(name)
    cancel.headers.set("CSeq", f"{retry.cseq.seq} CANCEL")
    assert (await udp.transact(cancel)).status == 200
    terminated = await udp.expect_response(retry)
    assert (terminated.status, terminated.reason) == (487, "Request Terminated")
    await udp.send(ack_for_failure(retry, terminated))

    carried = await udp.expect_request("CANCEL", call_id=incoming.call_id)
    await udp.reply(carried, 200)
    await udp.reply(incoming, 487, to_tag="callee")
    await udp.expect_request("ACK", call_id=incoming.call_id)
    [cdr] = await wait_for_cdrs(gw, 1)
    assert (cdr["disposition"], cdr["end_reason"]) == ("cancelled", "caller-cancel")


# ---- flows that are gone (RFC 5626 5.3) -----------------------------------------------------


async def register_over_tcp(tcp: TcpPeer, user: str = "1001") -> None:
    request = tcp.request("REGISTER", f"sip:{tcp.domain}", from_user=user, to_user=user)
    assert (await tcp.with_auth(request, user)).status == 200


async def test_call_to_closed_tcp_flow_fails_at_once(gw: GatewayUnderTest, udp: UdpPeer) -> None:
    tcp = await TcpPeer.connect(gw.tcp4)
    await register_over_tcp(tcp)
    await tcp.aclose()
    with trio.fail_after(2):
        while gw.running.endpoint.tcp.by_id:
            await trio.sleep(0.01)
    started = trio.current_time()
    response = await udp.with_auth(udp.invite("1002", "1001"), "1002")
    # The app behind that connection cannot be reached any other way: no 32 s Timer B wait.
    assert (response.status, response.reason) == (480, "Temporarily Unavailable")
    assert trio.current_time() - started < 1.0
    [cdr] = await wait_for_cdrs(gw, 1)
    assert (cdr["disposition"], cdr["sip_status"]) == ("rejected", 430)


async def test_tcp_flow_of_a_previous_run_never_matches_a_new_connection(
    gw: GatewayUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Number connections as a freshly started process does, before and after the restart.
    monkeypatch.setattr(connections, "_conn_ids", itertools.count(1))
    first = await TcpPeer.connect(gw.tcp4)
    await register_over_tcp(first, "1001")
    [binding] = gw.running.registrar.bindings("1001")
    await first.aclose()
    monkeypatch.setattr(connections, "_conn_ids", itertools.count(1))
    monkeypatch.setattr(connections, "_boot", "next-process", raising=False)
    await gw.restart()

    other = await TcpPeer.connect(gw.tcp4)
    assert (await other.options()).status == 200
    [connection] = gw.running.endpoint.tcp.by_id.values()
    assert gw.running.registrar.bindings("1001") == [binding]
    assert connection.conn_id != binding.flow_id
    # 1002 calls 1001: the INVITE must not arrive on 1002's own connection.
    response = await other.with_auth(other.invite("1002", "1001"), "1002")
    assert (response.status, response.reason) == (480, "Temporarily Unavailable")
    assert other.backlog == []
    await other.aclose()


# ---- forking to several devices of one subscriber ---------------------------------------------


async def test_call_forks_to_every_device_and_cancels_the_losers(
    gw: GatewayUnderTest, udp: UdpPeer
) -> None:
    phone = await UdpPeer.open(gw.udp4)
    tablet = await UdpPeer.open(gw.udp4)
    for device in (phone, tablet):
        contact = f"sip:1001@{device.local[0]}:{device.local[1]}"
        registered = await device.with_auth(register_request(device, [f"<{contact}>"]), "1001")
        assert registered.status == 200
    assert len(gw.running.registrar.bindings("1001")) == 2

    offer = udp.invite("1002", "1001")
    invite = udp.authorize(offer, await udp.transact(offer), "1002")
    await udp.send(invite)
    on_phone = await phone.expect_request("INVITE")
    on_tablet = await tablet.expect_request("INVITE")
    # One callee leg, forked: same Call-ID and From tag, a branch each (RFC 3261 16.6).
    assert on_phone.call_id == on_tablet.call_id != invite.call_id
    assert on_phone.top_via.branch != on_tablet.top_via.branch
    await phone.reply(on_phone, 180, to_tag="phone")
    await tablet.reply(on_tablet, 180, to_tag="tablet")
    assert (await udp.expect_response(invite, final=False)).status == 180

    await tablet.reply(
        on_tablet,
        200,
        to_tag="tablet",
        contact=f"<sip:1001@{tablet.local[0]}:{tablet.local[1]}>",
        body=sdp_offer("127.0.0.1", 43000),
    )
    answer = await udp.expect_response(invite)
    assert answer.status == 200
    await tablet.expect_request("ACK", call_id=on_tablet.call_id)
    cancel = await phone.expect_request("CANCEL", call_id=on_phone.call_id)
    assert cancel.top_via.branch == on_phone.top_via.branch  # the INVITE's own branch (9.1)
    await phone.reply(cancel, 200)
    await phone.reply(on_phone, 487, to_tag="phone")
    await phone.expect_request("ACK", call_id=on_phone.call_id)

    await udp.send(
        in_dialog(invite, answer, "ACK", invite.cseq.seq, transport="UDP", local=udp.local)
    )
    bye = in_dialog(invite, answer, "BYE", invite.cseq.seq + 1, transport="UDP", local=udp.local)
    assert (await udp.transact(bye)).status == 200
    tablet_bye = await tablet.expect_request("BYE", call_id=on_tablet.call_id)
    await tablet.reply(tablet_bye, 200)
    [cdr] = await wait_for_cdrs(gw, 1)
    assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "caller-bye")
