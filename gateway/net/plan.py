"""From the kernel's current network state to the `[network]` config's: an ordered plan.

Sans-IO: `plan(network, state)` takes the config and a `NetState` snapshot and returns the
changes (typed records) that make the kernel hold the desired state; `inverse(change)` is
the change that undoes one, so a plan applied in part can be rolled back exactly.

What a role's interface gets:
* the link (`NAME`, or the VLAN sub-interface `NAME.VID` on `NAME`), set up;
* its addresses; other IPv4 addresses on that link are removed;
* policy routing: a table of its own holding the connected network of each address (with
  the address as preferred source) and the role's static routes, and a rule
  `from ADDRESS lookup TABLE` per address, so replies and traffic sourced from a role's
  address leave through that role's interface whatever the main table says;
* static routes marked `main` also go into the main table;
* an `unreachable default` at the highest metric closes each role's table, so traffic from
  a role's address that no route of the role covers is refused rather than falling
  through to the main table and leaving by another role's interface.

Routes and rules edgegw adds carry protocol `PROTO_EDGEGW`. Stale ones (ours, or anything
in a role's table) are removed; routes and rules of other owners are left alone unless they
collide with a desired one on the kernel's key. Removals of addresses come last, so the box
stays reachable on the new addresses before the old ones go.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from gateway.config import NetworkConfig, NetworkInterfaceConfig
from gateway.net.state import (
    PROTO_EDGEGW,
    SCOPE_LINK,
    SCOPE_UNIVERSE,
    TABLE_MAIN,
    AddressState,
    NetState,
    RouteState,
    RuleState,
)

__all__ = [
    "AddAddress",
    "AddRoute",
    "AddRule",
    "Change",
    "CreateVlan",
    "DeleteVlan",
    "Desired",
    "PlanError",
    "RemoveAddress",
    "RemoveRoute",
    "RemoveRule",
    "SetLink",
    "describe",
    "desired_state",
    "inverse",
    "plan",
]


class PlanError(ValueError):
    """The config cannot be planned on this box (e.g. an interface it names does not exist)."""


@dataclass(frozen=True)
class CreateVlan:
    name: str
    parent: str
    vlan_id: int


@dataclass(frozen=True)
class DeleteVlan:
    name: str
    parent: str
    vlan_id: int


@dataclass(frozen=True)
class SetLink:
    name: str
    up: bool


@dataclass(frozen=True)
class AddAddress:
    address: AddressState


@dataclass(frozen=True)
class RemoveAddress:
    address: AddressState


@dataclass(frozen=True)
class AddRoute:
    route: RouteState


@dataclass(frozen=True)
class RemoveRoute:
    route: RouteState


@dataclass(frozen=True)
class AddRule:
    rule: RuleState


@dataclass(frozen=True)
class RemoveRule:
    rule: RuleState


Change = (
    CreateVlan
    | DeleteVlan
    | SetLink
    | AddAddress
    | RemoveAddress
    | AddRoute
    | RemoveRoute
    | AddRule
    | RemoveRule
)


def inverse(change: Change) -> Change:
    """The change that undoes `change` on the state it was applied to."""
    match change:
        case CreateVlan(name, parent, vlan_id):
            return DeleteVlan(name, parent, vlan_id)
        case DeleteVlan(name, parent, vlan_id):
            return CreateVlan(name, parent, vlan_id)
        case SetLink(name, up):
            return SetLink(name, not up)
        case AddAddress(address):
            return RemoveAddress(address)
        case RemoveAddress(address):
            return AddAddress(address)
        case AddRoute(route):
            return RemoveRoute(route)
        case RemoveRoute(route):
            return AddRoute(route)
        case AddRule(rule):
            return RemoveRule(rule)
        case RemoveRule(rule):
            return AddRule(rule)


def describe(change: Change) -> str:
    """One line in `ip` command terms, prefixed + (adds) or - (removes)."""
    match change:
        case CreateVlan(name, parent, vlan_id):
            return f"+ link {name} (VLAN {vlan_id} on {parent})"
        case DeleteVlan(name, parent, vlan_id):
            return f"- link {name} (VLAN {vlan_id} on {parent})"
        case SetLink(name, up):
            return f"~ link {name} {'up' if up else 'down'}"
        case AddAddress(address):
            return f"+ address {address.address} dev {address.ifname}"
        case RemoveAddress(address):
            return f"- address {address.address} dev {address.ifname}"
        case AddRoute(route):
            return f"+ route {_route_text(route)}"
        case RemoveRoute(route):
            return f"- route {_route_text(route)}"
        case AddRule(rule):
            return f"+ rule {_rule_text(rule)}"
        case RemoveRule(rule):
            return f"- rule {_rule_text(rule)}"


def _route_text(route: RouteState) -> str:
    dst = "default" if route.dst.prefixlen == 0 else str(route.dst)
    parts = [dst] if route.kind == "unicast" else [route.kind, dst]
    if route.gateway is not None:
        parts.append(f"via {route.gateway}")
    if route.dev is not None:
        parts.append(f"dev {route.dev}")
    if route.prefsrc is not None:
        parts.append(f"src {route.prefsrc}")
    if route.metric:
        parts.append(f"metric {route.metric}")
    parts.append("table main" if route.table == TABLE_MAIN else f"table {route.table}")
    return " ".join(parts)


def _rule_text(rule: RuleState) -> str:
    source = "all" if rule.src is None else str(rule.src.network_address)
    if rule.src is not None and rule.src.prefixlen != 32:
        source = str(rule.src)
    return f"{rule.priority}: from {source} lookup {rule.table}"


# -- the desired state -------------------------------------------------------------------------


@dataclass(frozen=True)
class Desired:
    """What one role's interface should hold."""

    role: Literal["access", "carrier", "mgmt"]
    link: str
    parent: str | None
    vlan_id: int | None
    table: int
    addresses: tuple[AddressState, ...]
    routes: tuple[RouteState, ...]
    rules: tuple[RuleState, ...]


