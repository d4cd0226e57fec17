"""The kernel's network state as typed records, read over rtnetlink with pyroute2.

Only IPv4 is read (the `[network]` section manages IPv4 only): links, IPv4 addresses,
IPv4 unicast and unreachable routes of every table except `local` (255), and IPv4 policy
rules. The records are plain frozen dataclasses so the planner (`gateway.net.plan`) works
on them without any I/O, and tests compare two snapshots for equality.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

__all__ = [
    "PROTO_EDGEGW",
    "SCOPE_LINK",
    "SCOPE_UNIVERSE",
    "TABLE_MAIN",
    "AddressState",
    "LinkState",
    "NetState",
    "RouteState",
    "RuleState",
    "read_state",
]

# rtnetlink "protocol" of the routes and rules edgegw adds (rtm_protocol / FRA_PROTOCOL):
# it marks them as ours, so a later plan may delete them and nothing else. 77 is not
# assigned in iproute2's rt_protos.
PROTO_EDGEGW = 77
TABLE_MAIN = 254
_TABLE_LOCAL = 255
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
_RTN_UNICAST = 1
_RTN_UNREACHABLE = 7
_ROUTE_KINDS = {_RTN_UNICAST: "unicast", _RTN_UNREACHABLE: "unreachable"}
_FR_ACT_TO_TBL = 1
_IFF_UP = 0x1


@dataclass(frozen=True, order=True)
class LinkState:
    """A network interface; `up` is the administrative state (IFF_UP)."""

    name: str
    index: int
    up: bool
    kind: str  # "veth", "vlan", ...; "" for physical devices and loopback
    parent: str | None = None  # the lower device of a VLAN
    vlan_id: int | None = None


@dataclass(frozen=True, order=True)
class AddressState:
    ifname: str
    address: ipaddress.IPv4Interface


@dataclass(frozen=True, order=True)
class RouteState:
    """An IPv4 route. (table, dst, metric) is what the kernel keys it by."""

    table: int
    dst: ipaddress.IPv4Network
    metric: int = 0
    gateway: ipaddress.IPv4Address | None = None
    dev: str | None = None
    prefsrc: ipaddress.IPv4Address | None = None
    scope: int = SCOPE_UNIVERSE
    proto: int = PROTO_EDGEGW
    kind: str = "unicast"  # or "unreachable": the packet is refused, never sent elsewhere

    @property
    def key(self) -> tuple[int, ipaddress.IPv4Network, int]:
        return (self.table, self.dst, self.metric)

    def same_path(self, other: RouteState) -> bool:
        """Same key and same way out; who added it (proto) does not matter."""
        return (self.key, self.gateway, self.dev, self.prefsrc, self.scope, self.kind) == (
            other.key,
            other.gateway,
            other.dev,
            other.prefsrc,
            other.scope,
            other.kind,
        )


@dataclass(frozen=True, order=True)
class RuleState:
    """An IPv4 `from SRC lookup TABLE` rule (src None: from all)."""

    priority: int
    table: int
    src: ipaddress.IPv4Network | None = None
    protocol: int = PROTO_EDGEGW

    def same_rule(self, other: RuleState) -> bool:
        return (self.priority, self.table, self.src) == (other.priority, other.table, other.src)


@dataclass(frozen=True)
class NetState:
    links: tuple[LinkState, ...]
    addresses: tuple[AddressState, ...]
    routes: tuple[RouteState, ...]
    rules: tuple[RuleState, ...]

    def link(self, name: str) -> LinkState | None:
        return next((link for link in self.links if link.name == name), None)

    def addresses_of(self, ifname: str) -> list[AddressState]:
        return [address for address in self.addresses if address.ifname == ifname]


def read_state(ipr: IPRoute) -> NetState:
    """Everything the planner needs, in a stable order."""
    links = [_link(message) for message in ipr.get_links()]
    names = {link.index: link.name for link in links}
    links = [_with_parent(link, names) for link in links]
    addresses = [
        AddressState(
            names.get(message["index"], str(message["index"])),
            ipaddress.IPv4Interface(f"{message.get('IFA_ADDRESS')}/{message['prefixlen']}"),
        )
        for message in ipr.get_addr(family=socket.AF_INET)
    ]
    routes = [
        _route(message, names)
        for message in ipr.get_routes(family=socket.AF_INET)
        if message["type"] in _ROUTE_KINDS and _table(message) != _TABLE_LOCAL
    ]
    rules = [
        _rule(message)
        for message in ipr.get_rules(family=socket.AF_INET)
        if message["action"] == _FR_ACT_TO_TBL
    ]
    return NetState(
        tuple(sorted(links)), tuple(sorted(addresses)), tuple(sorted(routes)), tuple(sorted(rules))
    )


# pyroute2 messages are untyped nested mappings.
def _link(message: Any) -> LinkState:
    info = message.get("IFLA_LINKINFO")
    kind = (info.get("IFLA_INFO_KIND") if info else None) or ""
    vlan_id: int | None = None
    if kind == "vlan":
        data = info.get("IFLA_INFO_DATA")
        vlan_id = data.get("IFLA_VLAN_ID") if data else None
    parent = message.get("IFLA_LINK") if kind == "vlan" else None
    return LinkState(
        name=message.get("IFLA_IFNAME"),
        index=message["index"],
        up=bool(message["flags"] & _IFF_UP),
        kind=kind,
        parent=None if parent is None else str(parent),
        vlan_id=vlan_id,
    )


def _with_parent(link: LinkState, names: dict[int, str]) -> LinkState:
    if link.parent is None:
        return link
    parent = names.get(int(link.parent), link.parent)
    return LinkState(link.name, link.index, link.up, link.kind, parent, link.vlan_id)


def _table(message: Any) -> int:
    table = message.get("RTA_TABLE")
    return int(table if table is not None else message["table"])


def _route(message: Any, names: dict[int, str]) -> RouteState:
    dst = message.get("RTA_DST") or "0.0.0.0"
    gateway = message.get("RTA_GATEWAY")
    prefsrc = message.get("RTA_PREFSRC")
    oif = message.get("RTA_OIF")
    return RouteState(
        table=_table(message),
        dst=ipaddress.IPv4Network(f"{dst}/{message['dst_len']}"),
        metric=int(message.get("RTA_PRIORITY") or 0),
        gateway=None if gateway is None else ipaddress.IPv4Address(gateway),
        dev=None if oif is None else names.get(oif, str(oif)),
        prefsrc=None if prefsrc is None else ipaddress.IPv4Address(prefsrc),
        scope=int(message["scope"]),
        proto=int(message["proto"]),
        kind=_ROUTE_KINDS[message["type"]],
    )


def _rule(message: Any) -> RuleState:
    src = message.get("FRA_SRC")
    table = message.get("FRA_TABLE")
    return RuleState(
        priority=int(message.get("FRA_PRIORITY") or 0),
        table=int(table if table is not None else message["table"]),
        src=None if src is None else ipaddress.IPv4Network(f"{src}/{message['src_len']}"),
        protocol=int(message.get("FRA_PROTOCOL") or 0),
    )
