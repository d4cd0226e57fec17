"""Where a SIP message came from or goes to: a transport, addresses and a connection.

A `Flow` is what RFC 5626 calls a flow: for UDP the (local, remote) address pair,
for TCP one connection. Responses and requests to a registered contact go back
over the flow the peer used (RFC 3261 18.2.2, RFC 5626 5.3, RFC 5923), because
apps behind NAT cannot be reached any other way.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Flow:
    transport: str  # "udp" | "tcp"
    local: Address
    remote: Address
    conn_id: str | None = None  # set for connection-oriented transports

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    @property
    def via_transport(self) -> str:
        return self.transport.upper()


@dataclass(frozen=True, slots=True)
class Destination:
    """Where to send a request that starts a transaction: an address, or a known flow."""

    transport: str
    address: Address
    flow: Flow | None = None


# Called for every Via and Contact we write, on a handful of distinct hosts (our own
# listeners, trunks, peers): parsing the address each time cost ~1.5 % of a call set-up.
@functools.lru_cache(maxsize=4096)
def host_for_uri(host: str) -> str:
    """Hosts in URIs and Via need brackets when they are IPv6 literals (RFC 3261 25.1)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def hostport(address: Address) -> str:
    return f"{host_for_uri(address[0])}:{address[1]}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
