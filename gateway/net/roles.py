"""Which network role each of the gateway's own addresses serves, for SIP and for media.

The box has interfaces by role ([network]: access toward the apps, carrier toward the
interconnect, mgmt). Policy routing sends a packet out of the interface its source
address belongs to, so what the gateway sends must leave from the right address: SIP to
a trunk from a carrier listener, a call leg's RTP toward a trunk from a carrier media
address, and toward apps from access ones (the way rtpengine's named interfaces are
picked per leg).

`address_roles` maps each address to its role: the [network] interface holding it, or a
listener's explicit `role`. `media_addresses` lists the media addresses: first the
role-less `media.host` (and `host6`), the default; then each role's, from
`[[media.addresses]]`, else the first address of the role's interface. mgmt carries no
media.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import structlog

from gateway.config import Config
from gateway.media.addresses import MediaAddress, MediaAddresses, canonical_host
from gateway.media.relay import PortAllocator

__all__ = [
    "MEDIA_ROLES",
    "MediaAddressPlan",
    "address_roles",
    "media_addresses",
    "media_addresses_for",
]

MEDIA_ROLES = ("access", "carrier")

log = structlog.get_logger("edgegw.net")


@dataclass(frozen=True)
class MediaAddressPlan:
    """One media address to bind: its role ("" for none), host, and the host for SDP."""

    role: str
    host: str
    sdp_host: str


def _interface_addresses(config: Config) -> dict[str, str]:
    roles: dict[str, str] = {}
    for interface in config.network.interfaces:
        for address in interface.addresses:
            roles.setdefault(str(ipaddress.ip_interface(address).ip), interface.role)
    return roles


def address_roles(config: Config) -> dict[str, str]:
    """Address -> role, for every address the [network] interfaces or listeners name."""
    roles = _interface_addresses(config)
    for listen in config.sip.listen:
        if listen.role:
            roles[listen.host] = listen.role
    return roles


def media_addresses(config: Config) -> list[MediaAddressPlan]:
    """The media addresses to bind, the role-less default first."""
    media = config.media
    plans = [MediaAddressPlan("", media.host, _for_sdp(media.host, media.advertised_host))]
    if media.host6:
        plans.append(
            MediaAddressPlan("", media.host6, _for_sdp(media.host6, media.advertised_host6))
        )
    explicit = {entry.role for entry in media.addresses}
    for entry in media.addresses:
        plans.append(MediaAddressPlan(entry.role, entry.host, entry.advertised_host or entry.host))
    for interface in config.network.interfaces:
        role = interface.role
        if role in MEDIA_ROLES and role not in explicit and interface.addresses:
            host = str(ipaddress.ip_interface(interface.addresses[0]).ip)
            plans.append(MediaAddressPlan(role, host, host))
    return plans


# Where the source-address probe "connects": a documentation address (RFC 5737, RFC 3849)
# that only the default route covers. A UDP connect sends nothing; it only asks the kernel
# which source address it would use.
_PROBES = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


def _for_sdp(host: str, advertised: str) -> str:
    """The address SDP names for media bound on ``host``: ``advertised``, else ``host``;
    for a wildcard host the box's own source address toward the default route (SDP with
    0.0.0.0 would mean "no media", RFC 3264 8.4), as a container with an unknown address
    needs. With no default route the wildcard stays, and a warning says what to set."""
    if advertised:
        return advertised
    family, canonical = canonical_host(host)
    if canonical not in ("0.0.0.0", "::"):
        return host
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((_PROBES[family], 9))
            found = str(probe.getsockname()[0])
    except OSError as exc:
        log.warning(
            "media on a wildcard address with no default route: set media.advertised_host",
            host=host,
            error=str(exc),
        )
        return host
    log.info("media address for SDP taken from the default route", host=host, sdp=found)
    return found


def media_addresses_for(config: Config, reuse: MediaAddresses | None = None) -> MediaAddresses:
    """A port allocator per media address, all on the one port range. ``reuse``: the
    running gateway's, whose allocators (and the ports calls hold) carry over a reload
    that changes only what SDP says (`advertised_host`)."""
    media = config.media
    running = {(a.role, a.allocator.host): a.allocator for a in reuse or ()}
    addresses = []
    for plan in media_addresses(config):
        allocator = running.get((plan.role, canonical_host(plan.host)[1])) or PortAllocator(
            plan.host, media.port_min, media.port_max, dscp=config.network.dscp_rtp
        )
        addresses.append(MediaAddress(plan.role, allocator, plan.sdp_host))
    return MediaAddresses(addresses)
