"""SIP sockets per network role: a request to a destination of a role leaves from that
role's listener (UDP socket, or a TCP connection bound to its address) and names that
listener in Via and Contact; a role without a listener falls back to one without a role,
then to any of the destination's family. Real sockets on loopback (127.0.0.x, ::1)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from gateway.calls.registrar import destination_of
from gateway.sip.headers import Via
from gateway.sip.message import Headers, Request, Response, StreamFramer, new_call_id, parse
from gateway.sip.transaction import Timers
from gateway.store.model import Binding
from gateway.transport.endpoint import ServerHandle, SipEndpoint, pick_listener
from gateway.transport.flow import Address, Destination, Flow

ROLES = {"127.0.0.1": "access", "127.0.0.2": "carrier", "::1": "access"}


class NoRequests:
    """The endpoint's request handler; the peers here never send requests."""

    def on_request(self, request: Request, server: ServerHandle | None, flow: Flow) -> None:
        raise AssertionError(f"unexpected {request.method}")

    def on_stray_response(self, response: Response, flow: Flow) -> None:
        raise AssertionError(f"unexpected {response.status}")


def options(host: str) -> Request:
    headers = Headers()
    headers.add("Max-Forwards", "70")
    headers.add("From", "<sip:ping@gateway.invalid>;tag=roles")
    headers.add("To", f"<sip:{host}>")
    headers.add("Call-ID", new_call_id())
    headers.add("CSeq", "1 OPTIONS")
    return Request("OPTIONS", f"sip:{host}", headers)


async def running(
    nursery: trio.Nursery, *, udp: list[Address], tcp: list[Address] | None = None
) -> SipEndpoint:
    endpoint = SipEndpoint(
        udp=udp,
        tcp=tcp or [],
        timers=Timers(t1=0.5),
        tcp_idle_timeout=30,
        handler=NoRequests(),
        address_roles=ROLES,
    )
    await nursery.start(endpoint.run)
    return endpoint


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


def listener_on(endpoint: SipEndpoint, host: str) -> Address:
    (address,) = [listener.local for listener in endpoint.udp if listener.local[0] == host]
    return address


async def receive_udp(peer: trio.socket.SocketType) -> tuple[Request, Address]:
    with trio.fail_after(3):
        data, source = await peer.recvfrom(65536)
    request = parse(data)
    assert isinstance(request, Request)
    return request, source[:2]


def sent_by(request: Request) -> Address:
    via = request.top_via
    assert isinstance(via, Via) and via.port is not None
    return via.host, via.port


# ---- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "role", "want_v6", "chosen"),
    [
        (["127.0.0.1", "127.0.0.2"], "carrier", False, 1),
        (["127.0.0.1", "127.0.0.2"], "access", False, 0),
        # A role's listener of the other family does not count: the family comes first.
        (["::1", "127.0.0.1"], "access", True, 0),
        (["127.0.0.1", "::1"], "access", True, 1),
        # No carrier listener: the one without a role, not the access one.
        (["127.0.0.1", "127.0.0.9"], "carrier", False, 1),
        # Nor one without a role: any of the family.
        (["::1", "127.0.0.1"], "carrier", False, 1),
        # Nothing of the family at all: the first, as before roles.
        (["127.0.0.2", "127.0.0.1"], "carrier", True, 0),
        (["127.0.0.9", "127.0.0.2"], "", False, 0),
    ],
)
def test_pick_listener(hosts: list[str], role: str, want_v6: bool, chosen: int) -> None:
    assert pick_listener(hosts, ROLES, role, want_v6) == chosen


def test_destinations_default_to_no_role_and_registered_apps_are_on_access() -> None:
    assert Destination("udp", ("192.0.2.1", 5060)).role == ""
    binding = Binding(
        aor="sip:1001@gw",
        contact="sip:1001@10.0.0.5:5060",
        expires_at=0.0,
        source_host="10.0.0.5",
        source_port=5062,
        local_host="127.0.0.1",
        local_port=5060,
        transport="tcp",
        call_id="c1",
        cseq=1,
    )
    destination = destination_of(binding)
    assert destination.role == "access" and destination.flow is None
    assert destination.address == ("10.0.0.5", 5062)


# ---- UDP ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "source"),
    [
        ("carrier", "127.0.0.2"),
        ("access", "127.0.0.1"),
        ("", "127.0.0.4"),  # the listener without a role
        ("mgmt", "127.0.0.4"),  # no mgmt listener: the one without a role
    ],
)
async def test_udp_request_leaves_from_the_roles_listener(
    nursery: trio.Nursery, role: str, source: str
) -> None:
    endpoint = await running(
        nursery, udp=[("127.0.0.1", 0), ("127.0.0.2", 0), ("127.0.0.4", 0), ("::1", 0)]
    )
    peer = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    await peer.bind(("127.0.0.3", 0))
    with peer:
        target = peer.getsockname()[:2]
        endpoint.send_request(options("127.0.0.3"), Destination("udp", target, role=role))
        request, seen_from = await receive_udp(peer)
    expected = listener_on(endpoint, source)
    assert seen_from == expected
    assert sent_by(request) == expected


