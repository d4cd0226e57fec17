"""Hostile and malformed SIP against the running gateway over real sockets (DESIGN rule 6).

Every input gets the answer the code promises (a 4xx/5xx with its reason phrase, or nothing
when no response can be addressed), and after each one the gateway still answers OPTIONS.
Digest authentication (RFC 3261 22, RFC 7616) is checked from the outside: challenges,
403 for wrong secrets, stale nonces and replayed nonce counts, SHA-256, and that nothing an
unauthenticated caller sends reaches the carrier trunk. Authenticated callers with a broken
Contact or unusable SDP, and a carrier answering without a usable dialog, get a clear answer
and leave the gateway serving. A flood of unauthenticated INVITEs must leave no
per-challenge state in the digest server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from gateway.calls.b2bua import ALLOW
from gateway.calls.limits import RateLimiter
from gateway.sip.message import Request, Response, make_response
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    Message,
    TcpPeer,
    UdpPeer,
    ack_for_failure,
    authorize,
    challenge_params,
    in_dialog,
    sdp_offer,
)

TRUNK_NUMBER = "+4930123456"


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    # IPv4 is enough here; a short nonce lifetime lets the stale-nonce test run in a second.
    return GatewaySettings(nonce_ttl=1.0, ipv6=False)


@pytest.fixture
async def peer(gw: GatewayUnderTest) -> AsyncIterator[UdpPeer]:
    client = await UdpPeer.open(gw.udp4)
    try:
        yield client
    finally:
        client.close()


async def assert_alive(peer: UdpPeer) -> None:
    response = await peer.options()
    assert (response.status, response.reason) == (200, "OK")


def wire(request: Request) -> str:
    """The request as text, so a test can break it in ways the builder refuses to."""
    return request.to_bytes().decode()


def without(text: str, header: str) -> str:
    lines = text.split("\r\n")
    return "\r\n".join(line for line in lines if not line.startswith(f"{header}:"))


async def response_for(peer: UdpPeer, call_id: str, timeout: float = 2.0) -> Response:
    def matches(message: Message) -> bool:
        return isinstance(message, Response) and message.call_id == call_id

    found = await peer.expect(matches, f"response for {call_id}", timeout)
    assert isinstance(found, Response)
    return found


# ---- malformed input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n",
        b"\x00\xff\xfe garbage \x01\x02" * 20,
        b"hello there\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",  # a response with no transaction and no headers
        b"INVITE nocolon SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx\r\n\r\n",
    ],
    ids=["empty", "lone-crlf", "binary", "text", "bare-response", "bad-request-line"],
)
async def test_garbage_is_dropped(gw: GatewayUnderTest, peer: UdpPeer, data: bytes) -> None:
    await peer.send_bytes(data)
    await peer.expect_silence(0.3)
    await assert_alive(peer)


async def test_crlf_keepalive_over_udp_gets_pong(peer: UdpPeer) -> None:
    await peer.send_bytes(b"\r\n\r\n")
    assert await peer.receive_datagram(2.0) == b"\r\n"  # RFC 5626 3.5.1
    await assert_alive(peer)


@pytest.mark.parametrize("header", ["Call-ID", "From", "To", "CSeq"])
async def test_missing_mandatory_header_gets_400_naming_it(peer: UdpPeer, header: str) -> None:
    # The Via is enough to address the 400 and for the client to match it (RFC 3261 18.2.2,
    # 17.1.3); the answer copies what the request had, so it is read here as raw bytes.
    request = peer.request("OPTIONS")
    await peer.send_bytes(without(wire(request), header).encode())
    answer = await peer.receive_datagram(2.0)
    assert answer is not None
    assert answer.startswith(f"SIP/2.0 400 Missing header: {header}\r\n".encode())
    assert f"branch={request.top_via.branch}".encode() in answer
    await assert_alive(peer)


async def test_missing_via_cannot_be_answered(gw: GatewayUnderTest, peer: UdpPeer) -> None:
    before = gw.running.endpoint.stats.dropped_unaddressable
    await peer.send_bytes(without(wire(peer.request("OPTIONS")), "Via").encode())
    await peer.expect_silence(0.3)
    assert gw.running.endpoint.stats.dropped_unaddressable == before + 1
    await assert_alive(peer)


async def test_missing_max_forwards_is_tolerated(peer: UdpPeer) -> None:
    request = peer.request("OPTIONS")
    await peer.send_bytes(without(wire(request), "Max-Forwards").encode())
    response = await response_for(peer, request.call_id)
    assert (response.status, response.reason) == (200, "OK")


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("CSeq: 1 OPTIONS", "CSeq: 1 INVITE", "CSeq method mismatch"),
        ("Max-Forwards: 70", "Max-Forwards: seventy", "Bad Max-Forwards"),
        ("Content-Length: 0", "Content-Length: 40", "Content-Length larger than body"),
        ("Content-Length: 0", "Content-Length: -1", "Bad Content-Length"),
        ("SIP/2.0\r\n", "SIP/3.0\r\n", "Unsupported SIP version"),
        ("Max-Forwards: 70", "Max-Forwards 70", "Header without colon"),
    ],
    ids=["cseq-mismatch", "max-forwards", "short-body", "negative-length", "version", "colon"],
)
async def test_malformed_request_gets_400_with_reason(
    gw: GatewayUnderTest, peer: UdpPeer, old: str, new: str, reason: str
) -> None:
    peer.cseq = 0
    request = peer.request("OPTIONS")
    text = wire(request)
    assert old in text
    before = gw.running.endpoint.stats.malformed
    await peer.send_bytes(text.replace(old, new, 1).encode())
    response = await response_for(peer, request.call_id)
    assert (response.status, response.reason) == (400, reason)
    top = response.top_via
    assert top.params["received"] == "127.0.0.1"
    assert top.params["rport"] == str(peer.local[1])
    assert gw.running.endpoint.stats.malformed == before + 1
    await assert_alive(peer)


async def test_bytes_after_the_body_are_ignored_over_udp(peer: UdpPeer) -> None:
    request = peer.request("OPTIONS", body=b"v=0\r\n", content_type="application/sdp")
    await peer.send_bytes(request.to_bytes() + b"INVITE sip:evil SIP/2.0\r\n\r\ntrailing junk")
    response = await response_for(peer, request.call_id)
    assert (response.status, response.reason) == (200, "OK")
    await peer.expect_silence(0.2)  # one answer, the trailing bytes were no second request


async def test_oversized_header_in_a_maximal_datagram_gets_400(
    gw: GatewayUnderTest, peer: UdpPeer
) -> None:
    request = peer.request("OPTIONS")
    head, _sep, _rest = wire(request).partition("\r\n\r\n")
    filler = 65507 - len(head) - len("\r\nX-Filler: \r\n\r\n")  # the largest IPv4 UDP payload
    data = f"{head}\r\nX-Filler: {'a' * filler}\r\n\r\n".encode()
    assert len(data) == 65507
    await peer.send_bytes(data)
    response = await response_for(peer, request.call_id)
    assert (response.status, response.reason) == (400, "Header too long")
    await assert_alive(peer)


async def test_70_kib_message_over_tcp_closes_the_connection(
    gw: GatewayUnderTest, peer: UdpPeer
) -> None:
    stream = await TcpPeer.connect(gw.tcp4)
    request = stream.request("MESSAGE", to_user="1002", body=b"x" * 70 * 1024)
    request.headers.set("Content-Type", "text/plain")
    before = gw.running.endpoint.stats.dropped_unaddressable
    await stream.send_bytes(request.to_bytes())
    await stream.expect_closed(3.0)  # "Message too large": no 400 can be framed back
    assert stream.backlog == []
    assert gw.running.endpoint.stats.dropped_unaddressable == before + 1
    await assert_alive(peer)


async def test_forty_vias_parse_and_are_answered(peer: UdpPeer) -> None:
    request = peer.request("OPTIONS")
    for hop in range(39):
        request.headers.add("Via", f"SIP/2.0/UDP 198.51.100.{hop + 1}:5060;branch=z9hG4bK{hop}x")
    response = await peer.transact(request)
    assert (response.status, response.reason) == (200, "OK")
    assert len(response.vias) == 40
    assert [via.host for via in response.vias[1:]] == [f"198.51.100.{n + 1}" for n in range(39)]


async def test_unknown_method_gets_501(peer: UdpPeer) -> None:
    response = await peer.transact(peer.request("FOO"))
    assert (response.status, response.reason) == (501, "Not Implemented")
    await assert_alive(peer)


async def test_subscribe_gets_405_with_allow(peer: UdpPeer) -> None:
    request = peer.request("SUBSCRIBE", to_user="1002", extra=[("Event", "presence")])
    response = await peer.transact(request)
    assert (response.status, response.reason) == (405, "Method Not Allowed")
    assert response.headers.get("Allow") == ALLOW
    await assert_alive(peer)


async def test_invite_with_max_forwards_zero_gets_483(gw: GatewayUnderTest, peer: UdpPeer) -> None:
    invite = peer.invite("1001", TRUNK_NUMBER)
    invite.headers.set("Max-Forwards", "0")
    response = await peer.transact(invite)
    assert (response.status, response.reason) == (483, "Too Many Hops")
    await assert_alive(peer)


@pytest.mark.parametrize(
    ("uri", "status", "reason"),
    [
        ("sip:@@", 400, "Bad Request-URI: Empty user part in URI"),
        ("sip:1002@[::1", 400, "Bad Request-URI: Unterminated IPv6 reference in host"),
        ("sip:1002@host:99999", 400, "Bad Request-URI: Bad port in URI"),
        ("http://example.com/", 416, "Bad Request-URI: Unsupported URI scheme: http"),
    ],
    ids=["empty-user", "ipv6", "port", "scheme"],
)
async def test_bad_request_uri(peer: UdpPeer, uri: str, status: int, reason: str) -> None:
    response = await peer.transact(peer.request("OPTIONS", uri))
    assert (response.status, response.reason) == (status, reason)
    await assert_alive(peer)


@pytest.mark.parametrize("method", ["BYE", "UPDATE", "INFO", "PRACK"])
@pytest.mark.parametrize("to_tag", [True, False], ids=["unknown-tag", "no-tag"])
async def test_in_dialog_request_for_unknown_dialog_gets_481(
    peer: UdpPeer, method: str, to_tag: bool
) -> None:
    request = peer.request(method, to_user="1002")
    if to_tag:
        request.headers.set("To", f"{request.headers.get('To')};tag=nosuchdialog")
    response = await peer.transact(request)
    # Without a To tag these match no dialog either (RFC 3261 15.1.2): 481, not 405.
    assert (response.status, response.reason) == (481, "Call/Transaction Does Not Exist")
    await assert_alive(peer)


async def test_cancel_without_invite_gets_481(peer: UdpPeer) -> None:
    response = await peer.transact(peer.request("CANCEL", to_user="1002"))
    assert (response.status, response.reason) == (481, "Call/Transaction Does Not Exist")
    await assert_alive(peer)


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        (
            "From",
            '"unterminated <sip:1001@127.0.0.1>;tag=1',
            "Bad Header: Unterminated quoted string",
        ),
        ("To", "<<<", "Bad Header: Missing '>' in name-addr"),
    ],
    ids=["from", "to"],
)
@pytest.mark.parametrize("method", ["OPTIONS", "INVITE"])
async def test_unparsable_from_or_to_gets_400_and_leaves_no_transaction(
    gw: GatewayUnderTest, peer: UdpPeer, method: str, header: str, value: str, reason: str
) -> None:
    layer = gw.running.endpoint.layer
    before = len(layer)
    request = peer.request(method, to_user="1002")
    request.headers.set(header, value)
    await peer.send(request)
    response = await response_for(peer, request.call_id)
    assert (response.status, response.reason) == (400, reason)
    assert response.top_via.params["rport"] == str(peer.local[1])
    assert len(layer) == before  # refused before a transaction existed: nothing lingers
    await peer.expect_silence(0.4)  # and no "100 Trying" from an orphaned INVITE transaction
    await assert_alive(peer)


async def test_unparsable_via_is_dropped(gw: GatewayUnderTest, peer: UdpPeer) -> None:
    before = gw.running.endpoint.stats.dropped_unaddressable
    request = peer.request("OPTIONS")
    request.headers.set("Via", "SIP/2.0/UDP")
    await peer.send(request)
    await peer.expect_silence(0.3)  # nowhere to send a 400 to
    assert gw.running.endpoint.stats.dropped_unaddressable == before + 1
    await assert_alive(peer)


# ---- authentication ----------------------------------------------------------------------


async def test_invite_without_credentials_is_challenged_and_never_reaches_the_trunk(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    response = await peer.transact(peer.invite("1001", TRUNK_NUMBER))
    assert (response.status, response.reason) == (407, "Proxy Authentication Required")
    assert "WWW-Authenticate" not in response.headers
    challenges = challenge_params(response)
    assert [c["algorithm"] for c in challenges] == ["MD5", "SHA-256"]
    for challenge in challenges:
        assert challenge["realm"] == "edgegw"
        assert challenge["qop"] == "auth"
        assert "stale" not in challenge
    assert challenges[0]["nonce"] == challenges[1]["nonce"]
    await trunk.expect_silence(1.0)
    assert gw.running.core.calls == {}
    await assert_alive(peer)


async def test_wrong_password_gets_403(gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer) -> None:
    invite = peer.invite("1001", TRUNK_NUMBER)
    challenge = await peer.transact(invite)
    retry = authorize(
        invite,
        challenge,
        username="1001",
        password="not-the-password",
        transport=peer.transport,
        local=peer.local,
    )
    response = await peer.transact(retry)
    assert (response.status, response.reason) == (403, "Forbidden")
    assert "Proxy-Authenticate" not in response.headers
    assert gw.running.core.stats.auth_failures == 1
    await trunk.expect_silence(0.5)
    await assert_alive(peer)


async def test_unknown_user_gets_403(peer: UdpPeer, trunk: UdpPeer) -> None:
    invite = peer.invite("9999", TRUNK_NUMBER)
    challenge = await peer.transact(invite)
    retry = authorize(
        invite,
        challenge,
        username="9999",
        password="whatever",
        transport=peer.transport,
        local=peer.local,
    )
    response = await peer.transact(retry)
    assert (response.status, response.reason) == (403, "Forbidden")
    await trunk.expect_silence(0.5)
    await assert_alive(peer)


async def test_replayed_nonce_count_is_rechallenged_as_stale(
    gw: GatewayUnderTest, peer: UdpPeer
) -> None:
    first = peer.invite("1001", "nobody")
    challenge = await peer.transact(first)
    accepted = peer.authorize(first, challenge, "1001")
    response = await peer.transact(accepted)
    # Authenticated: no such user and not a number, so the router answers 404.
    assert (response.status, response.reason) == (404, "Not Found")
    assert gw.running.core.digest.replay_entries == 1

    second = peer.invite("1001", "nobody")
    assert second.call_id != first.call_id
    second.headers.set("CSeq", "2 INVITE")
    credentials = accepted.headers.get("Proxy-Authorization")
    assert credentials is not None
    second.headers.set("Proxy-Authorization", credentials)  # same nonce, same nc
    response = await peer.transact(second)
    assert (response.status, response.reason) == (407, "Proxy Authentication Required")
    assert [c.get("stale") for c in challenge_params(response)] == ["true", "true"]
    assert gw.running.core.stats.auth_failures == 1
    await assert_alive(peer)


async def test_expired_nonce_is_rechallenged_as_stale(gw: GatewayUnderTest, peer: UdpPeer) -> None:
    invite = peer.invite("1001", "nobody")
    challenge = await peer.transact(invite)
    await trio.sleep(gw.running.config.sip.nonce_ttl + 0.3)
    late = peer.authorize(invite, challenge, "1001")
    response = await peer.transact(late)
    assert (response.status, response.reason) == (407, "Proxy Authentication Required")
    assert [c.get("stale") for c in challenge_params(response)] == ["true", "true"]
    # The UA answers the fresh challenge without asking its user again, and gets through.
    fresh = peer.authorize(late, response, "1001")
    response = await peer.transact(fresh)
    assert (response.status, response.reason) == (404, "Not Found")
    await assert_alive(peer)


async def test_sha256_answer_is_accepted_and_reaches_the_trunk(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    invite = peer.invite("1001", TRUNK_NUMBER)
    challenge = await peer.transact(invite)
    retry = peer.authorize(invite, challenge, "1001", algorithm="SHA-256")
    assert "algorithm=SHA-256" in (retry.headers.get("Proxy-Authorization") or "")
    await peer.send(retry)
    carried = await trunk.expect_request("INVITE")
    assert carried.uri == f"sip:{TRUNK_NUMBER}@127.0.0.1:{trunk.local[1]}"
    assert "Proxy-Authorization" not in carried.headers  # credentials stay on the app leg
    await trunk.reply(carried, 486, to_tag="carrier", to=gw.udp4)
    response = await peer.expect_response(retry)
    assert (response.status, response.reason) == (486, "Busy Here")
    await peer.send(ack_for_failure(retry, response))
    ack = await trunk.expect_request("ACK")  # the gateway's ACK to the carrier's 486
    assert ack.call_id == carried.call_id
    await assert_alive(peer)


async def test_register_without_credentials_gets_401(peer: UdpPeer) -> None:
    response = await peer.transact(peer.request("REGISTER", to_user="1001", from_user="1001"))
    assert (response.status, response.reason) == (401, "Unauthorized")
    assert "Proxy-Authenticate" not in response.headers
    assert [c["algorithm"] for c in challenge_params(response)] == ["MD5", "SHA-256"]
    await assert_alive(peer)


async def test_register_for_another_users_aor_gets_403(gw: GatewayUnderTest, peer: UdpPeer) -> None:
    request = peer.request("REGISTER", peer.request("OPTIONS").uri, to_user="1002")
    response = await peer.with_auth(request, "1001")
    assert (response.status, response.reason) == (403, "Not Allowed To Register This Address")
    assert gw.running.registrar.bindings("1002") == []
    await assert_alive(peer)


async def test_register_with_malformed_contact_gets_400(
    gw: GatewayUnderTest, peer: UdpPeer
) -> None:
    request = peer.request(
        "REGISTER",
        f"sip:{peer.domain}",
        to_user="1001",
        contact='<sip:1001@198.51.100.1;x="oops>',
    )
    response = await peer.with_auth(request, "1001")
    assert (response.status, response.reason) == (400, "Bad Contact: Illegal character in URI")
    assert gw.running.registrar.bindings("1001") == []
    await assert_alive(peer)


@pytest.mark.parametrize(
    ("contact", "reason"),
    [
        ('<sip:1001@198.51.100.1;x="oops>', "Bad Contact header: Illegal character in URI"),
        (None, "INVITE has no Contact"),
    ],
    ids=["malformed", "missing"],
)
async def test_authenticated_invite_without_usable_contact_gets_400(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer, contact: str | None, reason: str
) -> None:
    invite = peer.invite("1001", TRUNK_NUMBER)
    if contact is None:
        invite.headers.remove("Contact")
    else:
        invite.headers.set("Contact", contact)
    response = await peer.with_auth(invite, "1001")
    assert (response.status, response.reason) == (400, reason)
    assert gw.running.core.calls == {}
    await trunk.expect_silence(0.3)  # refused before anyone was called
    await assert_alive(peer)


@pytest.mark.parametrize(
    ("old", "new"),
    [("IN IP4 127.0.0.1", "IN IP6 ::1"), ("IN IP4 127.0.0.1", "IN IP4 media.example.com")],
    ids=["ipv6-on-ipv4-relay", "host-name"],
)
async def test_offer_with_unusable_media_address_gets_488(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer, old: str, new: str
) -> None:
    invite = peer.invite("1001", TRUNK_NUMBER)
    invite.body = invite.body.replace(old.encode(), new.encode())
    response = await peer.with_auth(invite, "1001")
    assert (response.status, response.reason) == (488, "Unusable Media Address")
    await trunk.expect_silence(0.3)
    cdrs = await gw.running.store.list_cdrs()
    assert [(c.disposition, c.end_reason, c.sip_status) for c in cdrs] == [
        ("rejected", "bad-sdp", 488)
    ]
    await assert_alive(peer)


async def call_the_trunk(peer: UdpPeer, trunk: UdpPeer) -> tuple[Request, Request]:
    """An authenticated INVITE from 1001 to the trunk: (the caller's INVITE, what arrived)."""
    invite = peer.invite("1001", TRUNK_NUMBER)
    challenge = await peer.transact(invite)
    invite = peer.authorize(invite, challenge, "1001")
    await peer.send(invite)
    return invite, await trunk.expect_request("INVITE")


@pytest.mark.parametrize(
    ("header", "value"),
    [("Contact", None), ("Contact", "<<bad"), ("Record-Route", "<sip:a b>")],
    ids=["no-contact", "bad-contact", "bad-record-route"],
)
async def test_carrier_answer_without_usable_dialog_is_refused(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer, header: str, value: str | None
) -> None:
    invite, carried = await call_the_trunk(peer, trunk)
    answer = make_response(carried, 200, to_tag="carrier")
    if value is not None:
        answer.headers.set(header, value)
    answer.headers.set("Content-Type", "application/sdp")
    answer.body = sdp_offer("127.0.0.1", 43000)
    await trunk.send(answer, gw.udp4)
    response = await peer.expect_response(invite)
    assert (response.status, response.reason) == (502, "Unusable Answer From Callee")
    await peer.send(ack_for_failure(invite, response))
    await assert_alive(peer)
    assert gw.running.core.calls == {}


async def test_carrier_answer_with_bad_session_expires_is_tolerated(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    invite, carried = await call_the_trunk(peer, trunk)
    contact = f"<sip:carrier@127.0.0.1:{trunk.local[1]}>"
    answer = make_response(carried, 200, to_tag="carrier")
    answer.headers.set("Contact", contact)
    answer.headers.set("Session-Expires", "soon")
    answer.headers.set("Content-Type", "application/sdp")
    answer.body = sdp_offer("127.0.0.1", 43000)
    await trunk.send(answer, gw.udp4)
    response = await peer.expect_response(invite)
    assert (response.status, response.reason) == (200, "OK")
    [call] = gw.running.core.calls.values()
    assert call.b.timer is not None and call.b.timer.we_refresh  # read as "no session timer"
    await peer.send(
        in_dialog(invite, response, "ACK", invite.cseq.seq, transport="UDP", local=peer.local)
    )
    await trunk.expect_request("ACK")
    bye = in_dialog(invite, response, "BYE", invite.cseq.seq + 1, transport="UDP", local=peer.local)
    assert (await peer.transact(bye)).status == 200
    carried_bye = await trunk.expect_request("BYE")
    await trunk.reply(carried_bye, 200, to=gw.udp4)
    await assert_alive(peer)


# ---- flood -------------------------------------------------------------------------------

FLOOD = 2000
WINDOW = 200


async def test_unauthenticated_invite_flood(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    running = gw.running
    received_before = running.endpoint.stats.received
    datagrams = [peer.invite("1001", TRUNK_NUMBER).to_bytes() for _ in range(FLOOD)]
    outstanding = trio.Semaphore(WINDOW)
    answered: dict[str, int] = {}

    async def send_all() -> None:
        for data in datagrams:
            await outstanding.acquire()
            await peer.send_bytes(data)

    async def receive_all() -> None:
        while len(answered) < FLOOD:
            item = await peer.receive(5.0)
            if item is None:
                raise AssertionError("the gateway stopped answering the flood")
            message = item[0]
            if isinstance(message, Response) and message.call_id not in answered:
                answered[message.call_id] = message.status
                outstanding.release()

    started = trio.current_time()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            nursery.start_soon(receive_all)
    elapsed = trio.current_time() - started
    print(f"{FLOOD} unauthenticated INVITEs answered in {elapsed:.2f} s")

    assert set(answered.values()) == {407}
    assert running.core.stats.auth_challenges == FLOOD
    assert running.core.stats.auth_failures == 0
    assert running.core.stats.calls_started == 0
    assert running.endpoint.stats.received - received_before >= FLOOD
    assert running.endpoint.stats.sent >= FLOOD
    assert running.endpoint.stats.malformed == 0
    assert running.core.digest.replay_entries == 0  # challenges cost no memory
    assert running.core.calls == {}
    # The 407s go out statelessly: no INVITE transaction is left to retransmit them
    # until Timer H, so a flood from forged sources is not amplified.
    assert len(running.endpoint.layer) <= 5
    await trunk.expect_silence(0.3)
    await assert_alive(await UdpPeer.open(gw.udp4))


async def test_call_rate_limit_per_account_stops_attempts_before_the_trunk(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    # Two call attempts per second for this test (the config's limit is sized for load tests).
    gw.running.core.attempts = RateLimiter(rate=2.0)
    for _ in range(2):
        invite = peer.invite("1001", TRUNK_NUMBER)
        retry = peer.authorize(invite, await peer.transact(invite), "1001")
        await peer.send(retry)
        carried = await trunk.expect_request("INVITE")
        await trunk.reply(carried, 486, to_tag="carrier", to=gw.udp4)
        busy = await peer.expect_response(retry)
        assert busy.status == 486
        await peer.send(ack_for_failure(retry, busy))
        await trunk.expect_request("ACK")
    invite = peer.invite("1001", TRUNK_NUMBER)
    retry = peer.authorize(invite, await peer.transact(invite), "1001")
    refused = await peer.transact(retry)
    assert (refused.status, refused.reason) == (503, "Call Rate Limit Exceeded")
    assert refused.headers.get("Retry-After") == "1"
    await trunk.expect_silence(0.3)
    assert gw.running.core.stats.calls_rate_limited == 1