_ANY = ipaddress.IPv4Network("0.0.0.0/0")
_LAST_METRIC = 2**32 - 1


def desired_state(network: NetworkConfig) -> list[Desired]:
    """Each configured role's links, addresses, routes and rules."""
    return [_desired(interface) for interface in network.interfaces]


def _desired(interface: NetworkInterfaceConfig) -> Desired:
    link = interface.link_name
    table = interface.routing_table
    addresses = tuple(
        AddressState(link, ipaddress.IPv4Interface(text)) for text in interface.addresses
    )
    # One connected route per network (the kernel keys routes by table, dst, metric); its
    # preferred source is the first address given in that network.
    first_in_network: dict[ipaddress.IPv4Network, ipaddress.IPv4Address] = {}
    for address in addresses:
        first_in_network.setdefault(address.address.network, address.address.ip)
    connected = tuple(
        RouteState(table=table, dst=network, dev=link, prefsrc=source, scope=SCOPE_LINK)
        for network, source in first_in_network.items()
    )
    static: list[RouteState] = []
    for route in interface.routes:
        dst = _ANY if route.to == "default" else ipaddress.IPv4Network(route.to)
        gateway = ipaddress.IPv4Address(route.via) if route.via else None
        scope = SCOPE_UNIVERSE if gateway is not None else SCOPE_LINK
        tables = (table, TABLE_MAIN) if route.main else (table,)
        static += [
            RouteState(
                table=t, dst=dst, metric=route.metric, gateway=gateway, dev=link, scope=scope
            )
            for t in tables
        ]
    # The last resort of the role's table (see the module docstring).
    closing = RouteState(
        table=table, dst=_ANY, metric=_LAST_METRIC, scope=SCOPE_UNIVERSE, kind="unreachable"
    )
    rules = tuple(
        RuleState(
            priority=interface.priority,
            table=table,
            src=ipaddress.IPv4Network(f"{address.address.ip}/32"),
        )
        for address in addresses
    )
    return Desired(
        role=interface.role,
        link=link,
        parent=interface.name if interface.vlan else None,
        vlan_id=interface.vlan or None,
        table=table,
        addresses=addresses,
        routes=(*connected, *static, closing),
        rules=rules,
    )