async def test_udp_family_comes_before_role(nursery: trio.Nursery) -> None:
    endpoint = await running(nursery, udp=[("127.0.0.1", 0), ("127.0.0.2", 0), ("::1", 0)])
    peer = trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM)
    await peer.bind(("::1", 0))
    with peer:
        target = peer.getsockname()[:2]
        # No IPv6 carrier listener and none without a role: the IPv6 (access) one.
        endpoint.send_request(options("[::1]"), Destination("udp", target, role="carrier"))
        request, seen_from = await receive_udp(peer)
    assert seen_from == sent_by(request) == listener_on(endpoint, "::1")


async def test_local_address_and_contact_per_role(nursery: trio.Nursery) -> None:
    endpoint = await running(
        nursery,
        udp=[("127.0.0.1", 0), ("127.0.0.2", 0)],
        tcp=[("127.0.0.1", 0), ("127.0.0.2", 0)],
    )
    access, carrier = listener_on(endpoint, "127.0.0.1"), listener_on(endpoint, "127.0.0.2")
    assert endpoint.local_address("udp", "192.0.2.7", role="carrier") == carrier
    assert endpoint.local_address("udp", "192.0.2.7", role="access") == access
    # Without a role nor a listener without one: the first of the family, as before.
    assert endpoint.local_address("udp", "192.0.2.7") == access
    assert endpoint.contact_uri("udp", "192.0.2.7", role="carrier") == f"sip:127.0.0.2:{carrier[1]}"
    tcp = {host: (host, port) for host, port in endpoint.tcp.listen_addresses}
    assert endpoint.local_address("tcp", "192.0.2.7", role="carrier") == tcp["127.0.0.2"]
    # No TLS listener: TLS advertises the TCP one of the role.
    assert endpoint.local_address("tls", "192.0.2.7", role="carrier") == tcp["127.0.0.2"]
    port = tcp["127.0.0.1"][1]
    assert (
        endpoint.contact_uri("tcp", "192.0.2.7", role="access")
        == f"sip:127.0.0.1:{port};transport=tcp"
    )
    via = endpoint.new_via(Destination("tcp", ("192.0.2.7", 5060), role="carrier"))
    assert (via.transport, via.host, via.port) == ("TCP", *tcp["127.0.0.2"])


# ---- TCP ----------------------------------------------------------------------------------


class TcpPeer:
    """A TCP server on 127.0.0.3: records each connection's source and the requests on it."""

    def __init__(self) -> None:
        self.sources: list[Address] = []
        self.requests: list[Request] = []
        self.arrived = trio.Event()
        self.address: Address = ("", 0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.3")
        self.address = listener.socket.getsockname()[:2]
        task_status.started()
        await trio.serve_listeners(self._serve, [listener])

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.sources.append(stream.socket.getpeername()[:2])
        framer = StreamFramer()
        while data := await stream.receive_some(65536):
            framer.feed(bytes(data))
            while (item := framer.next_message()) is not None:
                if isinstance(item, bytes):
                    request = parse(item)
                    assert isinstance(request, Request)
                    self.requests.append(request)
                    self.arrived.set()

    async def next_request(self) -> Request:
        with trio.fail_after(3):
            await self.arrived.wait()
        self.arrived = trio.Event()
        return self.requests[-1]


@pytest.mark.parametrize(("role", "source"), [("carrier", "127.0.0.2"), ("access", "127.0.0.1")])
async def test_tcp_connection_for_a_role_binds_to_its_address(
    nursery: trio.Nursery, role: str, source: str
) -> None:
    endpoint = await running(
        nursery, udp=[("127.0.0.1", 0)], tcp=[("127.0.0.1", 0), ("127.0.0.2", 0)]
    )
    peer = TcpPeer()
    await nursery.start(peer.run)
    destination = Destination("tcp", peer.address, role=role)
    endpoint.send_request(options("127.0.0.3;transport=tcp"), destination)
    first = await peer.next_request()
    assert peer.sources[0][0] == source
    listener = [a for a in endpoint.tcp.listen_addresses if a[0] == source]
    assert sent_by(first) == listener[0]
    # A second request reuses the live connection.
    endpoint.send_request(options("127.0.0.3;transport=tcp"), destination)
    await peer.next_request()
    assert len(peer.sources) == 1 and len(peer.requests) == 2


async def test_tcp_role_without_listener_binds_to_the_one_without_a_role(
    nursery: trio.Nursery,
) -> None:
    endpoint = await running(
        nursery, udp=[("127.0.0.1", 0)], tcp=[("127.0.0.1", 0), ("127.0.0.4", 0)]
    )
    peer = TcpPeer()
    await nursery.start(peer.run)
    endpoint.send_request(
        options("127.0.0.3;transport=tcp"), Destination("tcp", peer.address, role="carrier")
    )
    request = await peer.next_request()
    assert peer.sources[0][0] == "127.0.0.4"
    assert sent_by(request)[0] == "127.0.0.4"
