"""The Trio edge of the SIP stack: sockets, the transaction layer and its one timer queue.

Bytes come in from the UDP, TCP and TLS listeners (RFC 3261 18, 26.2), are
parsed (RFC 3261 7), stamped with received/rport (RFC 3261 18.2.1, RFC 3581 4)
and handed to the sans-IO transaction layer (RFC 3261 17). What the
transactions ask for (transmit, deliver, time out) is carried out here; nothing
below this module sleeps or sends. Malformed requests get a 400 whose reason
names the problem, or are dropped when no response can be addressed (DESIGN
rule 6).

Listeners may belong to network roles (access, carrier, mgmt). A request to a
destination of a role leaves from that role's listener and names it in Via and
Contact (`pick_listener`), so that policy routing per role sends it out of the
role's own interface.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import math
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from gateway.net.dscp import DSCP_CS3
from gateway.sip.headers import Via
from gateway.sip.message import (
    ParseError,
    Request,
    Response,
    make_response,
    new_branch,
    parse,
)
from gateway.sip.transaction import (
    Deliver,
    OverloadError,
    ServerTransaction,
    Terminated,
    TimedOut,
    Timers,
    TransactionError,
    TransactionLayer,
    Transmit,
)
from gateway.transport.connections import TcpTransport, UdpListener
from gateway.transport.flow import Address, Destination, Flow, hostport
from gateway.transport.tls import TlsContexts, TlsTransport, client_context

log = structlog.get_logger("edgegw.sip")


class TransactionTimeout:
    """Delivered on a client transaction's channel when Timer B/F fired (RFC 3261 17.1)."""


TIMEOUT = TransactionTimeout()
ClientEvent = Response | TransactionTimeout
# A packet capture's view of SIP: the raw bytes of each message, its flow, and whether it was
# sent (else received). Set only while a capture runs (gateway.control.capture).
SipTap = Callable[[bytes, Flow, bool], None]


class RequestHandler(Protocol):
    def on_request(self, request: Request, server: ServerHandle | None, flow: Flow) -> None: ...
    def on_stray_response(self, response: Response, flow: Flow) -> None: ...


@dataclass(eq=False)
class ServerHandle:
    """A server transaction as the call logic sees it: the request, its flow, respond()."""

    endpoint: SipEndpoint
    txn: ServerTransaction
    request: Request
    flow: Flow
    final_sent: bool = False
    cancelled: bool = False  # a CANCEL matched this INVITE before its final response
    # Called once when that CANCEL arrives: the call reacts at once, with no task waiting.
    on_cancel: Callable[[], None] | None = None
    local_tag: str = ""

    def respond(self, response: Response) -> None:
        """Send `response`; every response but 100 carries a To tag (RFC 3261 8.2.6.2)."""
        if response.status >= 200:
            self.final_sent = True
        if response.status > 100:
            self._tag(response)
        self.endpoint._send_response(self, response)

    def _tag(self, response: Response) -> None:
        if response.to.tag is None:
            to = response.headers.get("To") or ""
            response.headers.set("To", f"{to};tag={self.local_tag}")

    def reply(self, status: int, reason: str | None = None, *, to_tag: str | None = None) -> None:
        self.respond(make_response(self.request, status, reason, to_tag=to_tag))

    def refuse(self, status: int, reason: str | None = None) -> None:
        self.reject(make_response(self.request, status, reason))

    def drop(self) -> None:
        """No answer at all (a banned source): the transaction is forgotten, never resent."""
        self.final_sent = True
        self.endpoint.layer.discard(self.txn)
        self.endpoint._servers.pop(self.txn, None)

    def reject(self, response: Response) -> None:
        """A final non-2xx outside any call: statelessly for INVITE, so never retransmitted.

        An INVITE server transaction would resend its 4xx until Timer H (RFC 3261
        17.2.1); for a flood from forged sources that is an amplifier.
        """
        if self.request.method != "INVITE":
            self.respond(response)
            return
        self.final_sent = True
        self._tag(response)
        self.endpoint._send_statelessly(self, response)


@dataclass(eq=False)
class ClientHandle:
    """A client transaction: responses (and a timeout) arrive on `events`."""

    request: Request
    destination: Destination
    send_channel: trio.MemorySendChannel[ClientEvent]
    events: trio.MemoryReceiveChannel[ClientEvent]
    flow: Flow | None = None

    async def __aiter__(self) -> AsyncIterator[ClientEvent]:
        async for event in self.events:
            yield event


