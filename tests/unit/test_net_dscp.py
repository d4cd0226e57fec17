"""DSCP marks: read back with getsockopt, and seen on a received packet (IP_RECVTOS)."""

from __future__ import annotations

import socket

import pytest
import trio

from gateway.media.relay import PortAllocator
from gateway.net.dscp import DSCP_CS3, DSCP_EF, mark
from gateway.transport.connections import TcpTransport, UdpListener


def tos(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS)


def received_tos(sender: socket.socket) -> int:
    """The TOS byte of a datagram `sender` sends, as the receiving kernel saw it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        receiver.settimeout(2)
        sender.sendto(b"x", receiver.getsockname())
        _data, ancillary, _flags, _addr = receiver.recvmsg(16, socket.CMSG_SPACE(1))
    [(level, kind, value)] = ancillary
    assert (level, kind) == (socket.IPPROTO_IP, socket.IP_TOS)
    return value[0]


def test_rtp_and_rtcp_sockets_are_marked_ef() -> None:
    pair = PortAllocator("127.0.0.1", 40000, 40099).allocate()
    try:
        assert tos(pair.rtp_socket) == tos(pair.rtcp_socket) == DSCP_EF << 2
        assert received_tos(pair.rtp_socket) == 46 << 2
    finally:
        pair.close()


def test_configured_dscp_replaces_the_default() -> None:
    pair = PortAllocator("127.0.0.1", 40100, 40199, dscp=34).allocate()
    try:
        assert received_tos(pair.rtp_socket) == 34 << 2
    finally:
        pair.close()


async def test_sip_udp_listener_is_marked_cs3() -> None:
    listener = UdpListener("127.0.0.1", 0)
    try:
        assert listener._std.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == DSCP_CS3 << 2
        assert received_tos(listener._std) == 24 << 2
    finally:
        listener.close()


async def test_sip_tcp_listener_and_accepted_connection_are_marked() -> None:
    transport = TcpTransport(idle_timeout=5)
    listeners = await transport._listen("127.0.0.1", 0)
    try:
        [listener] = listeners
        assert listener.socket.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == DSCP_CS3 << 2
        client = await trio.open_tcp_stream(*listener.socket.getsockname()[:2])
        accepted = await listener.accept()
        # Linux copies the listener's TOS to each connection it accepts.
        assert accepted.socket.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == DSCP_CS3 << 2
        await client.aclose()
        await accepted.aclose()
    finally:
        for lst in listeners:
            await lst.aclose()


def test_ipv6_sockets_get_the_traffic_class() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        mark(sock, DSCP_EF)
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS) == DSCP_EF << 2


def test_out_of_range_dscp_is_refused() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        pytest.raises(ValueError, match="DSCP must be from 0 to 63, got 64"),
    ):
        mark(sock, 64)
