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
from dataclasses import dataclass

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
    plans = [MediaAddressPlan("", media.host, media.advertised_host or media.host)]
    if media.host6:
        plans.append(MediaAddressPlan("", media.host6, media.advertised_host6 or media.host6))
    explicit = {entry.role for entry in media.addresses}
    for entry in media.addresses:
        plans.append(MediaAddressPlan(entry.role, entry.host, entry.advertised_host or entry.host))
    for interface in config.network.interfaces:
        role = interface.role
        if role in MEDIA_ROLES and role not in explicit and interface.addresses:
            host = str(ipaddress.ip_interface(interface.addresses[0]).ip)
            plans.append(MediaAddressPlan(role, host, host))
    return plans


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