# -- the diff ----------------------------------------------------------------------------------


def plan(network: NetworkConfig, state: NetState) -> list[Change]:
    """The ordered changes that take `state` to what `network` asks for (empty: nothing)."""
    wanted = desired_state(network)
    if not wanted:
        return []
    return [
        *_link_changes(wanted, state),
        *_address_additions(wanted, state),
        *_rule_removals(wanted, state),
        *_route_removals(wanted, state),
        *_route_additions(wanted, state),
        *_rule_additions(wanted, state),
        *_address_removals(wanted, state),
    ]


def _link_changes(wanted: list[Desired], state: NetState) -> Iterator[Change]:
    for desired in wanted:
        if desired.parent is not None:
            yield from _vlan_changes(desired, state)
            continue
        link = state.link(desired.link)
        if link is None:
            raise PlanError(f"{desired.role}: interface {desired.link} does not exist")
        if not link.up:
            yield SetLink(desired.link, True)


def _vlan_changes(desired: Desired, state: NetState) -> Iterator[Change]:
    assert desired.parent is not None and desired.vlan_id is not None
    parent = state.link(desired.parent)
    if parent is None:
        raise PlanError(f"{desired.role}: interface {desired.parent} does not exist")
    if not parent.up:
        yield SetLink(parent.name, True)
    link = state.link(desired.link)
    if link is not None and (link.kind, link.parent, link.vlan_id) != (
        "vlan",
        desired.parent,
        desired.vlan_id,
    ):
        raise PlanError(
            f"{desired.role}: {desired.link} exists but is not VLAN {desired.vlan_id} "
            f"on {desired.parent} (kind {link.kind or 'device'}): remove or rename it"
        )
    if link is None:
        yield CreateVlan(desired.link, desired.parent, desired.vlan_id)
    if link is None or not link.up:
        yield SetLink(desired.link, True)


def _address_additions(wanted: list[Desired], state: NetState) -> Iterator[Change]:
    present = set(state.addresses)
    for desired in wanted:
        yield from (AddAddress(a) for a in desired.addresses if a not in present)


def _address_removals(wanted: list[Desired], state: NetState) -> Iterator[Change]:
    for desired in wanted:
        keep = set(desired.addresses)
        yield from (RemoveAddress(a) for a in state.addresses_of(desired.link) if a not in keep)


def _owned_tables(wanted: list[Desired]) -> set[int]:
    return {desired.table for desired in wanted}


def _wanted_routes(wanted: list[Desired]) -> list[RouteState]:
    return [route for desired in wanted for route in desired.routes]


def _route_removals(wanted: list[Desired], state: NetState) -> Iterator[Change]:
    routes = _wanted_routes(wanted)
    tables = _owned_tables(wanted)
    for current in state.routes:
        if any(current.same_path(route) for route in routes):
            continue
        ours = current.proto == PROTO_EDGEGW or current.table in tables
        # Another owner's route on a key we need must go, or ours cannot be added.
        collides = any(current.key == route.key for route in routes)
        if ours or collides:
            yield RemoveRoute(current)


def _route_additions(wanted: list[Desired], state: NetState) -> Iterator[Change]:
    for route in _wanted_routes(wanted):
        if not any(current.same_path(route) for current in state.routes):
            yield AddRoute(route)


def _wanted_rules(wanted: list[Desired]) -> list[RuleState]:
    return [rule for desired in wanted for rule in desired.rules]


def _rule_removals(wanted: list[Desired], state: NetState) -> Iterator[Change]:
    rules = _wanted_rules(wanted)
    tables = _owned_tables(wanted)
    for current in state.rules:
        if any(current.same_rule(rule) for rule in rules):
            continue
        if current.protocol == PROTO_EDGEGW or current.table in tables:
            yield RemoveRule(current)


def _rule_additions(wanted: list[Desired], state: NetState) -> Iterator[Change]:
    for rule in _wanted_rules(wanted):
        if not any(current.same_rule(rule) for current in state.rules):
            yield AddRule(rule)
