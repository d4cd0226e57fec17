"""A small SIP test client over real sockets, and a harness that runs the gateway in-process.

The client side builds requests (REGISTER, INVITE, OPTIONS with SDP, in-dialog ACK and
BYE), sends them over UDP, TCP or TLS (Python `ssl` through `trio.SSLStream`), receives
and parses what comes back with timeouts and answers digest challenges (RFC 3261 22.2,
22.3) with the gateway's own client code (`digest_authorization`). Messages that arrive
while a test waits for something else are kept in a backlog, so a BYE that overtakes a
response is not lost.

The harness writes a loopback configuration (SIP on 127.0.0.1 and, when the host has it,
::1; free ports; a small media range; a trunk pointing at a socket the test owns), runs
`Gateway.serve()` in a cancel scope of the test's nursery and waits until SIP answers an
OPTIONS over UDP. With `GatewaySettings(tls=True)` it also listens for TLS on a port of its
own, with the self-signed certificate the gateway makes under its var dir.
"""

from __future__ import annotations

import random
import socket
import ssl
import textwrap
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trio

from gateway.config import Config, parse_config
from gateway.service import Gateway
from gateway.sip.auth import digest_authorization, parse_auth_params
from gateway.sip.headers import parse_name_addr
from gateway.sip.message import (
    Headers,
    KeepAlive,
    ParseError,
    Request,
    Response,
    StreamFramer,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse,
)
from gateway.transport.flow import hostport
from tests.integration.peers import GATEWAY_MEDIA_PORTS, SIGNALLING_PORTS

Address = tuple[str, int]
Message = Request | Response

DEFAULT_TIMEOUT = 3.0
PASSWORDS = {"1001": "demo1001", "1002": "demo1002"}
NUMBERS = {"1001": "+8613900139001", "1002": "+8613900139002"}


class NoMessage(AssertionError):
    """What a test waited for did not arrive in time."""


# ---- building messages -------------------------------------------------------------------


