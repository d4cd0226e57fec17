"""SIP over TLS with real sockets and Python's ssl (RFC 3261 26.2, 26.3.1; RFC 5626 5.3).

A client that checks the gateway's self-signed certificate (made under the var dir on
start) registers with digest auth and is answered with Via `SIP/2.0/TLS`; OPTIONS is
answered over IPv4 and IPv6; a call between two clients registered over TLS reaches the
callee over its own connection and says `;transport=tls` in the gateway's Contacts.
Hostile peers on the TLS port (plain SIP, random bytes, TLS 1.0/1.1 only, no handshake,
half a handshake, a reset) are cut off and counted, while a good client keeps working.
The gateway as a TLS client (toward a `transport = "tls"` destination) checks the
server's certificate, reuses its connection, and fails closed on an untrusted one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from gateway.sip.message import (
    Headers,
    Request,
    Response,
    StreamFramer,
    make_response,
    new_call_id,
    new_tag,
    parse,
)
from gateway.sip.transaction import Timers
from gateway.sip.uri import SipUri, parse_uri
from gateway.transport.certificates import ensure_self_signed
from gateway.transport.endpoint import (
    TIMEOUT,
    ClientEvent,
    ClientHandle,
    ServerHandle,
    SipEndpoint,
)
from gateway.transport.flow import Destination, Flow
from gateway.transport.tls import TlsContexts, client_context, server_context
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    TcpPeer,
    TlsPeer,
    has_ipv6_loopback,
    in_dialog,
    sdp_offer,
    tls_client_context,
)
from tests.integration.test_edge_transport import (
    contact_expires,
    register_request,
    wait_for_cdrs,
)

HANDSHAKE_TIMEOUT = 1.0
IPV6 = has_ipv6_loopback()


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    return GatewaySettings(tls=True, tls_handshake_timeout=HANDSHAKE_TIMEOUT)


@pytest.fixture
def trusting(gw: GatewayUnderTest) -> ssl.SSLContext:
    """A client context that trusts only the certificate this gateway made."""
    return tls_client_context(gw.tls_cert)


@pytest.fixture
async def tls(gw: GatewayUnderTest, trusting: ssl.SSLContext) -> AsyncIterator[TlsPeer]:
    peer = await TlsPeer.connect_tls(gw.tls4, trusting)
    try:
        yield peer
    finally:
        await peer.aclose()


def failures(gw: GatewayUnderTest) -> int:
    return gw.running.endpoint.tls.handshake_failures


async def register(peer: TlsPeer, user: str, *, sips: bool = False) -> tuple[str, Response]:
    """REGISTER `user` over `peer` with a TLS contact; (contact URI, the 200).

    `sips`: the RFC 3261 26.2 form, every URI `sips:` (RFC 5630 prefers it to transport=tls).
    """
    where = f"{user}@{peer.local[0]}:{peer.local[1]}"
    contact = f"sips:{where}" if sips else f"sip:{where};transport=tls"
    request = register_request(peer, [f"<{contact}>"], expires=600, user=user)
    if sips:
        request.uri = f"sips:{peer.domain}"
        for name in ("From", "To"):
            request.headers.set(name, (request.headers.get(name) or "").replace("<sip:", "<sips:"))
    challenge = await peer.transact(request)
    assert (challenge.status, challenge.reason) == (401, "Unauthorized")
    ok = await peer.transact(peer.authorize(request, challenge, user))
    assert (ok.status, ok.reason) == (200, "OK")
    return contact, ok


# ---- registration, OPTIONS, a call -----------------------------------------------------------


async def test_certificate_made_on_start_is_verified_and_tls12_or_later(
    gw: GatewayUnderTest, tls: TlsPeer
) -> None:
    assert tls.tls_version in ("TLSv1.2", "TLSv1.3")
    cert, key = gw.tls_cert, gw.var_dir / "tls" / "key.pem"
    assert (os.stat(key).st_mode & 0o777, os.stat(cert).st_mode & 0o777) == (0o600, 0o644)
    # The name the certificate gives as DNS, not only its IP address, is checked too.
    named = await TlsPeer.connect_tls(
        gw.tls4, tls_client_context(cert), server_hostname="localhost"
    )
    assert (await named.options()).status == 200
    await named.aclose()
    # A client that does not know the certificate refuses the gateway (no system CA signed it).
    before = failures(gw)
    with pytest.raises(trio.BrokenResourceError) as info:
        await TlsPeer.connect_tls(gw.tls4, tls_client_context(None))
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value.__cause__)
    await wait_until(lambda: failures(gw) == before + 1)


@pytest.mark.parametrize("sips", [False, True], ids=["transport-tls", "sips"])
async def test_register_over_tls_with_digest_auth(
    gw: GatewayUnderTest, tls: TlsPeer, sips: bool
) -> None:
    contact, ok = await register(tls, "1001", sips=sips)
    top = ok.top_via
    assert (top.transport, top.host, top.port) == ("TLS", "127.0.0.1", tls.local[1])
    assert top.params["rport"] == str(tls.local[1])
    [(uri, expires)] = contact_expires(ok).items()
    assert uri == contact and 595 <= expires <= 600
    [binding] = gw.running.registrar.bindings("1001")
    [connection] = gw.running.endpoint.tls.by_id.values()
    assert connection.remote == tls.local
    assert connection.flow.transport == "tls"
    assert (binding.transport, binding.flow_id) == ("tls", connection.conn_id)
    assert connection.conn_id.startswith("tls-")
    assert gw.running.endpoint.tcp.by_id == {}  # TLS has a connection table of its own


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1", id="ipv4"),
        pytest.param(
            "::1", id="ipv6", marks=pytest.mark.skipif(not IPV6, reason="no IPv6 loopback (::1)")
        ),
    ],
)
async def test_options_over_tls(gw: GatewayUnderTest, trusting: ssl.SSLContext, host: str) -> None:
    peer = await TlsPeer.connect_tls((host, gw.tls_port), trusting)
    try:
        response = await peer.options()
        assert (response.status, response.reason) == (200, "OK")
        top = response.top_via
        assert (top.transport, top.host, top.port) == ("TLS", host, peer.local[1])
        assert (await peer.options()).status == 200  # the same connection again
        assert len(gw.running.endpoint.tls.by_id) == 1
        # RFC 5626 3.5.1 keep-alive works inside TLS as over TCP.
        await peer.send_bytes(b"\r\n\r\n")
        assert await peer.receive_raw(2.0) == b"\r\n"
    finally:
        await peer.aclose()


@pytest.mark.parametrize("sips", [False, True], ids=["transport-tls", "sips"])
async def test_call_between_two_tls_clients_reaches_the_callee_over_its_connection(
    gw: GatewayUnderTest, trusting: ssl.SSLContext, sips: bool
) -> None:
    callee = await TlsPeer.connect_tls(gw.tls4, trusting)
    caller = await TlsPeer.connect_tls(gw.tls4, trusting)
    try:
        contact, _ = await register(callee, "1001", sips=sips)
        await register(caller, "1002")
        our_contact = f"sip:127.0.0.1:{gw.tls_port};transport=tls"

        invite = caller.invite("1002", "1001", media_port=41000)
        challenge = await caller.transact(invite)
        assert challenge.status == 407
        invite = caller.authorize(invite, challenge, "1002")
        await caller.send(invite)

        incoming = await callee.expect_request("INVITE")
        assert incoming.uri == contact
        top = incoming.top_via
        assert (top.transport, top.host, top.port) == ("TLS", "127.0.0.1", gw.tls_port)
        assert incoming.headers.get("Contact") == f"<{our_contact}>"
        [call] = gw.running.core.calls.values()
        assert call.server.flow.transport == "tls"  # what the call logic checks for SDES
        await callee.reply(incoming, 180, to_tag="callee", contact=f"<{contact}>")
        ringing = await caller.expect_response(invite, final=False)
        assert ringing.status == 180
        await callee.reply(
            incoming,
            200,
            to_tag="callee",
            contact=f"<{contact}>",
            body=sdp_offer("127.0.0.1", 42000),
        )
        answer = await caller.expect_response(invite)
        assert answer.status == 200
        assert answer.headers.get("Contact") == f"<{our_contact}>"
        ack = await callee.expect_request("ACK", call_id=incoming.call_id)
        assert ack.top_via.transport == "TLS"
        local = caller.local
        await caller.send(
            in_dialog(invite, answer, "ACK", invite.cseq.seq, transport="TLS", local=local)
        )
        bye = in_dialog(invite, answer, "BYE", invite.cseq.seq + 1, transport="TLS", local=local)
        assert (await caller.transact(bye)).status == 200
        callee_bye = await callee.expect_request("BYE", call_id=incoming.call_id)
        await callee.reply(callee_bye, 200)
        [cdr] = await wait_for_cdrs(gw, 1)
        assert (cdr["caller"], cdr["callee"], cdr["disposition"]) == ("1002", "1001", "answered")
        # Both legs rode their clients' own connections; none was opened toward them.
        assert {c.remote for c in gw.running.endpoint.tls.by_id.values()} == {
            caller.local,
            callee.local,
        }
    finally:
        await caller.aclose()
        await callee.aclose()


# ---- hostile peers on the TLS port ------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def read_until_closed(stream: trio.SocketStream, timeout: float) -> bytes:
    """Everything the gateway sends until it closes the connection (fails after `timeout`)."""
    received = b""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(4096)
            except trio.BrokenResourceError:
                return received
            if not data:
                return received
            received += data


def client_hello_prefix() -> bytes:
    """The first bytes of a real TLS ClientHello, as a client that then stalls sends them."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello
        tls.do_handshake()
    return outgoing.read()[:40]


