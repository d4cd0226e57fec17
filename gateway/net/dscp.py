"""DSCP marks on the gateway's sockets (RFC 2474, classes of RFC 4594).

The DSCP is the upper six bits of the IPv4 TOS byte (IP_TOS) and of the IPv6 traffic class
(IPV6_TCLASS); the lower two bits are ECN and are left 0. RTP and RTCP are marked EF (46),
SIP CS3 (24), so switches and routers that honour DSCP queue voice ahead of bulk traffic.
"""

from __future__ import annotations

import socket

import trio

__all__ = ["DSCP_CS3", "DSCP_EF", "mark"]

DSCP_EF = 46
DSCP_CS3 = 24


def mark(sock: socket.socket | trio.socket.SocketType, dscp: int) -> None:
    """Set `dscp` on every packet `sock` sends (0 leaves the socket unmarked)."""
    if not 0 <= dscp <= 63:
        raise ValueError(f"DSCP must be from 0 to 63, got {dscp}")
    if dscp == 0:
        return
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, dscp << 2)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, dscp << 2)
