"""Where a SIP message came from or goes to: a transport, addresses and a connection.

A `Flow` is what RFC 5626 calls a flow: for UDP the (local, remote) address pair,
for TCP and TLS one connection. Responses and requests to a registered contact go back
over the flow the peer used (RFC 3261 18.2.2, RFC 5626 5.3, RFC 5923), because
apps behind NAT cannot be reached any other way.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from gateway.sip.uri import SipUri, UriError

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Flow:
    transport: str  # "udp" | "tcp" | "tls" (a request that came over TLS says "tls")
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
    """Where to send a request that starts a transaction: an address, or a known flow.

    `role` is the network role ("access", "carrier", "mgmt"; "" for none) whose listener
    the request leaves from when no flow is known, so that each role's policy routing
    sees its own source address.
    """

    transport: str
    address: Address
    flow: Flow | None = None
    role: str = ""

    @classmethod
    def for_uri(cls, uri: SipUri) -> Destination:
        """Where a URI with an IP host (or a name to resolve) says to send: RFC 3263 4.1-4.2
        without NAPTR/SRV. `sips:` always means TLS (RFC 3261 26.2.2, RFC 5630 3.1.3), also
        with `;transport=tcp`; a missing port is 5061 for TLS, else 5060 (RFC 3261 19.1.2)."""
        transport = uri.transport
        # A SIPS URI is reached over TLS only (RFC 3261 26.2.2): never UDP, ws or the like.
        allowed = ("tcp", "tls") if uri.scheme == "sips" else DEFAULT_PORTS
        if transport not in allowed:
            raise UriError(f"Unsupported transport for {uri.scheme}: {transport}")
        if uri.scheme == "sips":
            transport = "tls"
        return cls(transport, (uri.host, uri.port or DEFAULT_PORTS[transport]))


# The default port of each transport we speak (RFC 3261 19.1.2, 26.2.2).
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


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