@dataclass
class EndpointStats:
    received: int = 0
    sent: int = 0
    malformed: int = 0
    dropped_unaddressable: int = 0
    overload_503: int = 0


class SipEndpoint:
    def __init__(
        self,
        *,
        udp: list[Address],
        tcp: list[Address],
        timers: Timers,
        tcp_idle_timeout: float,
        handler: RequestHandler,
        clock: Callable[[], float] = trio.current_time,
        tls: list[Address] | None = None,
        tls_contexts: TlsContexts | None = None,
        dscp: int = DSCP_CS3,
        address_roles: Mapping[str, str] | None = None,
    ) -> None:
        """`tls` listeners need `tls_contexts.server`; without contexts the gateway can still
        open TLS connections (verifying against the system CAs) but not accept them.

        `address_roles` maps a listener's IP address to its network role; listeners not in
        it have role "" (see `pick_listener`)."""
        self._roles = {_canonical_host(host): role for host, role in (address_roles or {}).items()}
        # Which listener serves (transport, role, IPv6?): asked for every request we send,
        # so chosen once per key; cleared whenever the listeners change.
        self._local_choice: dict[tuple[str, str, bool], Address] = {}
        self._udp_choice: dict[tuple[str, bool], UdpListener] = {}
        self._udp_addresses = udp
        self._tcp_addresses = tcp
        self._tls_addresses = tls or []
        self.timers = timers
        self.layer = TransactionLayer(timers)
        self.handler = handler
        self.clock = clock
        self.udp: list[UdpListener] = []
        self.tcp = TcpTransport(tcp_idle_timeout)
        self.tls = TlsTransport(
            tls_contexts or TlsContexts(server=None, client=client_context()), tcp_idle_timeout
        )
        self._dscp = self.tcp.dscp = self.tls.dscp = dscp  # marked on every SIP socket
        self.stats = EndpointStats()
        self._servers: dict[object, ServerHandle] = {}
        self._clients: dict[object, ClientHandle] = {}
        self._wakeup = trio.Event()
        self._sleeping_until = math.inf
        self._tag_key = secrets.token_bytes(16)
        self.tap: SipTap | None = None

    # ---- running -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind every listener, report started, then serve until cancelled."""
        self.udp = [UdpListener(host, port, self._dscp) for host, port in self._udp_addresses]
        self._forget_choices()
        try:
            async with trio.open_nursery() as nursery:
                for listener in self.udp:
                    nursery.start_soon(listener.serve, self._on_bytes)
                # Started without listeners too: requests we send may open connections.
                for transport, addresses in (
                    (self.tcp, self._tcp_addresses),
                    (self.tls, self._tls_addresses),
                ):
                    await nursery.start(
                        transport.serve, addresses, self._on_bytes, self._on_framing_error
                    )
                nursery.start_soon(self._timer_loop)
                self._forget_choices()  # the stream listeners are bound only now
                task_status.started()
        finally:
            for listener in self.udp:
                listener.close()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.layer.next_deadline()
            self._sleeping_until = deadline if deadline is not None else math.inf
            with trio.move_on_at(self._sleeping_until):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            self._sleeping_until = math.inf
            now = self.clock()
            for txn, output in self.layer.on_timer(now):
                self._carry_out(txn, output)

    def _kick(self) -> None:
        deadline = self.layer.next_deadline()
        if deadline is not None and deadline < self._sleeping_until:
            self._wakeup.set()

    def tag_for(self, request: Request) -> str:
        """Our To tag for a request outside a dialog: random to others, stable per call.

        Derived from Call-ID and From tag with a secret key, so the tag of a 407
        and of the dialog the authenticated retry creates are the same (as a
        stateless proxy's would be); some clients (sipp) keep the first tag.
        """
        material = f"{request.call_id}\x00{request.from_.tag or ''}".encode()
        return hmac.new(self._tag_key, material, hashlib.sha256).hexdigest()[:16]

    # ---- addresses -------------------------------------------------------------------

    def _forget_choices(self) -> None:
        self._local_choice.clear()
        self._udp_choice.clear()

    def local_address(
        self, transport: str, family_host: str | None = None, role: str = ""
    ) -> Address:
        """The listener address to advertise for `transport` (Via sent-by, Contact) to a
        peer at `family_host` (its family decides) reached through network `role`."""
        want_v6 = family_host is not None and ":" in family_host
        key = (transport, role, want_v6)
        address = self._local_choice.get(key)
        if address is None:
            candidates = [listener.local for listener in self.udp]
            if transport == "tls":
                candidates = self.tls.listen_addresses or self.tcp.listen_addresses or candidates
            elif transport != "udp":
                candidates = self.tcp.listen_addresses or candidates
            hosts = [host for host, _port in candidates]
            address = candidates[pick_listener(hosts, self._roles, role, want_v6)]
            self._local_choice[key] = address
        return address

    def contact_uri(self, transport: str, remote_host: str | None = None, role: str = "") -> str:
        """Our URI for Contact: `;transport=tcp|tls` for streams (RFC 3261 19.1.1)."""
        address = self.local_address(transport, remote_host, role)
        suffix = "" if transport == "udp" else f";transport={transport}"
        return f"sip:{hostport(address)}{suffix}"

    # ---- incoming ----------------------------------------------------------------------

    def _on_bytes(self, data: bytes, flow: Flow) -> None:
        self.stats.received += 1
        if self.tap is not None:
            self.tap(data, flow, False)
        if not data.strip(b"\r\n"):
            if flow.transport == "udp" and data.startswith(b"\r\n\r\n"):
                self._send_raw(b"\r\n", flow)  # RFC 5626 3.5.1 keep-alive over UDP
            return
        try:
            message = parse(data)
        except ParseError as exc:
            self._on_framing_error(exc, flow)
            return
        try:
            if isinstance(message, Request):
                self._on_request(message, flow)
            else:
                self._on_response(message, flow)
        except ValueError as exc:
            # Via, From, To and URIs are parsed on first use: one that frames but does
            # not parse (HeaderError, UriError) surfaces here, not in parse().
            self._on_bad_header(message, exc, flow)

    def _on_bad_header(self, message: Request | Response, exc: ValueError, flow: Flow) -> None:
        self.stats.malformed += 1
        log.info("malformed sip header", remote=flow.remote, reason=str(exc))
        if not isinstance(message, Request) or message.method == "ACK":
            return
        try:
            response = make_response(message, 400, f"Bad Header: {exc}"[:120])
            destination = self._response_flow(message, flow)
        except ValueError:
            self.stats.dropped_unaddressable += 1
            return  # not even the Via can be read: no response can be addressed
        self._send_raw(response.to_bytes(), destination)

    def _on_framing_error(self, exc: ParseError, flow: Flow) -> None:
        self.stats.malformed += 1
        if exc.partial is None or exc.partial.method == "ACK":  # an ACK is never answered
            self.stats.dropped_unaddressable += 1
            log.info("malformed sip dropped", remote=flow.remote, reason=str(exc))
            return
        log.info("malformed sip refused", remote=flow.remote, reason=str(exc))
        self._stamp_via(exc.partial, flow)
        response = make_response(exc.partial, 400, str(exc))
        self._send_raw(response.to_bytes(), self._response_flow(exc.partial, flow))

    def _stamp_via(self, request: Request, flow: Flow) -> None:
        """RFC 3261 18.2.1 `received`, RFC 3581 4 `rport`: where the request really came from."""
        if "Via" not in request.headers:
            return
        top = request.top_via
        host, port = flow.remote
        changed = False
        if top.host != host:
            top.params["received"] = host
            changed = True
        if "rport" in top.params:
            top.params["rport"] = str(port)
            top.params.setdefault("received", host)
            changed = True
        if changed:
            request.replace_top_via(top)

    def _on_request(self, request: Request, flow: Flow) -> None:
        self._stamp_via(request, flow)
        # From and To parse lazily; read them before a transaction exists, so that a bad
        # one is refused by _on_bytes without leaving an orphan transaction behind.
        _ = (request.from_, request.to)
        try:
            txn, outputs = self.layer.receive_request(request, self.clock(), flow.reliable)
        except OverloadError:
            self.stats.overload_503 += 1
            busy = make_response(request, 503, "Service Unavailable")
            busy.headers.set("Retry-After", "5")
            self._send_raw(busy.to_bytes(), self._response_flow(request, flow))
            return
        except TransactionError as exc:
            self._on_framing_error(ParseError(str(exc), request), flow)
            return
        if txn is None:
            for output in outputs:
                if isinstance(output, Deliver):
                    # The ACK for a 2xx belongs to the dialog, not to a transaction (17.1.1.3).
                    self.handler.on_request(request, None, flow)
                else:
                    self._carry_out(None, output)
            self._kick()
            return
        handle = ServerHandle(self, txn, request, flow, local_tag=self.tag_for(request))
        self._servers[txn] = handle
        if request.method == "CANCEL":
            self._on_cancel(handle)
        else:
            self.handler.on_request(request, handle, flow)
        self._kick()

    def _on_cancel(self, cancel: ServerHandle) -> None:
        invite_txn = self.layer.find_invite_for_cancel(cancel.request)
        invite = self._servers.get(invite_txn) if invite_txn is not None else None
        if invite is None:
            cancel.reply(481)
            return
        cancel.reply(200)
        if not invite.final_sent and not invite.cancelled:
            invite.cancelled = True
            if invite.on_cancel is not None:
                invite.on_cancel()

    def _on_response(self, response: Response, flow: Flow) -> None:
        txn, outputs = self.layer.match_response(response, self.clock())
        for output in outputs:
            if txn is None and isinstance(output, Deliver):
                # A 2xx retransmission after the INVITE transaction ended: the dialog ACKs it.
                if isinstance(output.message, Response):
                    self.handler.on_stray_response(output.message, flow)
            else:
                self._carry_out(txn, output)
        self._kick()

    # ---- outgoing ----------------------------------------------------------------------

    def new_via(self, destination: Destination) -> Via:
        flow = destination.flow
        if flow is not None and flow.transport == "udp" and flow.local[0] not in _WILDCARDS:
            local = flow.local  # what the request leaves from (RFC 3261 18.1.1)
        else:
            local = self.local_address(
                destination.transport, destination.address[0], destination.role
            )
        params: dict[str, str | None] = {"branch": new_branch(), "rport": None}
        return Via(destination.transport.upper(), local[0], local[1], params)

    def send_request(
        self, request: Request, destination: Destination, *, keep_via: bool = False
    ) -> ClientHandle:
        """Start a client transaction; responses come on the handle's channel.

        `keep_via` is for CANCEL, which must carry its INVITE's Via (RFC 3261 9.1).
        """
        if not keep_via:
            request.prepend_via(self.new_via(destination))
        send, recv = trio.open_memory_channel[ClientEvent](32)
        handle = ClientHandle(request, destination, send, recv)
        flow = destination.flow
        if flow is not None and flow.conn_id is not None and not self.flow_alive(flow):
            # RFC 5626 5.3: the connection a binding came in on has closed, and nothing
            # else reaches an app behind NAT: fail now with 430 rather than after Timer B.
            self._push(handle, make_response(request, 430, "Flow Failed"))
            send.close()
            return handle
        now = self.clock()
        txn, outputs = self.layer.start_client(
            request, reliable=destination.transport != "udp", now=now
        )
        self._clients[txn] = handle
        for output in outputs:
            self._carry_out(txn, output)
        self._kick()
        return handle

    def send_ack(self, ack: Request, destination: Destination) -> None:
        """ACK to a 2xx: sent outside any transaction, a new branch each time (17.1.1.3)."""
        if "Via" not in ack.headers:
            ack.prepend_via(self.new_via(destination))
        self._send_to(ack.to_bytes(), destination)

    def resend_response(self, server: ServerHandle, response: Response) -> None:
        """The UAS core retransmits its 2xx until the ACK (RFC 3261 13.3.1.4)."""
        self._send_raw(response.to_bytes(), self._response_flow(server.request, server.flow))

    def _send_statelessly(self, server: ServerHandle, response: Response) -> None:
        self.stats.sent += 1
        self._send_raw(response.to_bytes(), self._response_flow(server.request, server.flow))
        self.layer.discard(server.txn)
        self._servers.pop(server.txn, None)

    def _send_response(self, server: ServerHandle, response: Response) -> None:
        for output in server.txn.send(response, self.clock()):
            self._carry_out(server.txn, output)
        self._kick()

    def _carry_out(self, txn: object | None, output: object) -> None:
        if isinstance(output, Transmit):
            self._transmit(txn, output.message)
        elif isinstance(output, Deliver):
            client = self._clients.get(txn)
            if client is not None and isinstance(output.message, Response):
                self._push(client, output.message)
        elif isinstance(output, TimedOut):
            client = self._clients.get(txn)
            if client is not None:
                self._push(client, TIMEOUT)
        elif isinstance(output, Terminated):
            self._forget(txn)

    def _forget(self, txn: object | None) -> None:
        self._servers.pop(txn, None)
        client = self._clients.pop(txn, None)
        if client is not None:
            client.send_channel.close()

    def _push(self, handle: ClientHandle, event: ClientEvent) -> None:
        # Nobody listening any more means the call has ended: the event is moot.
        with contextlib.suppress(
            trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
        ):
            handle.send_channel.send_nowait(event)

    def _transmit(self, txn: object | None, message: Request | Response) -> None:
        self.stats.sent += 1
        if isinstance(message, Response):
            server = self._servers.get(txn)
            if server is not None:
                flow = self._response_flow(server.request, server.flow)
            else:
                flow = self._response_flow_from_via(message)
            self._send_raw(message.to_bytes(), flow)
            return
        client = self._clients.get(txn)
        if client is None:
            return
        self._send_to(message.to_bytes(), client.destination)

    def _send_to(self, data: bytes, destination: Destination) -> None:
        if destination.flow is not None:
            self._send_raw(data, destination.flow)
            return
        transport = destination.transport
        if transport == "udp":
            listener = self._udp_for(destination.address[0], destination.role)
            if self.tap is not None:
                self.tap(data, Flow("udp", listener.local, destination.address), True)
            listener.send(data, destination.address)
        else:
            streams = self.stream_transport(transport)
            streams.send(data, destination.address, None, self._source_host(destination))
            conn = streams.by_remote.get(destination.address) if self.tap is not None else None
            if self.tap is not None and conn is not None:
                # A connection opened just now has no local address yet: our listener's.
                local = (
                    conn.local
                    if conn.local[1]
                    else self.local_address(transport, destination.address[0], destination.role)
                )
                self.tap(data, Flow(transport, local, conn.remote, conn.conn_id), True)

    def _source_host(self, destination: Destination) -> str | None:
        """The address a new connection for a role binds to: its listener's, unless that
        listener is a wildcard (then the routing table picks, as without roles)."""
        if not destination.role:
            return None
        host, _port = self.local_address(
            destination.transport, destination.address[0], destination.role
        )
        return None if host in _WILDCARDS else host

    def _udp_for(self, host: str, role: str = "") -> UdpListener:
        want_v6 = ":" in host
        listener = self._udp_choice.get((role, want_v6))
        if listener is None:
            hosts = [udp.local[0] for udp in self.udp]
            listener = self.udp[pick_listener(hosts, self._roles, role, want_v6)]
            self._udp_choice[(role, want_v6)] = listener
        return listener

    def _send_raw(self, data: bytes, flow: Flow) -> None:
        if self.tap is not None:
            self.tap(data, flow, True)
        if flow.transport == "udp":
            for listener in self.udp:
                if listener.local == flow.local:
                    listener.send(data, flow.remote)
                    return
            self._udp_for(flow.remote[0]).send(data, flow.remote)
        else:
            self.stream_transport(flow.transport).send(data, flow.remote, flow.conn_id)

    def stream_transport(self, transport: str) -> TcpTransport:
        """The connection table for "tls", else the TCP one (also for Vias naming others)."""
        return self.tls if transport == "tls" else self.tcp

    def flow_alive(self, flow: Flow) -> bool:
        """Whether the connection `flow` names is still open (always true for UDP)."""
        if flow.conn_id is None:
            return True
        return flow.conn_id in self.stream_transport(flow.transport).by_id

    def _response_flow(self, request: Request, flow: Flow) -> Flow:
        """RFC 3261 18.2.2 and RFC 3581 4: reliable -> same connection; UDP -> rport/received."""
        if flow.reliable:
            return flow
        return Flow("udp", flow.local, _via_return_address(request))

    def _response_flow_from_via(self, response: Response) -> Flow:
        """For a retransmitted response whose transaction is not at hand: the Via says where."""
        transport = response.top_via.transport.lower()
        return Flow(transport, self.udp[0].local, _via_return_address(response))


_WILDCARDS = frozenset({"0.0.0.0", "::"})


def pick_listener(hosts: Sequence[str], roles: Mapping[str, str], role: str, want_v6: bool) -> int:
    """Which of the listeners at `hosts` a message for network `role` leaves from.

    Of the wanted family (IPv6 or not): the role's own listener, else one with no role
    (`roles` maps host -> role; a host not in it has role ""), else any; else the first.
    """
    family = [index for index, host in enumerate(hosts) if (":" in host) == want_v6]
    for wanted in (role, ""):
        for index in family:
            if roles.get(hosts[index], "") == wanted:
                return index
    return family[0] if family else 0


def _canonical_host(host: str) -> str:
    """An IP address as a socket reports it (compressed IPv6), so lookups by bound address
    find it; anything else as given."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def _via_return_address(message: Request | Response) -> Address:
    """received (or sent-by host) and rport (or sent-by port, else 5060) of the top Via."""
    top = message.top_via
    host = top.params.get("received") or top.host
    rport = top.params.get("rport")
    return host, int(rport) if rport else (top.port or 5060)
