"""RTP/RTCP relay of one call under Trio: ports, sockets and the packet loops.

A :class:`MediaSession` owns two legs, "a" (caller side) and "b" (callee
side), each with an RTP socket on an even port and an RTCP socket on the next
port (RFC 3550 11). What arrives on one leg leaves through the same stream of
the other leg, toward that leg's peer: the address the peer was latched to,
else the address its SDP announced (RFC 4566 c=/m=, RFC 3605 a=rtcp).
Which sources are accepted is decided by :mod:`gateway.media.latching`, the
sans-IO part; this module only moves bytes.

Structured concurrency (DESIGN rule 2): ``run`` is started with
``nursery.start``, which returns once all four ports are bound, so the SDP
that names them is sent only after they exist; cancelling the scope stops
the loops, closes the sockets and hands the ports back. A caller with a
nursery of its own (the call) uses ``open`` and ``close`` instead, which
binds at once and saves a task and a nursery per call.

Each leg binds on one of the box's media addresses
(:mod:`gateway.media.addresses`), chosen by the leg's network role and its
peer's address family. ``move_leg`` rebinds a leg on another address while the
call runs (a callee route that fell back from an app to a carrier trunk): the
four packet loops run as one group in a cancel scope of the session's, so a
move ends the group that holds the old sockets, starts one on the new pair,
and closes the old pair once the old loops have exited.

The media timeout is not enforced here: the call reads :attr:`last_activity`
and ends itself when the peer has been silent too long.

The per-packet loop reads into one preallocated buffer per socket, drains
what is queued (bounded, for fairness) after each readiness wake, and sends
with the plain non-blocking socket call; ``trio.lowlevel.wait_readable`` and
``wait_writable`` do the waiting. The trio socket wrapper is not used there
because it re-resolves the destination address on every ``sendto``.

Transcoding mode (:meth:`MediaSession.start_transcoding`, when the legs' codecs
differ): the pumps run the first half of the packet step
(:func:`~gateway.media.forwarding.accept_packet`: strict source, SRTP
unprotect, latching) and hand RTP to the leg's inbound
:class:`~gateway.media.transcode.Transcoder` and RTCP to the leg's
:class:`~gateway.media.rtcp_session.LegRtcp` instead of forwarding. One
playout task per direction sleeps until the transcoder's next deadline, pulls
the packets due, SRTP-protects them with the other leg's sender and sends them;
one RTCP task per leg sends the gateway's reports. These tasks live in a cancel
scope of their own inside the call's nursery, so switching back to relay
(a re-INVITE that makes the codecs equal) or to a new transcoding set-up ends
them without leaking. Transcoding runs on Trio's clock, whatever clock the
session was given for latching.

Datagram mode (``configure(leg, datagrams=True)``, for T.38's UDPTL): the leg's
packets are not RTP, so the relay carries them as opaque datagrams through the
per-packet step, which still enforces the strict source and latching.
"""

from __future__ import annotations

import errno
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from gateway.media.addresses import MediaAddress, MediaAddresses, canonical_host
from gateway.media.forwarding import (
    LegPath,
    accept_packet,
    forward_packet,
    protect,
    srtp_drop_reason,
)
from gateway.media.latching import (
    Address,
    DropReason,
    Endpoint,
    Leg,
    SessionState,
    Stream,
    count_drop,
    forward,
    open_window,
    rebind,
)
from gateway.media.rtcp_relayed import RelayedRtcp
from gateway.media.rtcp_session import LegRtcp
from gateway.media.srtp import SrtpDrop, SrtpReceiver, SrtpSender
from gateway.media.transcode import Transcoder
from gateway.net.dscp import DSCP_EF, mark

__all__ = [
    "LocalPorts",
    "MediaSession",
    "MediaTap",
    "PortAllocator",
    "PortPair",
    "PortsExhausted",
    "canonical_host",
]

LocalPorts = dict[str, tuple[int, int]]
# A packet capture's view of the relay: each datagram as on the wire, with its source and
# destination, once as received and once as sent (gateway.control.capture).
MediaTap = Callable[[bytes, Address, Address], None]

# RTP over UDP stays under the path MTU (1500); 2 KiB leaves room and keeps
# the four buffers of a call at 8 KiB. Longer datagrams are dropped, not cut.
_BUFFER_SIZE = 2048
_DIRECTIONS: tuple[tuple[Leg, Leg], ...] = (("a", "b"), ("b", "a"))
# How early a transcoded frame may go out, to serve both directions in one wake.
_PLAYOUT_SLACK = 0.002
# Packets drained per readiness wake before yielding to other calls.
_BATCH = 64
# Bind errors that mean "someone else has this port": try the next pair.
_PORT_TAKEN = frozenset({errno.EADDRINUSE, errno.EACCES})


