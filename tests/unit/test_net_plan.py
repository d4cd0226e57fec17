"""The network planner (sans-IO) and the `[network]` config checks.

VLAN sub-interfaces are tested here only: the build machines' kernel has no 8021q module,
so the integration tests cannot create one (they run inside the booted image).
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from gateway.config import ConfigError, NetworkConfig, parse_config
from gateway.net.plan import (
    AddAddress,
    AddRoute,
    AddRule,
    Change,
    CreateVlan,
    DeleteVlan,
    PlanError,
    RemoveAddress,
    RemoveRoute,
    RemoveRule,
    SetLink,
    describe,
    inverse,
    plan,
)
from gateway.net.state import (
    PROTO_EDGEGW,
    SCOPE_LINK,
    AddressState,
    LinkState,
    NetState,
    RouteState,
    RuleState,
)

ANY = ipaddress.IPv4Network("0.0.0.0/0")
LAST = 2**32 - 1


def network(text: str) -> NetworkConfig:
    return parse_config(text, source="t.toml").network


ACCESS = """
[[network.interfaces]]
role = "access"
name = "eth0"
addresses = ["203.0.113.1/24"]
routes = [{ to = "198.51.100.0/25", via = "203.0.113.254", metric = 5 }]
"""


def box(*links: LinkState, addresses: tuple[AddressState, ...] = ()) -> NetState:
    return NetState(links=tuple(links), addresses=addresses, routes=(), rules=())


def eth0(up: bool = False) -> LinkState:
    return LinkState("eth0", 2, up, "")


def addr(ifname: str, text: str) -> AddressState:
    return AddressState(ifname, ipaddress.IPv4Interface(text))


def apply_model(state: NetState, changes: list[Change]) -> NetState:
    """What the kernel would hold after `changes` (enough of it for these tests)."""
    links = {link.name: link for link in state.links}
    addresses, routes, rules = set(state.addresses), set(state.routes), set(state.rules)
    for change in changes:
        match change:
            case CreateVlan(name, parent, vid):
                links[name] = LinkState(name, 100 + len(links), False, "vlan", parent, vid)
            case DeleteVlan(name, _parent, _vid):
                del links[name]
            case SetLink(name, up):
                links[name] = dataclasses.replace(links[name], up=up)
            case AddAddress(a):
                assert a not in addresses
                addresses.add(a)
            case RemoveAddress(a):
                addresses.remove(a)
            case AddRoute(r):
                assert not any(r.key == other.key for other in routes), r
                routes.add(r)
            case RemoveRoute(r):
                routes.remove(r)
            case AddRule(rule):
                rules.add(rule)
            case RemoveRule(rule):
                rules.remove(rule)
    return NetState(
        tuple(sorted(links.values())),
        tuple(sorted(addresses)),
        tuple(sorted(routes)),
        tuple(sorted(rules)),
    )


def undo_all(changes: list[Change]) -> list[Change]:
    return [inverse(change) for change in reversed(changes)]


def test_empty_section_plans_nothing() -> None:
    assert plan(NetworkConfig(), box(eth0())) == []


def test_fresh_interface_gets_link_address_table_routes_and_rule_in_order() -> None:
    changes = plan(network(ACCESS), box(eth0()))
    assert [describe(change) for change in changes] == [
        "~ link eth0 up",
        "+ address 203.0.113.1/24 dev eth0",
        "+ route 203.0.113.0/24 dev eth0 src 203.0.113.1 table 101",
        "+ route 198.51.100.0/25 via 203.0.113.254 dev eth0 metric 5 table 101",
        f"+ route unreachable default metric {LAST} table 101",
        "+ rule 1101: from 203.0.113.1 lookup 101",
    ]
    connected = changes[2]
    assert isinstance(connected, AddRoute) and connected.route.scope == SCOPE_LINK
    assert all(c.route.proto == PROTO_EDGEGW for c in changes if isinstance(c, AddRoute))


def test_plan_is_idempotent_and_its_inverse_restores_the_state() -> None:
    config = network(ACCESS)
    before = box(eth0(), LinkState("lo", 1, True, ""))
    changes = plan(config, before)
    after = apply_model(before, changes)
    assert plan(config, after) == []
    assert apply_model(after, undo_all(changes)) == before


def test_stale_addresses_go_last_and_only_our_routes_and_rules_are_removed() -> None:
    stale_ours = RouteState(table=254, dst=ipaddress.IPv4Network("203.0.113.128/25"), dev="eth0")
    foreign = RouteState(
        table=254, dst=ipaddress.IPv4Network("198.51.100.0/24"), dev="eth1", proto=3
    )
    stale_rule = RuleState(priority=1500, table=150, src=ipaddress.IPv4Network("203.0.113.9/32"))
    foreign_rule = RuleState(priority=32766, table=254, protocol=2)
    state = NetState(
        links=(eth0(up=True), LinkState("eth1", 3, True, "")),
        addresses=(addr("eth0", "203.0.113.9/24"), addr("eth1", "198.51.100.1/24")),
        routes=(stale_ours, foreign),
        rules=(stale_rule, foreign_rule),
    )
    changes = plan(network(ACCESS), state)
    assert RemoveRoute(stale_ours) in changes and RemoveRule(stale_rule) in changes
    assert RemoveRoute(foreign) not in changes
    assert RemoveRule(foreign_rule) not in changes
    # The address of the other (unmanaged) link stays; eth0's old one goes, after the adds.
    assert changes[-1] == RemoveAddress(addr("eth0", "203.0.113.9/24"))
    assert RemoveAddress(addr("eth1", "198.51.100.1/24")) not in changes
    after = apply_model(state, changes)
    assert apply_model(after, undo_all(changes)) == apply_model(state, [])


def test_a_foreign_route_on_a_key_we_need_is_replaced() -> None:
    dhcp_default = RouteState(
        table=254, dst=ANY, gateway=ipaddress.IPv4Address("203.0.113.7"), dev="eth0", proto=16
    )
    text = ACCESS.replace(
        'routes = [{ to = "198.51.100.0/25", via = "203.0.113.254", metric = 5 }]',
        'routes = [{ to = "default", via = "203.0.113.254", main = true }]',
    )
    state = NetState((eth0(True),), (addr("eth0", "203.0.113.1/24"),), (dhcp_default,), ())
    changes = plan(network(text), state)
    removal = changes.index(RemoveRoute(dhcp_default))
    addition = next(
        i for i, c in enumerate(changes) if isinstance(c, AddRoute) and c.route.table == 254
    )
    assert removal < addition
    assert apply_model(apply_model(state, changes), undo_all(changes)) == state


def test_vlan_sub_interface_is_created_on_its_parent_and_brought_up() -> None:
    text = ACCESS.replace('name = "eth0"', 'name = "eth0"\nvlan = 100')
    changes = plan(network(text), box(eth0(up=True)))
    assert changes[:3] == [
        CreateVlan("eth0.100", "eth0", 100),
        SetLink("eth0.100", True),
        AddAddress(addr("eth0.100", "203.0.113.1/24")),
    ]
    assert inverse(changes[0]) == DeleteVlan("eth0.100", "eth0", 100)
    after = apply_model(box(eth0(up=True)), changes)
    assert plan(network(text), after) == []
    assert apply_model(after, undo_all(changes)) == box(eth0(up=True))


def test_vlan_plan_errors_name_the_interface() -> None:
    text = ACCESS.replace('name = "eth0"', 'name = "eth0"\nvlan = 100')
    with pytest.raises(PlanError, match="interface eth0 does not exist"):
        plan(network(text), box())
    wrong = LinkState("eth0.100", 9, True, "vlan", "eth0", 200)
    with pytest.raises(PlanError, match=r"eth0\.100 exists but is not VLAN 100 on eth0"):
        plan(network(text), box(eth0(True), wrong))


def test_missing_interface_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="access: interface eth0 does not exist"):
        plan(network(ACCESS), box(LinkState("eth1", 3, True, "")))


def test_inverse_is_an_involution() -> None:
    route = RouteState(table=101, dst=ANY)
    rule = RuleState(priority=1101, table=101)
    for change in (
        CreateVlan("e.5", "e", 5),
        SetLink("e", True),
        AddAddress(addr("e", "203.0.113.1/24")),
        RemoveRoute(route),
        AddRule(rule),
    ):
        assert inverse(inverse(change)) == change
        assert inverse(change) != change


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        ('role = "access"\nname = "eth0"\nvlan = 4095', "vlan", "VLAN id from 1 to 4094"),
        ('role = "access"\nname = "an-interface-name"', "name", "is not an interface name"),
        ('role = "access"\nname = "eth0"\naddresses = ["203.0.113.1"]', "addresses[0]", "prefix"),
        ('role = "access"\nname = "eth0"\naddresses = ["2001:db8::1/64"]', "addresses[0]", "IPv4"),
        ('role = "access"\nname = "eth0"\ntable = 254', "table", "other than 253, 254, 255"),
        ('role = "access"\nname = "eth0"\nroutes = [{ to = "x" }]', "routes[0].to", "default"),
        ('role = "access"\nname = "eth0"\nroutes = [{ to = "default", via = "x" }]', "via", "IPv4"),
        ('role = "wan"\nname = "eth0"', "role", "access"),
    ],
)
def test_bad_interface_config_names_key_and_reason(body: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as failure:
        parse_config(f"[[network.interfaces]]\n{body}\n", source="t.toml")
    assert failure.value.key.startswith("network.interfaces[0]")
    assert failure.value.key.endswith(key) or key == "role"
    assert reason in failure.value.reason


def test_two_interfaces_with_one_role_or_link_are_refused() -> None:
    twice = '[[network.interfaces]]\nrole = "access"\nname = "eth0"\n' * 2
    with pytest.raises(ConfigError, match=r"network.interfaces\[1\]: role access is also used"):
        parse_config(twice, source="t.toml")
    same_link = twice.replace('role = "access"', 'role = "carrier"', 1)
    with pytest.raises(ConfigError, match=r"link eth0 is also used by network\.interfaces"):
        parse_config(same_link, source="t.toml")


def test_dscp_values_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"network\.dscp_rtp: must be a DSCP value from 0 to 63"):
        parse_config("[network]\ndscp_rtp = 64\n", source="t.toml")
