"""Trio sockets for SIP: UDP listeners and stream connections (RFC 3261 18, RFC 5626 3.5.1).

Sending is synchronous from the caller's point of view: UDP datagrams go out
with a non-blocking `sendto`, TCP messages are queued on the connection and a
writer task drains the queue. That keeps the sans-IO output processing free of
awaits, and a slow TCP peer cannot stall anyone but itself. A connection that breaks
(a reset, a failed TLS record) ends alone; its neighbours never see it.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio

from gateway.net.dscp import DSCP_CS3, mark
from gateway.sip.message import KeepAlive, ParseError, StreamFramer
from gateway.transport.flow import Address, Flow

log = structlog.get_logger("edgegw.transport")

# (raw message bytes, flow it came in on)
Receiver = Callable[[bytes, Flow], None]
FramingError = Callable[[ParseError, Flow], None]

_SEND_QUEUE = 256
_CLOSE_GRACE = 1.0
# What a stream raises when the peer or the network broke it; ends that connection only.
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_UDP_BURST = 16
_conn_ids = itertools.count(1)
# Flow ids are stored with TCP bindings. They must never name a connection of a later
# process, or a request for a binding made before a restart would go to whoever got
# the same number after it.
_boot = secrets.token_hex(4)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class UdpListener:
    def __init__(self, host: str, port: int, dscp: int = DSCP_CS3) -> None:
        self._std = socket.socket(_family(host), socket.SOCK_DGRAM)
        self._std.setblocking(False)
        mark(self._std, dscp)
        try:
            self._std.bind((host, port))
        except OSError as exc:
            self._std.close()
            # The bare errno text does not say which of several listeners failed.
            raise OSError(exc.errno, f"cannot bind UDP {host}:{port}: {exc.strerror}") from exc
        self.local: Address = self._std.getsockname()[:2]
        self._sock = trio.socket.from_stdlib_socket(self._std)
        self.send_errors = 0

    def send(self, data: bytes, remote: Address) -> None:
        try:
            self._std.sendto(data, remote)
        except OSError as exc:  # a full buffer or an unreachable peer loses one datagram
            self.send_errors += 1
            log.debug("udp send failed", remote=remote, error=str(exc))

    async def serve(self, receive: Receiver) -> None:
        buf = bytearray(65536)
        view = memoryview(buf)
        while True:
            await trio.lowlevel.wait_readable(self._std)
            # Take what is queued in one go: one wake-up per burst instead of Trio's two
            # checkpoints and an epoll re-arm per datagram, which under load cost more than
            # 10 % of a call set-up. The burst is short so media tasks still run between.
            for _ in range(_UDP_BURST):
                try:
                    size, remote = self._std.recvfrom_into(buf)
                except BlockingIOError:
                    break
                except ConnectionResetError:  # ICMP unreachable from an earlier send
                    continue
                receive(bytes(view[:size]), Flow("udp", self.local, remote[:2]))

    def close(self) -> None:
        self._sock.close()


@dataclass(eq=False)
class TcpConnection:
    conn_id: str
    transport: str  # "tcp" or "tls": what its Flow and our Via say
    local: Address
    remote: Address
    send_channel: trio.MemorySendChannel[bytes]
    receive_channel: trio.MemoryReceiveChannel[bytes]
    stream: trio.abc.Stream | None = None  # set once connected (and, for TLS, handshaken)
    last_activity: float = 0.0
    closed: bool = False
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def flow(self) -> Flow:
        return Flow(self.transport, self.local, self.remote, self.conn_id)

    def send(self, data: bytes) -> bool:
        if self.closed:
            return False
        try:
            self.send_channel.send_nowait(data)
        except trio.WouldBlock:
            # A peer that does not read what it asked for is cut off rather than
            # allowed to make the gateway buffer without bound.
            log.warning("peer not reading, closing", transport=self.transport, remote=self.remote)
            self.cancel.cancel()
            return False
        return True


class SetupFailed(Exception):
    """A connection that never carried SIP (connect or handshake failed); already logged."""


class TcpTransport:
    """Stream listeners plus the table of live connections, in and out (connection reuse).

    Plain TCP as it stands; `gateway.transport.tls.TlsTransport` reuses all of it and only
    puts TLS between the socket and the framing (`_secure`).
    """

    name = "tcp"

    def __init__(self, idle_timeout: float, max_message: int = 65535) -> None:
        self.idle_timeout = idle_timeout
        self.max_message = max_message
        self.by_id: dict[str, TcpConnection] = {}
        self.by_remote: dict[Address, TcpConnection] = {}
        self._nursery: trio.Nursery | None = None
        self._receive: Receiver | None = None
        self._framing_error: FramingError | None = None
        self.listen_addresses: list[Address] = []
        self.broken = 0  # connections that ended in a reset or another stream error
        # DSCP of every connection; accepted ones inherit it from the listening socket.
        self.dscp = DSCP_CS3

    async def serve(
        self,
        listeners: list[tuple[str, int]],
        receive: Receiver,
        framing_error: FramingError,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on `listeners` (possibly none) and run every connection, in and out."""
        self._receive = receive
        self._framing_error = framing_error
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for host, port in listeners:
                socks = await self._listen(host, port)
                for lst in socks:
                    self.listen_addresses.append(lst.socket.getsockname()[:2])
                    nursery.start_soon(self._accept_loop, lst)
            task_status.started()
            await trio.sleep_forever()  # outgoing connections need the nursery too

    async def _listen(self, host: str, port: int) -> list[trio.SocketListener]:
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            # The bare errno text does not say which of several listeners failed.
            raise OSError(
                exc.errno, f"cannot bind {self.name.upper()} {host}:{port}: {exc.strerror}"
            ) from exc
        for listener in listeners:
            mark(listener.socket, self.dscp)
        return listeners

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                self._adopt(stream)

    def _new_connection(self, local: Address, remote: Address) -> TcpConnection:
        send, recv = trio.open_memory_channel[bytes](_SEND_QUEUE)
        conn_id = f"{self.name}-{_boot}-{next(_conn_ids)}"
        conn = TcpConnection(conn_id, self.name, local, remote, send, recv)
        conn.last_activity = trio.current_time()
        self.by_id[conn.conn_id] = conn
        self.by_remote[remote] = conn
        return conn

    def _adopt(self, stream: trio.SocketStream) -> None:
        try:
            local = stream.socket.getsockname()[:2]
            remote = stream.socket.getpeername()[:2]
        except OSError:  # reset between accept() and now: nothing to serve
            stream.socket.close()
            return
        conn = self._new_connection(local, remote)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_connection, conn, stream)

    def send(
        self, data: bytes, remote: Address, conn_id: str | None, local_host: str | None = None
    ) -> bool:
        """Send over the flow named, else a live connection to `remote`, else a new one.

        A new connection binds its source to `local_host` (any port) when given: the
        address of the network role it belongs to, which policy routing keys on."""
        conn = self.by_id.get(conn_id) if conn_id else None
        if conn is None:
            conn = self.by_remote.get(remote)
        if conn is None:
            if conn_id is not None:
                return False  # RFC 5626: the flow is gone; the caller reports 430/408
            conn = self._new_connection(("", 0), remote)
            assert self._nursery is not None
            self._nursery.start_soon(self._run_connection, conn, None, local_host)
        return conn.send(data)

    async def _secure(
        self, conn: TcpConnection, raw: trio.SocketStream, *, inbound: bool
    ) -> trio.abc.Stream:
        """What the framing reads and writes: the socket itself for plain TCP."""
        return raw

    async def _run_connection(
        self, conn: TcpConnection, raw: trio.SocketStream | None, local_host: str | None = None
    ) -> None:
        stream: trio.abc.Stream | None = None
        try:
            with conn.cancel:
                inbound = raw is not None
                if raw is None:
                    raw = await self._connect(conn, local_host)
                stream = await self._secure(conn, raw, inbound=inbound)
                conn.stream = stream
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, conn, stream)
                    await self._reader(conn, stream)
                    nursery.cancel_scope.cancel()
        except SetupFailed:
            stream = raw = None  # nothing was connected, or _secure closed it
        finally:
            conn.closed = True
            self.by_id.pop(conn.conn_id, None)
            if self.by_remote.get(conn.remote) is conn:
                del self.by_remote[conn.remote]
            await self._close(conn, stream or raw)

    async def _connect(self, conn: TcpConnection, local_host: str | None) -> trio.SocketStream:
        try:
            raw = await trio.open_tcp_stream(*conn.remote, local_address=local_host)
        except OSError as exc:
            log.info(
                "connect failed",
                transport=self.name,
                remote=conn.remote,
                local=local_host,
                error=str(exc),
            )
            raise SetupFailed from exc
        conn.local = raw.socket.getsockname()[:2]
        mark(raw.socket, self.dscp)
        return raw

    async def _close(self, conn: TcpConnection, stream: trio.abc.AsyncResource | None) -> None:
        if stream is None:
            return
        if conn.cancel.cancel_called:
            await trio.aclose_forcefully(stream)  # the peer stopped reading: say no goodbye
            return
        # TLS says goodbye (close_notify); a peer that never reads gets a second at most.
        with trio.move_on_after(_CLOSE_GRACE):
            with contextlib.suppress(*_STREAM_ERRORS):
                await stream.aclose()
        await trio.aclose_forcefully(stream)  # a no-op once closed

    async def _writer(self, conn: TcpConnection, stream: trio.abc.Stream) -> None:
        try:
            async for data in conn.receive_channel:
                await stream.send_all(data)
                conn.last_activity = trio.current_time()
        except _STREAM_ERRORS as exc:
            self._broken(conn, exc)
            conn.cancel.cancel()

    async def _reader(self, conn: TcpConnection, stream: trio.abc.Stream) -> None:
        framer = StreamFramer()
        while True:
            deadline = conn.last_activity + self.idle_timeout
            with trio.move_on_at(deadline) as scope:
                try:
                    data = await stream.receive_some(65536)
                except _STREAM_ERRORS as exc:
                    # A reset, or TLS data that fails to decrypt: this connection ends,
                    # and only this one.
                    self._broken(conn, exc)
                    return
            if scope.cancelled_caught:
                if trio.current_time() >= conn.last_activity + self.idle_timeout:
                    return  # idle: close
                continue
            if not data:
                return  # peer closed
            conn.last_activity = trio.current_time()
            framer.feed(bytes(data))  # no copy for the bytes a socket gives
            if not self._drain(framer, conn):
                return

    def _broken(self, conn: TcpConnection, exc: BaseException) -> None:
        self.broken += 1
        cause = exc.__cause__ or exc
        log.info("connection broken", transport=self.name, remote=conn.remote, error=str(cause))

    def _drain(self, framer: StreamFramer, conn: TcpConnection) -> bool:
        assert self._receive is not None and self._framing_error is not None
        while True:
            try:
                item = framer.next_message()
            except ParseError as exc:
                self._framing_error(exc, conn.flow)
                return False
            if item is None:
                return True
            if isinstance(item, KeepAlive):
                if item.pong:
                    conn.send(b"\r\n")
                continue
            self._receive(item, conn.flow)