def sdp_offer(host: str, port: int, *, session: int | None = None) -> bytes:
    """An audio offer in RTP/AVP with PCMU and PCMA (RFC 4566, RFC 3264)."""
    family = "IP6" if ":" in host else "IP4"
    sid = session if session is not None else random.randrange(1, 2**31)
    lines = [
        "v=0",
        f"o=test {sid} {sid} IN {family} {host}",
        "s=-",
        f"c=IN {family} {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0 8",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def via_value(
    transport: str, local: Address, branch: str | None = None, *, rport: bool = True
) -> str:
    tail = ";rport" if rport else ""
    return f"SIP/2.0/{transport.upper()} {hostport(local)};branch={branch or new_branch()}{tail}"


def set_branch(request: Request, transport: str, local: Address) -> None:
    """Give `request` a single Via with a new branch (a new transaction)."""
    request.headers.set("Via", via_value(transport, local))


def challenge_for(response: Response, algorithm: str) -> str:
    """The WWW-/Proxy-Authenticate value of `response` offering `algorithm`."""
    name = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
    for value in response.headers.get_all(name):
        _scheme, params = parse_auth_params(value)
        if params.get("algorithm", "MD5").upper() == algorithm.upper():
            return value
    raise AssertionError(f"no {algorithm} challenge in {response.status}: {response.headers}")


def challenge_params(response: Response) -> list[dict[str, str]]:
    """The parameters of every challenge in a 401/407, in order."""
    name = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
    return [parse_auth_params(value)[1] for value in response.headers.get_all(name)]


def authorize(
    request: Request,
    challenge: Response,
    *,
    username: str,
    password: str,
    algorithm: str = "MD5",
    transport: str,
    local: Address,
) -> Request:
    """The retry of `request` answering `challenge`: CSeq + 1, a new branch, credentials."""
    header = "Proxy-Authorization" if challenge.status == 407 else "Authorization"
    value = digest_authorization(
        challenge_for(challenge, algorithm),
        method=request.method,
        uri=request.uri,
        username=username,
        password=password,
    )
    retry = Request(request.method, request.uri, request.headers.copy(), request.body)
    retry.headers.set("CSeq", f"{request.cseq.seq + 1} {request.method}")
    set_branch(retry, transport, local)
    retry.headers.set(header, value)
    return retry


def ack_for_failure(invite: Request, response: Response) -> Request:
    """ACK to a non-2xx final response: same branch and Request-URI (RFC 3261 17.1.1.3)."""
    ack = Request("ACK", invite.uri, invite.headers.copy())
    for name in ("Content-Type", "Contact", "Proxy-Authorization", "Authorization"):
        ack.headers.remove(name)
    ack.headers.set("To", response.headers.get("To") or "")
    ack.headers.set("CSeq", f"{invite.cseq.seq} ACK")
    return ack


def contact_target(response: Response) -> str:
    """The remote target a 2xx names in its Contact (RFC 3261 12.1.2)."""
    value = response.headers.get("Contact")
    if value is None:
        raise AssertionError(f"no Contact in {response.status} {response.reason}")
    return str(parse_name_addr(value).uri)


def in_dialog(
    invite: Request, answer: Response, method: str, seq: int, *, transport: str, local: Address
) -> Request:
    """A request of the caller inside the dialog `answer` established (ACK keeps the seq)."""
    request = Request(method, contact_target(answer), invite.headers.copy())
    for name in ("Content-Type", "Proxy-Authorization", "Authorization", "Contact"):
        request.headers.remove(name)
    request.headers.set("To", answer.headers.get("To") or "")
    request.headers.set("CSeq", f"{seq} {method}")
    set_branch(request, transport, local)
    return request


# ---- peers ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Peer(ABC):
    """What UDP and TCP peers share: request building, the backlog, waiting for messages."""

    transport: str  # "UDP" | "TCP" | "TLS"
    local: Address
    remote: Address
    backlog: list[tuple[Message, Address]] = field(default_factory=list)
    unparsed: list[bytes] = field(default_factory=list)
    cseq: int = 0

    # -- transport specifics --------------------------------------------------------------

    @abstractmethod
    async def send_bytes(self, data: bytes, to: Address | None = None) -> None:
        """Send raw bytes (UDP: to `to` or the gateway; TCP: on the connection)."""

    @abstractmethod
    async def _receive(self, deadline: float) -> tuple[bytes, Address] | None:
        """The next raw message and its source, or None at the deadline or on close."""

    # -- building -------------------------------------------------------------------------

    @property
    def domain(self) -> str:
        return hostport(self.remote)

    def request(
        self,
        method: str,
        uri: str | None = None,
        *,
        from_user: str = "1001",
        to_user: str | None = None,
        call_id: str | None = None,
        seq: int | None = None,
        body: bytes = b"",
        content_type: str = "application/sdp",
        contact: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> Request:
        """A request from this peer to the gateway: one Via with rport, a new branch."""
        to_uri = f"sip:{to_user}@{self.domain}" if to_user else f"sip:{self.domain}"
        target = uri if uri is not None else to_uri
        if seq is None:
            self.cseq += 1
            seq = self.cseq
        request = Request(method, target, Headers())
        request.headers.add("Via", via_value(self.transport, self.local))
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", f"<sip:{from_user}@{self.domain}>;tag={new_tag()}")
        request.headers.add("To", f"<{to_uri}>")
        request.headers.add("Call-ID", call_id or new_call_id())
        request.headers.add("CSeq", f"{seq} {method}")
        default_contact = f"<sip:{from_user}@{hostport(self.local)}"
        if self.transport != "UDP":
            default_contact += f";transport={self.transport.lower()}"
        request.headers.add("Contact", contact or default_contact + ">")
        for name, value in extra:
            request.headers.add(name, value)
        if body:
            request.headers.add("Content-Type", content_type)
            request.body = body
        return request

    def invite(self, from_user: str, to_user: str, *, media_port: int = 40000) -> Request:
        body = sdp_offer(self.local[0], media_port)
        return self.request("INVITE", from_user=from_user, to_user=to_user, body=body)

    def authorize(
        self,
        request: Request,
        challenge: Response,
        username: str,
        *,
        password: str | None = None,
        algorithm: str = "MD5",
    ) -> Request:
        """The retry of `request` with `username`'s credentials (the demo password by default)."""
        retry = authorize(
            request,
            challenge,
            username=username,
            password=PASSWORDS[username] if password is None else password,
            algorithm=algorithm,
            transport=self.transport,
            local=self.local,
        )
        self.cseq = max(self.cseq, retry.cseq.seq)
        return retry

    # -- sending ----------------------------------------------------------------------------

    async def send(self, message: Message, to: Address | None = None) -> None:
        await self.send_bytes(message.to_bytes(), to)

    async def reply(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        body: bytes = b"",
        contact: str | None = None,
        to: Address | None = None,
    ) -> Response:
        """Answer a request the gateway sent us (we are its UAS)."""
        response = make_response(request, status, reason, to_tag=to_tag)
        if contact is not None:
            response.headers.set("Contact", contact)
        if body:
            response.headers.set("Content-Type", "application/sdp")
            response.body = body
        await self.send(response, to)
        return response

    # -- receiving --------------------------------------------------------------------------

    async def expect(
        self,
        predicate: Callable[[Message], bool],
        what: str,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Message:
        """The first message (backlog first) for which `predicate` holds; others are kept."""
        for index, (message, _source) in enumerate(self.backlog):
            if predicate(message):
                del self.backlog[index]
                return message
        deadline = trio.current_time() + timeout
        while True:
            item = await self._next_message(deadline)
            if item is None:
                raise NoMessage(f"{what}: nothing within {timeout} s (backlog: {self._summary()})")
            if predicate(item[0]):
                return item[0]
            self.backlog.append(item)

    async def receive(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[Message, Address] | None:
        """The next message that parses, from the socket (not the backlog), or None."""
        return await self._next_message(trio.current_time() + timeout)

    async def _next_message(self, deadline: float) -> tuple[Message, Address] | None:
        while True:
            raw = await self._receive(deadline)
            if raw is None:
                return None
            try:
                return parse(raw[0]), raw[1]
            except ParseError:
                self.unparsed.append(raw[0])

    def _summary(self) -> str:
        shown = [
            f"{m.status} {m.cseq}" if isinstance(m, Response) else f"{m.method} {m.uri}"
            for m, _source in self.backlog[:8]
        ]
        more = len(self.backlog) - len(shown)
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")

    async def expect_response(
        self,
        request: Request,
        *,
        final: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Response:
        """The response to `request` (matched by Call-ID and CSeq); 1xx skipped if `final`."""
        call_id, cseq = request.call_id, request.cseq

        def matches(message: Message) -> bool:
            return (
                isinstance(message, Response)
                and message.call_id == call_id
                and message.cseq == cseq
                and (not final or message.status >= 200)
            )

        found = await self.expect(matches, f"response to {request.method} {call_id}", timeout)
        assert isinstance(found, Response)
        return found

    async def expect_request(
        self, method: str, *, call_id: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Request:
        def matches(message: Message) -> bool:
            return (
                isinstance(message, Request)
                and message.method == method
                and (call_id is None or message.call_id == call_id)
            )

        found = await self.expect(matches, f"{method} request", timeout)
        assert isinstance(found, Request)
        return found

    async def transact(
        self, request: Request, *, timeout: float = DEFAULT_TIMEOUT, ack: bool = True
    ) -> Response:
        """Send `request`, return its final response; ACK a non-2xx final to an INVITE."""
        await self.send(request)
        response = await self.expect_response(request, timeout=timeout)
        if ack and request.method == "INVITE" and response.status >= 300:
            await self.send(ack_for_failure(request, response))
        return response

    async def with_auth(
        self,
        request: Request,
        username: str,
        *,
        algorithm: str = "MD5",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Response:
        """Send `request`; answer a 401/407 with `username`'s credentials; the final response."""
        response = await self.transact(request, timeout=timeout)
        if response.status not in (401, 407):
            return response
        retry = self.authorize(request, response, username, algorithm=algorithm)
        return await self.transact(retry, timeout=timeout)

    async def expect_silence(self, duration: float) -> None:
        """Nothing at all arrives for `duration` seconds (backlog included). A 100 Trying
        kept in the backlog does not count: the gateway sends one only when an answer takes
        long (RFC 3261 17.2.1), which on a busy machine any INVITE may."""
        self.backlog = [
            (message, source)
            for message, source in self.backlog
            if not (isinstance(message, Response) and message.status == 100)
        ]
        if self.backlog:
            raise AssertionError(f"unexpected messages: {self._summary()}")
        raw = await self._receive(trio.current_time() + duration)
        if raw is not None:
            raise AssertionError(f"expected silence, got {raw[0][:200]!r} from {raw[1]}")

    async def options(self, *, timeout: float = DEFAULT_TIMEOUT) -> Response:
        request = self.request("OPTIONS", f"sip:{self.domain}")
        return await self.transact(request, timeout=timeout)


@dataclass(eq=False)
class UdpPeer(Peer):
    sock: trio.socket.SocketType | None = None

    @classmethod
    async def open(cls, remote: Address, *, host: str | None = None, port: int = 0) -> UdpPeer:
        bind_host = host if host is not None else ("::1" if ":" in remote[0] else "127.0.0.1")
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        await sock.bind((bind_host, port))
        local = sock.getsockname()[:2]
        return cls("UDP", (local[0], local[1]), remote, sock=sock)

    async def send_bytes(self, data: bytes, to: Address | None = None) -> None:
        assert self.sock is not None
        await self.sock.sendto(data, to or self.remote)

    async def _receive(self, deadline: float) -> tuple[bytes, Address] | None:
        assert self.sock is not None
        with trio.move_on_at(deadline):
            data, source = await self.sock.recvfrom(65536)
            return data, (source[0], source[1])
        return None

    async def receive_datagram(self, timeout: float = DEFAULT_TIMEOUT) -> bytes | None:
        """The next datagram as raw bytes (for keep-alive pongs), or None."""
        raw = await self._receive(trio.current_time() + timeout)
        return None if raw is None else raw[0]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


@dataclass(eq=False)
class TcpPeer(Peer):
    stream: trio.abc.Stream | None = None
    framer: StreamFramer = field(default_factory=StreamFramer)
    closed: bool = False

    @classmethod
    async def connect(cls, remote: Address) -> TcpPeer:
        stream = await trio.open_tcp_stream(*remote)
        local = stream.socket.getsockname()[:2]
        return cls("TCP", (local[0], local[1]), remote, stream=stream)

    async def send_bytes(self, data: bytes, to: Address | None = None) -> None:
        assert self.stream is not None
        await self.stream.send_all(data)

    async def _receive(self, deadline: float) -> tuple[bytes, Address] | None:
        assert self.stream is not None
        while True:
            item = self.framer.next_message()
            if isinstance(item, bytes):
                return item, self.remote
            if isinstance(item, KeepAlive):
                continue
            if self.closed:
                return None
            data = await self._read(deadline)
            if data is None:
                return None
            self.framer.feed(data)

    async def _read(self, deadline: float) -> bytes | None:
        assert self.stream is not None
        with trio.move_on_at(deadline):
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self.closed = True
                return None
            return bytes(data)
        return None

    async def receive_raw(self, timeout: float = DEFAULT_TIMEOUT) -> bytes | None:
        """Bytes straight from the stream, past the framer (for CRLF pongs); None if none."""
        return await self._read(trio.current_time() + timeout)

    async def expect_closed(self, timeout: float = DEFAULT_TIMEOUT) -> float:
        """Wait until the gateway closes the connection; the seconds it took."""
        started = trio.current_time()
        deadline = started + timeout
        while not self.closed:
            data = await self._read(deadline)
            if data is None and not self.closed:
                raise NoMessage(f"connection still open after {timeout} s")
        return trio.current_time() - started

    async def aclose(self) -> None:
        if self.stream is not None:
            with trio.move_on_after(1.0):  # TLS says goodbye; the gateway may have gone
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.aclose()
            await trio.aclose_forcefully(self.stream)


def tls_client_context(cafile: Path | None) -> ssl.SSLContext:
    """A TLS 1.2+ client context trusting `cafile` (the gateway's self-signed certificate),
    or the system store when None."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(eq=False)
class TlsPeer(TcpPeer):
    """A SIP client over TLS: a real socket, Python's ssl, the gateway's certificate checked."""

    @classmethod
    async def connect_tls(
        cls, remote: Address, context: ssl.SSLContext, *, server_hostname: str | None = None
    ) -> TlsPeer:
        raw = await trio.open_tcp_stream(*remote)
        local = raw.socket.getsockname()[:2]
        stream = trio.SSLStream(raw, context, server_hostname=server_hostname or remote[0])
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return cls("TLS", (local[0], local[1]), remote, stream=stream)

    @property
    def tls_version(self) -> str | None:
        assert isinstance(self.stream, trio.SSLStream)
        version: str | None = self.stream.version()
        return version


# ---- the gateway under test ----------------------------------------------------------------


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(family, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


# Ports the tests pick for the gateway stay below the kernel's ephemeral range, as in
# peers.py: a port picked there can go to any socket bound to port 0 before the gateway
# binds it.
_SIP_PORTS = SIGNALLING_PORTS
_MEDIA_PORTS = GATEWAY_MEDIA_PORTS


def free_sip_port(hosts: Sequence[str]) -> int:
    """A port free for UDP and TCP on every host (free now; nothing reserves it)."""
    for _attempt in range(200):
        port = random.randint(*_SIP_PORTS)
        if all(_port_free(host, port) for host in hosts):
            return port
    raise RuntimeError("no free SIP port found")


def media_range(size: int = 40) -> tuple[int, int]:
    """An even-aligned port range below the ephemeral ports with every port free now."""
    for _attempt in range(200):
        low = random.randrange(_MEDIA_PORTS[0], _MEDIA_PORTS[1] - size, 2)
        if all(_port_free("127.0.0.1", p) for p in range(low, low + size)):
            return low, low + size - 1
    raise RuntimeError("no free media port range found")


@dataclass(frozen=True)
class GatewaySettings:
    nonce_ttl: float = 300.0
    tcp_idle_timeout: float = 600.0
    min_expires: int = 60
    ipv6: bool = field(default_factory=lambda: has_ipv6_loopback())
    tls: bool = False  # also listen for TLS (on its own port), self-signed certificate
    tls_handshake_timeout: float = 10.0
    media_host6: str = ""  # media sockets of the other family, for IPv4/IPv6 bridging
    cps_per_account: int = 1000
    # More [limits] keys, as TOML lines. The load limits are off unless a test turns them
    # on: in this harness the gateway shares the test's process and event loop, whose CPU
    # use and lateness are the test's as much as the gateway's.
    limits_toml: str = "max_cpu = 0.0\nmax_loop_lag = 0.0"
    extra_toml: str = ""  # appended to the config: more trunks, [routing], ...
    # Network roles: the 127.0.0.1 (and ::1) listeners' role, and an address with UDP and
    # TCP listeners of the carrier role on the same port (empty: none).
    listen_role: str = ""
    carrier_host: str = ""


def gateway_config_text(
    var_dir: Path,
    sip_port: int,
    media: tuple[int, int],
    trunk_port: int,
    settings: GatewaySettings,
    tls_port: int = 0,
) -> str:
    hosts = ["127.0.0.1", "::1"] if settings.ipv6 else ["127.0.0.1"]
    role = settings.listen_role
    listen = [(t, h, sip_port, role) for h in hosts for t in ("udp", "tcp")]
    if settings.tls:
        listen += [("tls", h, tls_port, role) for h in hosts]
    if settings.carrier_host:
        listen += [(t, settings.carrier_host, sip_port, "carrier") for t in ("udp", "tcp")]
    listen_toml = ",\n    ".join(
        f'{{ transport = "{t}", host = "{h}", port = {p}, role = "{r}" }}' for t, h, p, r in listen
    )
    subscribers = "".join(
        textwrap.dedent(
            f"""
            [[subscribers]]
            username = "{user}"
            password = "{password}"
            numbers = ["{NUMBERS[user]}"]
            balance = "1000.00"
            """
        )
        for user, password in PASSWORDS.items()
    )
    return (
        textwrap.dedent(
            f"""
            [general]
            var_dir = "{var_dir}"
            log_level = "warning"

            [sip]
            listen = [
                {listen_toml},
            ]
            auth_algorithms = ["MD5", "SHA-256"]
            nonce_ttl = {settings.nonce_ttl}
            tcp_idle_timeout = {settings.tcp_idle_timeout}
            min_expires = {settings.min_expires}
            tls_handshake_timeout = {settings.tls_handshake_timeout}

            [limits]
            cps_per_account = {settings.cps_per_account}
            {settings.limits_toml.replace(chr(10), chr(10) + " " * 12)}

            [http]
            listen = "127.0.0.1:{free_sip_port(["127.0.0.1"])}"

            [media]
            host = "127.0.0.1"
            host6 = "{settings.media_host6}"
            port_min = {media[0]}
            port_max = {media[1]}

            [[trunks]]
            name = "test-carrier"
            host = "127.0.0.1"
            port = {trunk_port}
            """
        )
        + subscribers
        + settings.extra_toml
    )


@dataclass(eq=False)
class GatewayUnderTest:
    """One configuration and var dir; the gateway can be started, stopped and started again."""

    var_dir: Path
    settings: GatewaySettings
    trunk_port: int
    sip_port: int = 0
    tls_port: int = 0
    config: Config | None = None
    gateway: Gateway | None = None
    _scope: trio.CancelScope | None = None
    _done: trio.Event | None = None
    _nursery: trio.Nursery | None = None

    def __post_init__(self) -> None:
        hosts = ["127.0.0.1", "::1"] if self.settings.ipv6 else ["127.0.0.1"]
        if self.settings.carrier_host:
            hosts.append(self.settings.carrier_host)
        self.sip_port = free_sip_port(hosts)
        if self.settings.tls:
            self.tls_port = free_sip_port(hosts)
            while self.tls_port == self.sip_port:
                self.tls_port = free_sip_port(hosts)
        text = gateway_config_text(
            self.var_dir,
            self.sip_port,
            media_range(),
            self.trunk_port,
            self.settings,
            self.tls_port,
        )
        self.config = parse_config(text, source="test.toml")

    @property
    def udp4(self) -> Address:
        return ("127.0.0.1", self.sip_port)

    @property
    def tcp4(self) -> Address:
        return ("127.0.0.1", self.sip_port)

    @property
    def tls4(self) -> Address:
        return ("127.0.0.1", self.tls_port)

    @property
    def tls_cert(self) -> Path:
        """The self-signed certificate the gateway made (exists once it has started)."""
        return self.var_dir / "tls" / "cert.pem"

    @property
    def udp6(self) -> Address:
        return ("::1", self.sip_port)

    @property
    def tcp6(self) -> Address:
        return ("::1", self.sip_port)

    @property
    def running(self) -> Gateway:
        assert self.gateway is not None, "the gateway is not running"
        return self.gateway

    async def start(self, nursery: trio.Nursery) -> Gateway:
        """Run a new Gateway on this config in `nursery`; return once SIP answers OPTIONS."""
        assert self.config is not None and self.gateway is None
        self._nursery = nursery
        gateway = Gateway(self.config)
        scope, done = trio.CancelScope(), trio.Event()

        async def serve() -> None:
            try:
                with scope:
                    await gateway.serve()
            finally:
                done.set()

        nursery.start_soon(serve)
        self.gateway, self._scope, self._done = gateway, scope, done
        await wait_for_sip(self.udp4)
        return gateway

    async def stop(self) -> None:
        """Cancel the gateway and wait until it has closed its store and sockets."""
        assert self._scope is not None and self._done is not None
        self._scope.cancel()
        await self._done.wait()
        self.gateway = self._scope = self._done = None

    async def restart(self) -> Gateway:
        """Stop the gateway and start a new one on the same config and var dir."""
        assert self._nursery is not None
        await self.stop()
        return await self.start(self._nursery)


async def wait_for_sip(address: Address, timeout: float = 10.0) -> None:
    """Poll with OPTIONS over UDP until the gateway answers."""
    peer = await UdpPeer.open(address)
    try:
        with trio.fail_after(timeout):
            while True:
                request = peer.request("OPTIONS", f"sip:{peer.domain}")
                await peer.send(request)
                try:
                    response = await peer.expect_response(request, timeout=0.1)
                except NoMessage:
                    continue
                if response.status == 200:
                    return
    finally:
        peer.close()


@asynccontextmanager
async def running_gateway(
    var_dir: Path, trunk_port: int, settings: GatewaySettings = GatewaySettings()
) -> AsyncIterator[GatewayUnderTest]:
    async with trio.open_nursery() as nursery:
        under_test = GatewayUnderTest(var_dir, settings, trunk_port)
        await under_test.start(nursery)
        try:
            yield under_test
        finally:
            if under_test.gateway is not None:
                await under_test.stop()