PLAIN_SIP = (
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK1\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n"
    b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("payload", "closed_within"),
    [
        pytest.param(PLAIN_SIP, (0.0, 0.9), id="plain-sip"),
        pytest.param(bytes(range(256)) * 4, (0.0, 0.9), id="random-bytes"),
        pytest.param(b"", (HANDSHAKE_TIMEOUT * 0.8, HANDSHAKE_TIMEOUT + 1.5), id="no-handshake"),
        pytest.param(None, (HANDSHAKE_TIMEOUT * 0.8, HANDSHAKE_TIMEOUT + 1.5), id="half-hello"),
    ],
)
async def test_bad_bytes_on_the_tls_port_close_only_that_connection(
    gw: GatewayUnderTest,
    tls: TlsPeer,
    payload: bytes | None,
    closed_within: tuple[float, float],
) -> None:
    assert (await tls.options()).status == 200
    before = failures(gw)
    with capture_logs() as logs:
        hostile = await trio.open_tcp_stream(*gw.tls4)
        await hostile.send_all(client_hello_prefix() if payload is None else payload)
        started = trio.current_time()
        answer = await read_until_closed(hostile, closed_within[1] + 1.0)
        took = trio.current_time() - started
        await hostile.aclose()
        await wait_until(lambda: failures(gw) == before + 1)
    assert closed_within[0] <= took <= closed_within[1], took
    assert b"SIP/2.0" not in answer  # at most a TLS alert, never a SIP answer in the clear
    assert [e["event"] for e in logs if "tls" in e["event"]] == ["tls handshake failed"]
    table = gw.running.endpoint.tls.by_id
    await wait_until(lambda: [c.remote for c in table.values()] == [tls.local])
    assert (await tls.options()).status == 200  # the good client never noticed


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["tls1.0", "tls1.1"]
)
async def test_tls_before_1_2_is_refused(
    gw: GatewayUnderTest, tls: TlsPeer, version: ssl.TLSVersion
) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(gw.tls_cert)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer what it is limited to
    old.minimum_version = old.maximum_version = version
    before = failures(gw)
    with capture_logs() as logs:
        with pytest.raises(trio.BrokenResourceError):
            await TlsPeer.connect_tls(gw.tls4, old)
        await wait_until(lambda: failures(gw) == before + 1)
    # The hello did arrive, and was refused for its version (OpenSSL's reason).
    assert [(e["event"], e["reason"]) for e in logs if e["event"].startswith("tls")] == [
        ("tls handshake failed", "UNSUPPORTED_PROTOCOL")
    ]
    assert (await tls.options()).status == 200


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_a_reset_in_the_middle_of_a_message_closes_only_that_connection(
    gw: GatewayUnderTest, tls: TlsPeer, trusting: ssl.SSLContext, transport: str
) -> None:
    victim: TcpPeer
    if transport == "tls":
        victim = await TlsPeer.connect_tls(gw.tls4, trusting)
    else:
        victim = await TcpPeer.connect(gw.tcp4)
    assert (await victim.options()).status == 200
    table = gw.running.endpoint.stream_transport(transport)
    broken = table.broken
    await victim.send_bytes(PLAIN_SIP[:30])
    await trio.sleep(0.05)
    assert isinstance(victim.stream, trio.SSLStream | trio.SocketStream)
    raw = (
        victim.stream.transport_stream
        if isinstance(victim.stream, trio.SSLStream)
        else victim.stream
    )
    assert isinstance(raw, trio.SocketStream)
    # SO_LINGER 0: close() sends a RST instead of a FIN.
    raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.socket.close()
    await wait_until(lambda: victim.local not in {c.remote for c in table.by_id.values()})
    assert table.broken == broken + 1
    assert (await tls.options()).status == 200
    fresh = await TcpPeer.connect(gw.tcp4)
    assert (await fresh.options()).status == 200
    await fresh.aclose()