class PortsExhausted(Exception):
    """No free RTP/RTCP port pair is left in the allocator's range."""


def _udp_socket(
    family: socket.AddressFamily, host: str, port: int, dscp: int = DSCP_EF
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        mark(sock, dscp)
        # Another process's port must make us move on, never share it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(eq=False)
class PortPair:
    """Two bound UDP sockets: RTP on an even port, RTCP on the next one."""

    host: str
    rtp_port: int
    rtcp_port: int
    rtp_socket: socket.socket
    rtcp_socket: socket.socket
    _release: Callable[[int], None] = field(repr=False)
    closed: bool = False

    def close(self) -> None:
        """Close both sockets and give the ports back (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.rtp_socket.close()
        self.rtcp_socket.close()
        self._release(self.rtp_port)


class PortAllocator:
    """Hands out RTP/RTCP port pairs from ``[port_min, port_max]`` on ``host``.

    RTP ports are even and RTCP is RTP + 1 (RFC 3550 11). Allocation walks the
    range round-robin from where the last one stopped, so a port just freed is
    not reused at once (late packets of the old call go nowhere). Ports bound
    by other processes are skipped.
    """

    def __init__(self, host: str, port_min: int, port_max: int, dscp: int = DSCP_EF) -> None:
        if not 1 <= port_min <= port_max <= 65535:
            raise ValueError(
                f"media port range {port_min}-{port_max} is invalid: "
                "need 1 <= port_min <= port_max <= 65535"
            )
        self.family, self.host = canonical_host(host)
        self.dscp = dscp  # marked on RTP and RTCP (gateway.net.dscp)
        self.port_min = port_min
        self.port_max = port_max
        first = port_min + (port_min & 1)
        self._rtp_ports = range(first, port_max, 2)
        if not self._rtp_ports:
            raise ValueError(
                f"media port range {port_min}-{port_max} holds no even/odd RTP/RTCP pair"
            )
        self._cursor = 0
        self._in_use: set[int] = set()

    @property
    def capacity(self) -> int:
        """How many pairs the range holds."""
        return len(self._rtp_ports)

    @property
    def in_use(self) -> int:
        """How many pairs are handed out and not yet closed."""
        return len(self._in_use)

    def allocate(self) -> PortPair:
        """Bind the next free pair; raise :class:`PortsExhausted` when none is left."""
        ports = self._rtp_ports
        for step in range(len(ports)):
            index = (self._cursor + step) % len(ports)
            rtp_port = ports[index]
            if rtp_port in self._in_use:
                continue
            pair = self._try_bind(rtp_port)
            if pair is not None:
                self._cursor = (index + 1) % len(ports)
                self._in_use.add(rtp_port)
                return pair
        raise PortsExhausted(
            f"no free RTP/RTCP port pair in {self.host} {self.port_min}-{self.port_max} "
            f"({self.in_use} of {self.capacity} pairs in use by this gateway)"
        )

    def _try_bind(self, rtp_port: int) -> PortPair | None:
        try:
            rtp = _udp_socket(self.family, self.host, rtp_port, self.dscp)
        except OSError as exc:
            self._raise_unless_taken(exc, rtp_port)
            return None
        try:
            rtcp = _udp_socket(self.family, self.host, rtp_port + 1, self.dscp)
        except OSError as exc:
            rtp.close()
            self._raise_unless_taken(exc, rtp_port + 1)
            return None
        return PortPair(self.host, rtp_port, rtp_port + 1, rtp, rtcp, self._release)

    def _raise_unless_taken(self, exc: OSError, port: int) -> None:
        # "Taken" means another process holds it: skip. Anything else (address
        # not on this host, ...) is a configuration error worth stopping on.
        if exc.errno in _PORT_TAKEN:
            return
        raise OSError(
            exc.errno, f"cannot bind media port {self.host} port {port}: {exc.strerror}"
        ) from exc

    def _release(self, rtp_port: int) -> None:
        self._in_use.discard(rtp_port)


def _address_json(address: Address | None) -> list[Any] | None:
    return None if address is None else [address[0], address[1]]


def _endpoint_stats(endpoint: Endpoint, local: tuple[str, int] | None) -> dict[str, Any]:
    return {
        "local": _address_json(local),
        "expected": _address_json(endpoint.expected),
        "latched": _address_json(endpoint.latched),
        "packets_in": endpoint.packets_in,
        "bytes_in": endpoint.bytes_in,
        "packets_out": endpoint.packets_out,
        "bytes_out": endpoint.bytes_out,
        "drops": {str(reason): count for reason, count in endpoint.drops.items()},
        "last_rx": endpoint.last_rx,
    }


_COUNTERS = ("packets_in", "bytes_in", "packets_out", "bytes_out")


@dataclass(eq=False)
class _Transcoding:
    """One transcoding set-up: per leg the transcoder it feeds and its RTCP, and their tasks."""

    inbound: dict[Leg, Transcoder]
    rtcp: dict[Leg, LegRtcp]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    wake: trio.Event = field(default_factory=trio.Event)

    def receive_rtp(self, leg: Leg, data: bytes, now: float) -> None:
        """Feed the leg's transcoder; wake the playout task if work is now due sooner."""
        transcoder = self.inbound[leg]
        before = transcoder.next_deadline()
        transcoder.push(data, now)
        after = transcoder.next_deadline()
        if after is not None and (before is None or after < before):
            self.wake.set()


@dataclass(eq=False)
class _PumpGroup:
    """The four packet loops over one set of port pairs, in a cancel scope of their own.

    A loop holds its sockets for as long as it runs (the plain loop keeps them in
    locals), so moving a leg ends the whole group and starts a new one; the pairs
    it retired close only once its loops have exited.
    """

    pairs: dict[Leg, PortPair]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    retired: list[PortPair] = field(default_factory=list)


class MediaSession:
    """The relay of one call: legs "a" and "b", RTP and RTCP each.

    ``addresses`` are the media addresses a leg may bind on
    (:class:`~gateway.media.addresses.MediaAddresses`, by network role and
    family). A plain :class:`PortAllocator` stands for role-less addresses:
    ``host_for_sdp`` is the address the call writes into the SDP it sends (the
    public address when the box sits behind a 1:1 NAT; default the allocator's
    host), and ``alternate`` (with its own ``alternate_host_for_sdp``) is an
    allocator of the other address family: a leg opened in that family bridges
    IPv6 on one leg and IPv4 on the other (the packet step does not care which
    family a socket has). ``latch_window`` and ``symmetric_any_host`` are the
    latching policy of :mod:`gateway.media.latching`.
    """

    def __init__(
        self,
        addresses: PortAllocator | MediaAddresses,
        *,
        host_for_sdp: str | None = None,
        latch_window: float,
        clock: Callable[[], float] = trio.current_time,
        symmetric_any_host: bool = True,
        alternate: PortAllocator | None = None,
        alternate_host_for_sdp: str | None = None,
    ) -> None:
        if isinstance(addresses, PortAllocator):
            addresses = MediaAddresses.single(
                addresses, host_for_sdp or addresses.host, alternate, alternate_host_for_sdp
            )
        elif host_for_sdp is not None or alternate is not None or alternate_host_for_sdp:
            raise ValueError(
                "host_for_sdp and alternate go with a PortAllocator: "
                "MediaAddresses carry their own SDP addresses"
            )
        self.addresses = addresses
        self.host_for_sdp = addresses.default.sdp_host
        # The address each leg is bound on (set by open()/run(), changed by move_leg()).
        self._picked: dict[Leg, MediaAddress] = {}
        self._clock = clock
        self.state = SessionState.create(
            latch_window=latch_window, symmetric_any_host=symmetric_any_host
        )
        self._pairs: dict[Leg, PortPair] = {}
        self._pumps: _PumpGroup | None = None
        # Pairs moved away from whose loops may still be exiting; closed by then at the latest.
        self._retired: list[PortPair] = []
        self._started_at: float | None = None
        self._run_called = False
        self._closed = False
        state = self.state
        self.paths: dict[Leg, LegPath] = {
            "a": LegPath(state.a_rtp, state.a_rtcp),
            "b": LegPath(state.b_rtp, state.b_rtcp),
        }
        # Both legs plain: the zero-copy loop; read per wake, so it must be a plain bool.
        self._plain = True
        self._transcoding: _Transcoding | None = None
        self._nursery: trio.Nursery | None = None
        # Set while a capture of the call runs; the loops read it once per wake, so off
        # costs one attribute read per wake and a local None test per packet.
        self.tap: MediaTap | None = None
        # What the peers' RTCP says while relayed (the transcoding path has its own).
        self.relayed_rtcp = RelayedRtcp()

    @property
    def local_ports(self) -> LocalPorts:
        """``{"a": (rtp, rtcp), "b": (rtp, rtcp)}``; valid once ``run`` has started."""
        if not self._pairs:
            raise RuntimeError("media session has no ports yet: start run() first")
        return {leg: (pair.rtp_port, pair.rtcp_port) for leg, pair in self._pairs.items()}

    @property
    def last_activity(self) -> float:
        """Clock time of the last accepted packet on either leg (or of the start).

        The call compares it with its media timeout; the relay never ends a
        call by itself.
        """
        if self._started_at is None:
            raise RuntimeError("media session not started: no activity to report")
        latest = self._started_at
        for endpoint in self._endpoints():
            if endpoint.last_rx is not None and endpoint.last_rx > latest:
                latest = endpoint.last_rx
        return latest

    @property
    def families(self) -> tuple[socket.AddressFamily, ...]:
        """The address families this session can open a role-less leg in."""
        return self.addresses.families()

    def address(self, leg: str) -> MediaAddress:
        """The media address ``leg`` is bound on (before it is: the default one)."""
        return self._picked.get(_as_leg(leg), self.addresses.default)

    def sdp_host(self, leg: str) -> str:
        """The address written into SDP toward ``leg`` (its family is the leg's own)."""
        return self.address(leg).sdp_host

    def set_remote(self, leg: str, host: str, rtp_port: int, rtcp_port: int | None = None) -> None:
        """Record the media address the peer of ``leg`` announced in its SDP.

        ``rtcp_port`` defaults to ``rtp_port + 1``. Port 0 disables the
        stream (RFC 3264 6: a refused stream), which also forgets its latch.
        Otherwise an unspecified host (``0.0.0.0``/``::``, old-style hold,
        RFC 3264 8.4) leaves the current addresses as they are: sending there
        would reach this box itself. A changed address opens a
        latch window toward it (:func:`gateway.media.latching.rebind`); an
        unchanged one keeps the strict latch.
        """
        rtp_ep = self.state.endpoint(_as_leg(leg), "rtp")
        rtcp_ep = self.state.endpoint(_as_leg(leg), "rtcp")
        family, canonical = canonical_host(host)
        mine = self.address(leg).family
        if family != mine:
            raise ValueError(
                f"leg {leg}: remote media address {host} is "
                f"{_family_name(family)} but the leg's media sockets are "
                f"{_family_name(mine)}"
            )
        _check_port(leg, "RTP", rtp_port)
        if rtcp_port is None:
            rtcp_port = rtp_port + 1 if rtp_port else 0
        _check_port(leg, "RTCP", rtcp_port)
        if rtp_port and canonical in ("0.0.0.0", "::"):
            return
        now = self._clock()
        self._rebind(rtp_ep, (canonical, rtp_port) if rtp_port else None, now)
        self._rebind(rtcp_ep, (canonical, rtcp_port) if rtp_port and rtcp_port else None, now)

    @staticmethod
    def _rebind(endpoint: Endpoint, expected: Address | None, now: float) -> None:
        if expected != endpoint.expected:
            rebind(endpoint, expected, now)

    def configure(
        self,
        leg: str,
        *,
        rtcp_mux: bool = False,
        receiver: SrtpReceiver | None = None,
        sender: SrtpSender | None = None,
        payload_types: dict[int, int] | None = None,
        datagrams: bool = False,
    ) -> None:
        """Set what the packet step does for ``leg``: keys, rtcp-mux, payload types.

        ``receiver`` unprotects what the leg's peer sends; ``sender`` protects
        what the relay sends it; ``payload_types`` maps the other leg's payload
        types to this leg's. The caller keeps SRTP contexts when keys have not
        changed (a new context on an old key would reuse packet indexes).
        ``datagrams`` makes the leg carry datagrams that are not RTP (T.38's
        UDPTL) as they are, from its accepted source only; it takes no keys,
        rtcp-mux or payload types.
        """
        if datagrams and (receiver is not None or sender is not None or rtcp_mux or payload_types):
            raise ValueError(
                f"leg {leg}: datagram mode carries bytes as they are: "
                "no SRTP, rtcp-mux or payload types"
            )
        path = self.paths[_as_leg(leg)]
        path.rtcp_mux = rtcp_mux
        path.receiver = receiver
        path.sender = sender
        path.payload_types = dict(payload_types or {})
        path.datagrams = datagrams
        self._update_mode()

    def _update_mode(self) -> None:
        self._plain = self._transcoding is None and self.paths["a"].plain and self.paths["b"].plain

    @property
    def transcoding(self) -> bool:
        """Whether the session transcodes (else it relays)."""
        return self._transcoding is not None

    def start_transcoding(
        self,
        a_to_b: Transcoder,
        b_to_a: Transcoder,
        *,
        rtcp_interval: float | None = None,
    ) -> None:
        """Transcode from now on: ``a_to_b`` takes leg a's RTP, ``b_to_a`` leg b's.

        Replaces a running set-up (its tasks end). ``rtcp_interval`` fixes the
        report interval (tests); by default it is RFC 3550's. Keys, rtcp-mux and
        peers' addresses stay what :meth:`configure` and :meth:`set_remote` say.
        """
        if self._nursery is None:
            raise RuntimeError("media session not started: open() or run() it first")
        now = trio.current_time()
        state = _Transcoding(
            inbound={"a": a_to_b, "b": b_to_a},
            rtcp={
                "a": LegRtcp(a_to_b, b_to_a, now, fixed_interval=rtcp_interval),
                "b": LegRtcp(b_to_a, a_to_b, now, fixed_interval=rtcp_interval),
            },
        )
        self.stop_transcoding()
        self._transcoding = state
        self._update_mode()
        self._nursery.start_soon(self._run_transcoding, state)

    def stop_transcoding(self) -> None:
        """Back to relaying (idempotent): the transcoding tasks end."""
        state, self._transcoding = self._transcoding, None
        if state is not None:
            state.scope.cancel()
        self._update_mode()

    def open_latch_window(self, leg: str) -> None:
        """Restart the latch window of ``leg`` if it has not latched yet.

        For the call to use when the call is answered: many clients start
        sending only then, which may be well after their SDP arrived.
        """
        now = self._clock()
        open_window(self.state.endpoint(_as_leg(leg), "rtp"), now)
        open_window(self.state.endpoint(_as_leg(leg), "rtcp"), now)

    def stats(self) -> dict[str, Any]:
        """Per leg: counters (totals and per stream), drops by reason, addresses."""
        result: dict[str, Any] = {}
        legs: tuple[Leg, ...] = ("a", "b")
        for leg in legs:
            pair = self._pairs.get(leg)
            rtp_local = None if pair is None else (pair.host, pair.rtp_port)
            rtcp_local = None if pair is None else (pair.host, pair.rtcp_port)
            streams = {
                "rtp": _endpoint_stats(self.state.endpoint(leg, "rtp"), rtp_local),
                "rtcp": _endpoint_stats(self.state.endpoint(leg, "rtcp"), rtcp_local),
            }
            totals: dict[str, Any] = {
                name: streams["rtp"][name] + streams["rtcp"][name] for name in _COUNTERS
            }
            drops: dict[str, int] = {}
            for stream_stats in streams.values():
                for reason, count in stream_stats["drops"].items():
                    drops[reason] = drops.get(reason, 0) + count
            result[leg] = {**totals, "drops": drops, **streams}
            result[leg]["rtcp_relayed"] = self.relayed_rtcp.snapshot(leg)
            if self._transcoding is not None:
                result[leg]["transcoding"] = {
                    "in": self._transcoding.inbound[leg].snapshot(),
                    "rtcp": self._transcoding.rtcp[leg].snapshot(),
                }
        return result

    def _endpoints(self) -> tuple[Endpoint, ...]:
        state = self.state
        return (state.a_rtp, state.a_rtcp, state.b_rtp, state.b_rtcp)

    async def run(
        self,
        *,
        families: dict[str, socket.AddressFamily] | None = None,
        roles: dict[str, str] | None = None,
        task_status: trio.TaskStatus[LocalPorts] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind both legs' ports, report them, then relay until cancelled.

        ``families`` and ``roles`` choose each leg's address as for :meth:`open`.
        """
        ports = self._bind(families, roles)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._start_pumps(nursery)
                task_status.started(ports)
        finally:
            self.close()

    def open(
        self,
        nursery: trio.Nursery,
        families: dict[str, socket.AddressFamily] | None = None,
        roles: dict[str, str] | None = None,
    ) -> LocalPorts:
        """Bind both legs' ports and start relaying in ``nursery``; the ports, bound.

        For a caller that already has a nursery (the call's own): the loops run
        in it, with no task of the session's own around them. Call :meth:`close`
        once ``nursery`` has exited, so the sockets close only after their loops
        have ended. Each leg binds on ``addresses.pick(roles[leg], families[leg])``
        (default: role ``""``, the role's first family).
        """
        ports = self._bind(families, roles)
        self._nursery = nursery
        self._start_pumps(nursery)
        return ports

    def _bind(
        self,
        families: dict[str, socket.AddressFamily] | None = None,
        roles: dict[str, str] | None = None,
    ) -> LocalPorts:
        if self._run_called:
            raise RuntimeError("a MediaSession may be started only once (run() or open())")
        self._run_called = True
        legs: tuple[Leg, ...] = ("a", "b")
        for leg in legs:
            # A family the box has no media address in: the leg gets another one,
            # and the offer/answer refuses the peer's address (488).
            self._picked[leg] = self.addresses.pick(
                (roles or {}).get(leg, ""), (families or {}).get(leg)
            )
        a = self._picked["a"].allocator.allocate()
        try:
            b = self._picked["b"].allocator.allocate()
        except BaseException:
            a.close()
            raise
        self._pairs = {"a": a, "b": b}
        self._started_at = self._clock()
        return self.local_ports

    def _start_pumps(self, nursery: trio.Nursery) -> None:
        group = _PumpGroup(dict(self._pairs))
        nursery.start_soon(self._run_pumps, group)
        self._pumps = group

    async def _run_pumps(self, group: _PumpGroup) -> None:
        try:
            if self._closed:
                return  # closed before this group's loops began: its sockets are gone
            with group.scope:
                async with trio.open_nursery() as nursery:
                    for leg in ("a", "b"):
                        for stream in ("rtp", "rtcp"):
                            nursery.start_soon(self._pump, group.pairs, leg, stream)
        finally:
            # The group's loops have all exited: nothing waits on these sockets now.
            for pair in group.retired:
                _close_pair(pair)
                self._retired.remove(pair)

    def move_leg(
        self, leg: str, role: str, family: socket.AddressFamily | None = None
    ) -> tuple[int, int]:
        """Bind ``leg`` on ``addresses.pick(role, family)`` while the relay runs; its ports.

        For a callee leg whose route changed role (an app that did not answer, then
        a carrier trunk). Already there: nothing changes. Else a new pair is bound
        first (:class:`PortsExhausted` leaves everything as it was), the loops
        restart on it and the old pair closes once the old loops have exited. The
        leg forgets its peer's address and latch: call :meth:`set_remote` with the
        new peer's SDP. Its counters, keys and payload types stay as they were.
        """
        side = _as_leg(leg)
        if self._closed:
            raise RuntimeError("media session is closed: cannot move a leg")
        old_group, nursery = self._pumps, self._nursery
        if old_group is None or nursery is None:
            raise RuntimeError("media session not started: open() or run() it first")
        target = self.addresses.pick(role, family)
        old = self._pairs[side]
        if target == self._picked[side]:
            return (old.rtp_port, old.rtcp_port)
        new = target.allocator.allocate()
        pairs = {**self._pairs, side: new}
        group = _PumpGroup(pairs)
        try:
            nursery.start_soon(self._run_pumps, group)
        except BaseException:
            new.close()
            raise
        # From here on nothing can fail: the old group ends and retires the old pair.
        old_group.retired.append(old)
        self._retired.append(old)
        old_group.scope.cancel()
        self._pumps, self._pairs = group, pairs
        self._picked[side] = target
        now = self._clock()
        rebind(self.state.endpoint(side, "rtp"), None, now)
        rebind(self.state.endpoint(side, "rtcp"), None, now)
        return (new.rtp_port, new.rtcp_port)

    def _socket(self, leg: Leg, stream: Stream) -> socket.socket:
        pair = self._pairs[leg]
        return pair.rtcp_socket if stream == "rtcp" else pair.rtp_socket

    def close(self) -> None:
        """Close the sockets and hand the ports back (idempotent; nothing to do unopened).

        Pairs retired by :meth:`move_leg` whose loops have not exited yet close too.
        """
        self._closed = True
        for pair in (*self._pairs.values(), *self._retired):
            _close_pair(pair)

    async def _pump(self, pairs: dict[Leg, PortPair], leg: Leg, stream: Stream) -> None:
        """Relay what arrives on one socket of ``leg`` to the other leg."""
        other: Leg = "b" if leg == "a" else "a"
        rx = pairs[leg].rtcp_socket if stream == "rtcp" else pairs[leg].rtp_socket
        tx = pairs[other].rtcp_socket if stream == "rtcp" else pairs[other].rtp_socket
        src_ep = self.state.endpoint(leg, stream)
        dst_ep = self.state.endpoint(other, stream)
        # One receive buffer per socket for the whole call, whichever path reads it.
        buf = bytearray(_BUFFER_SIZE)
        while True:
            if self._plain:
                observe = self._observe_rtcp if stream == "rtcp" else None
                await self._pump_plain(rx, tx, src_ep, dst_ep, buf, leg, observe)
            elif self._transcoding is not None:
                await self._pump_transcode(rx, leg, stream, self._transcoding, buf)
            else:
                await self._pump_secure(rx, leg, other, stream, buf)

    async def _pump_secure(
        self, rx: socket.socket, leg: Leg, other: Leg, stream: Stream, buf: bytearray
    ) -> None:
        """One wake's worth of packets through :func:`forward_packet` (SRTP, mux, PT map)."""
        src_path, dst_path = self.paths[leg], self.paths[other]
        await trio.lowlevel.wait_readable(rx)
        if self._plain or self._transcoding is not None:
            return  # switched while waiting: what is queued takes the new path
        now = self._clock()
        for _ in range(_BATCH):
            try:
                n, src = rx.recvfrom_into(buf, 0, socket.MSG_TRUNC)
            except OSError:  # nothing queued, or a queued ICMP error
                return
            if n > _BUFFER_SIZE:
                count_drop(src_path.endpoint(stream), DropReason.TOO_LARGE)
                continue
            if self.tap is not None:
                self.tap(bytes(buf[:n]), src[:2], rx.getsockname()[:2])
            out = forward_packet(src_path, dst_path, stream, bytes(buf[:n]), src, now)
            if out is None:
                continue
            if out.clear_rtcp is not None and not src_path.datagrams:
                self._observe_rtcp(leg, out.clear_rtcp)
            await self._send(
                self._socket(other, out.stream),
                out.data,
                out.destination,
                dst_path.endpoint(out.stream),
            )

    async def _pump_transcode(
        self, rx: socket.socket, leg: Leg, stream: Stream, state: _Transcoding, buf: bytearray
    ) -> None:
        """One wake's worth of packets into the transcoding set-up ``state``."""
        path = self.paths[leg]
        await trio.lowlevel.wait_readable(rx)
        if self._transcoding is not state:
            return  # switched while waiting: what is queued takes the new path
        now = self._clock()
        media_now = trio.current_time()
        for _ in range(_BATCH):
            try:
                n, src = rx.recvfrom_into(buf, 0, socket.MSG_TRUNC)
            except OSError:  # nothing queued, or a queued ICMP error
                return
            endpoint = path.endpoint(stream)
            if n > _BUFFER_SIZE:
                count_drop(endpoint, DropReason.TOO_LARGE)
                continue
            if self.tap is not None:
                self.tap(bytes(buf[:n]), src[:2], rx.getsockname()[:2])
            accepted = accept_packet(path, stream, bytes(buf[:n]), src, now)
            if accepted is None:
                continue
            kind, clear = accepted
            endpoint.packets_in += 1
            endpoint.bytes_in += n
            if kind == "rtp":
                state.receive_rtp(leg, clear, media_now)
            else:
                state.rtcp[leg].receive(clear, media_now, time.time())

    async def _run_transcoding(self, state: _Transcoding) -> None:
        with state.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._playout, state)
                for leg in ("a", "b"):
                    nursery.start_soon(self._report, state, leg)

    async def _playout(self, state: _Transcoding) -> None:
        """Send what both directions' transcoders make, each when it is due.

        One task for both directions: a timed wait in Trio costs a cancel scope and an
        exception, the largest per-frame cost after the codecs; the two directions'
        frames are usually due within a millisecond of each other, and one wake then
        serves both (a frame goes out at most ``_PLAYOUT_SLACK`` early).
        """
        transcoders = state.inbound
        while True:
            deadlines = [d for d in (t.next_deadline() for t in transcoders.values()) if d]
            wake = state.wake
            with trio.move_on_at(min(deadlines) if deadlines else math.inf):
                await wake.wait()
            if wake.is_set():
                state.wake = trio.Event()
            now = trio.current_time()
            for leg, other in _DIRECTIONS:
                transcoder = transcoders[leg]
                deadline = transcoder.next_deadline()
                if deadline is not None and now + _PLAYOUT_SLACK >= deadline:
                    packets = transcoder.pull(max(now, deadline))
                    if packets:
                        await self._send_generated(other, "rtp", packets)

    async def _report(self, state: _Transcoding, leg: Leg) -> None:
        """Send the gateway's RTCP reports on ``leg``."""
        rtcp = state.rtcp[leg]
        while True:
            await trio.sleep_until(rtcp.next_deadline())
            packet = rtcp.poll(trio.current_time(), time.time())
            if packet is not None:
                await self._send_generated(leg, "rtcp", [packet])

    async def _send_generated(self, leg: Leg, stream: Stream, packets: list[bytes]) -> None:
        """Protect (when the leg has SRTP) and send packets the gateway made, to ``leg``'s peer."""
        path = self.paths[leg]
        endpoint = path.endpoint(stream)
        destination = endpoint.destination
        if destination is None:
            for _ in packets:
                count_drop(endpoint, DropReason.NO_DESTINATION)
            return
        tx = self._socket(leg, "rtcp" if stream == "rtcp" and not path.rtcp_mux else "rtp")
        for packet in packets:
            try:
                data = protect(path.sender, stream, packet)
            except SrtpDrop as drop:
                count_drop(endpoint, srtp_drop_reason(drop))
                continue
            await self._send(tx, data, destination, endpoint)

    def _observe_rtcp(self, leg: Leg, clear: bytes) -> None:
        """Read relayed RTCP from ``leg``'s peer (already accepted; never drops it).

        Trio's clock, as for transcoding: round trips need real seconds whatever clock
        latching was given.
        """
        self.relayed_rtcp.observe(leg, clear, trio.current_time())

    async def _send(
        self, tx: socket.socket, data: bytes, destination: Address, dst_ep: Endpoint
    ) -> None:
        try:
            tx.sendto(data, destination)
        except BlockingIOError:
            if not await _send_when_writable(tx, memoryview(data), destination):
                count_drop(dst_ep, DropReason.SEND_ERROR)
                return
        except OSError:
            count_drop(dst_ep, DropReason.SEND_ERROR)
            return
        dst_ep.packets_out += 1
        dst_ep.bytes_out += len(data)
        if self.tap is not None:
            self.tap(data, tx.getsockname()[:2], destination)

    async def _pump_plain(
        self,
        rx: socket.socket,
        tx: socket.socket,
        src_ep: Endpoint,
        dst_ep: Endpoint,
        buf: bytearray,
        leg: Leg,
        observe: Callable[[Leg, bytes], None] | None,
    ) -> None:
        """Relay what arrives on ``rx`` out of ``tx`` until the legs stop being plain.

        The hot loop of identical legs: zero-copy from the receive buffer. ``observe``
        is given only to the RTCP sockets' loops (None on RTP: one local test per packet).
        """
        view = memoryview(buf)
        recvfrom_into = rx.recvfrom_into
        sendto = tx.sendto
        clock = self._clock
        wait_readable = trio.lowlevel.wait_readable
        trunc = socket.MSG_TRUNC
        rx_local, tx_local = rx.getsockname()[:2], tx.getsockname()[:2]
        while True:
            await wait_readable(rx)
            if not self._plain:
                return  # configured while waiting: what is queued takes the other path
            now = clock()
            tap = self.tap
            for _ in range(_BATCH):
                try:
                    # MSG_TRUNC: the real length comes back, so oversize shows.
                    n, src = recvfrom_into(buf, 0, trunc)
                except BlockingIOError:
                    break
                except OSError:
                    # A queued ICMP error; the socket stays usable.
                    break
                if n > _BUFFER_SIZE:
                    count_drop(src_ep, DropReason.TOO_LARGE)
                    continue
                if tap is not None:
                    tap(bytes(view[:n]), src[:2], rx_local)
                destination = forward(src_ep, dst_ep, n, src, now, buf[0])
                if destination is None:
                    continue
                if observe is not None:
                    observe(leg, bytes(view[:n]))
                try:
                    sendto(view[:n], destination)
                except BlockingIOError:
                    if not await _send_when_writable(tx, view[:n], destination):
                        count_drop(dst_ep, DropReason.SEND_ERROR)
                        continue
                except OSError:
                    count_drop(dst_ep, DropReason.SEND_ERROR)
                    continue
                dst_ep.packets_out += 1
                dst_ep.bytes_out += n
                if tap is not None:
                    tap(bytes(view[:n]), tx_local, destination)


def _close_pair(pair: PortPair) -> None:
    if pair.closed:
        return
    # Trio must forget the fds before they are closed and reused.
    trio.lowlevel.notify_closing(pair.rtp_socket)
    trio.lowlevel.notify_closing(pair.rtcp_socket)
    pair.close()


async def _send_when_writable(tx: socket.socket, data: memoryview, destination: Address) -> bool:
    # The send buffer was full: wait once for room rather than drop at once.
    await trio.lowlevel.wait_writable(tx)
    try:
        tx.sendto(data, destination)
    except OSError:
        return False
    return True


def _as_leg(leg: str) -> Leg:
    # The call layer passes plain strings; refuse anything but the two legs.
    if leg == "a":
        return "a"
    if leg == "b":
        return "b"
    raise ValueError(f"unknown leg {leg!r}: expected 'a' or 'b'")


def _family_name(family: socket.AddressFamily) -> str:
    return "IPv6" if family == socket.AF_INET6 else "IPv4"


def _check_port(leg: str, what: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"leg {leg}: remote {what} port {port} is out of range 0-65535")