# ---- the gateway as a TLS client ------------------------------------------------------------


class Ignore:
    """A request handler for an endpoint that only sends."""

    def on_request(self, request: Request, server: ServerHandle | None, flow: Flow) -> None:
        pass

    def on_stray_response(self, response: Response, flow: Flow) -> None:
        pass


class TlsSipServer:
    """A SIP server on TLS (Python ssl, self-signed): answers each request with 200."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.accepted = 0
        self.handshake_errors: list[str] = []
        self.requests: list[Request] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            async with listener:
                while True:
                    raw = await listener.accept()
                    self.accepted += 1
                    nursery.start_soon(
                        self._connection, trio.SSLStream(raw, self.context, server_side=True)
                    )

    async def _connection(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        framer = StreamFramer()
        try:
            await stream.do_handshake()
            while data := await stream.receive_some(65536):
                framer.feed(bytes(data))
                while (item := framer.next_message()) is not None:
                    if isinstance(item, bytes):
                        request = parse_request(item)
                        self.requests.append(request)
                        await stream.send_all(make_response(request, 200).to_bytes())
        except trio.BrokenResourceError as exc:
            self.handshake_errors.append(str(exc.__cause__))
        finally:
            await trio.aclose_forcefully(stream)


def parse_request(data: bytes) -> Request:
    message = parse(data)
    assert isinstance(message, Request)
    return message


def sip_uri(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


def options_to(uri: str) -> Request:
    headers = Headers()
    headers.add("Max-Forwards", "70")
    headers.add("From", f"<sip:gw@127.0.0.1>;tag={new_tag()}")
    headers.add("To", f"<{uri}>")
    headers.add("Call-ID", new_call_id())
    headers.add("CSeq", "1 OPTIONS")
    return Request("OPTIONS", uri, headers)


async def final_event(handle: ClientHandle) -> ClientEvent:
    async for event in handle:
        if event is TIMEOUT or (isinstance(event, Response) and event.status >= 200):
            return event
    raise AssertionError("the transaction ended without a final response")


@pytest.fixture
def trunk_pair(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    pair = ensure_self_signed(tmp_path / "trunk", ["127.0.0.1"])
    return pair.cert, server_context(pair)


async def run_endpoint(nursery: trio.Nursery, contexts: TlsContexts) -> SipEndpoint:
    endpoint = SipEndpoint(
        udp=[("127.0.0.1", 0)],
        tcp=[],
        timers=Timers(t1=0.02, t2=0.1, t4=0.1),
        tcp_idle_timeout=30.0,
        handler=Ignore(),
        tls_contexts=contexts,
    )
    await nursery.start(endpoint.run)
    return endpoint


async def test_requests_to_a_tls_destination_verify_and_reuse_one_connection(
    trunk_pair: tuple[Path, ssl.SSLContext],
) -> None:
    cert, server = trunk_pair
    trunk = TlsSipServer(server)
    async with trio.open_nursery() as nursery:
        await nursery.start(trunk.serve)
        contexts = TlsContexts(None, client_context(ca_file=cert))
        endpoint = await run_endpoint(nursery, contexts)
        uri = f"sips:trunk@127.0.0.1:{trunk.port}"
        destination = Destination.for_uri(sip_uri(uri))
        assert destination.transport == "tls"
        for _ in range(2):
            handle = endpoint.send_request(options_to(uri), destination)
            with trio.fail_after(3):
                event = await final_event(handle)
            assert isinstance(event, Response) and event.status == 200
        assert trunk.accepted == 1  # the second request reused the connection
        assert [r.top_via.transport for r in trunk.requests] == ["TLS", "TLS"]
        [connection] = endpoint.tls.by_id.values()
        assert connection.flow.transport == "tls"
        assert endpoint.tls.handshake_failures == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "unverified"])
async def test_an_untrusted_server_certificate_fails_closed_unless_verification_is_off(
    trunk_pair: tuple[Path, ssl.SSLContext], verify: bool
) -> None:
    _cert, server = trunk_pair
    trunk = TlsSipServer(server)
    async with trio.open_nursery() as nursery:
        await nursery.start(trunk.serve)
        # Only the system store: nothing there signed the trunk's self-signed certificate.
        endpoint = await run_endpoint(nursery, TlsContexts(None, client_context(verify=verify)))
        uri = f"sip:trunk@127.0.0.1:{trunk.port};transport=tls"
        handle = endpoint.send_request(options_to(uri), Destination.for_uri(sip_uri(uri)))
        with trio.fail_after(5):
            event = await final_event(handle)
        if verify:
            assert event is TIMEOUT  # Timer F: nothing was sent in the clear instead
            assert endpoint.tls.handshake_failures == 1
            assert trunk.requests == []
            assert endpoint.tls.by_id == {}
        else:
            assert isinstance(event, Response) and event.status == 200
            assert endpoint.tls.handshake_failures == 0
        nursery.cancel_scope.cancel()
