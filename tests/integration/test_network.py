"""`[network]` set-up against the kernel, in network namespaces (needs root).

The gateway namespace G has two veth interfaces, access (toward the app namespace A,
203.0.113.0/24) and carrier (toward C, 198.51.100.0/24), as `tests.integration.netns`
builds them. Each test applies a config inside G and reads back what the kernel reports
(pyroute2, `ip route get`, `nft list table`), or forces a failure part-way and checks that
the state read afterwards equals the state read before, exactly.

The build machines' kernel has no VLAN (8021q) support, so VLAN sub-interfaces are tested
only sans-IO (tests/unit/test_net_plan.py); inside the booted image they are real.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from gateway.config import Config, parse_config
from gateway.net import firewall
from gateway.net.apply import ApplyError
from gateway.net.check import sip_options_check, sip_targets
from gateway.net.plan import AddRoute
from gateway.net.setup import apply_network, plan_network
from gateway.net.state import PROTO_EDGEGW, NetState, read_state
from tests.integration.netns import (
    APP_ADDRESSES,
    CARRIER_ADDRESSES,
    GATEWAY_APP_ADDRESS,
    GATEWAY_CARRIER_ADDRESS,
    EdgeTopology,
    Namespace,
)
from tests.integration.peers import _CLI, gateway_process, sip_ping

# The `edge` fixture (conftest.py) skips with the reason printed when not root.
pytestmark = pytest.mark.root

ACCESS_EXTRA = "203.0.113.5"


def _links(edge: EdgeTopology) -> tuple[str, str]:
    access, carrier = edge.topology.links
    return access.left, carrier.left


def network_toml(edge: EdgeTopology, carrier_via: str = CARRIER_ADDRESSES[0]) -> str:
    access, carrier = _links(edge)
    return f"""
[[network.interfaces]]
role = "access"
name = "{access}"
addresses = ["{GATEWAY_APP_ADDRESS}/24", "{ACCESS_EXTRA}/24"]

[[network.interfaces]]
role = "carrier"
name = "{carrier}"
addresses = ["{GATEWAY_CARRIER_ADDRESS}/24"]
routes = [{{ to = "default", via = "{carrier_via}", main = true }}]
"""


GATEWAY_TOML = f"""
[general]
var_dir = "{{var_dir}}"

[sip]
listen = [
    {{ transport = "udp", host = "{GATEWAY_APP_ADDRESS}", port = 5060 }},
    {{ transport = "udp", host = "{GATEWAY_CARRIER_ADDRESS}", port = 5060 }},
]

[media]
host = "{GATEWAY_APP_ADDRESS}"
port_min = 20000
port_max = 20999
"""


def config_of(text: str) -> Config:
    return parse_config(text, source="test.toml")


def snapshot(namespace: Namespace) -> tuple[NetState, str | None]:
    with namespace.entered(), IPRoute() as ipr:
        return read_state(ipr), firewall.current_table()


def apply_in(namespace: Namespace, config: Config, check_timeout: float | None = None) -> list[str]:
    with namespace.entered(), IPRoute() as ipr:
        check = (
            None if check_timeout is None else sip_options_check(sip_targets(config), check_timeout)
        )
        return apply_network(ipr, plan_network(config, read_state(ipr)), check)


def route_get(namespace: Namespace, destination: str, source: str) -> str:
    done = namespace.run(["ip", "route", "get", destination, "from", source])
    return done.stdout + done.stderr


def test_apply_reaches_the_kernel_and_policy_routes_each_role(edge: EdgeTopology) -> None:
    access, carrier = _links(edge)
    config = config_of(network_toml(edge))
    applied = apply_in(edge.gateway, config)
    assert applied, "the config differs from the topology: there must be changes"

    state, table = snapshot(edge.gateway)
    assert {str(a.address) for a in state.addresses_of(access)} == {
        f"{GATEWAY_APP_ADDRESS}/24",
        f"{ACCESS_EXTRA}/24",
    }
    any_net = ipaddress.IPv4Network("0.0.0.0/0")
    via = ipaddress.IPv4Address(CARRIER_ADDRESSES[0])
    default_routes = {
        (r.table, r.dev, r.proto) for r in state.routes if r.dst == any_net and r.gateway == via
    }
    assert default_routes == {(102, carrier, PROTO_EDGEGW), (254, carrier, PROTO_EDGEGW)}
    table_101 = {
        (str(r.dst), r.kind, r.dev, str(r.prefsrc)) for r in state.routes if r.table == 101
    }
    assert table_101 == {
        ("203.0.113.0/24", "unicast", access, GATEWAY_APP_ADDRESS),
        ("0.0.0.0/0", "unreachable", None, "None"),
    }
    rules = {(r.priority, str(r.src), r.table) for r in state.rules if r.protocol == PROTO_EDGEGW}
    assert rules == {
        (1101, f"{GATEWAY_APP_ADDRESS}/32", 101),
        (1101, f"{ACCESS_EXTRA}/32", 101),
        (1102, f"{GATEWAY_CARRIER_ADDRESS}/32", 102),
    }
    assert table is not None and f'iifname "{access}" jump access' in table

    # Policy routing: from an access address only the access side is reachable; the
    # carrier's address leaves by the carrier interface.
    assert f"dev {access}" in route_get(edge.gateway, APP_ADDRESSES[0], ACCESS_EXTRA)
    assert "No route to host" in route_get(edge.gateway, CARRIER_ADDRESSES[1], GATEWAY_APP_ADDRESS)
    assert f"dev {carrier}" in route_get(
        edge.gateway, CARRIER_ADDRESSES[1], GATEWAY_CARRIER_ADDRESS
    )

    # Applying the same config again changes nothing on the netlink side.
    with edge.gateway.entered(), IPRoute() as ipr:
        assert plan_network(config, read_state(ipr)).changes == []


def test_an_error_part_way_rolls_back_to_the_exact_previous_state(
    edge: EdgeTopology,
) -> None:
    before = snapshot(edge.gateway)
    # The carrier's default route via an address on the access side: the kernel refuses
    # it (Network is unreachable) after addresses and other routes went in.
    config = config_of(network_toml(edge, carrier_via=APP_ADDRESSES[0]))
    with edge.gateway.entered(), IPRoute() as ipr:
        network_plan = plan_network(config, read_state(ipr))
        with pytest.raises(ApplyError) as failure:
            apply_network(ipr, network_plan, None)
    failed_at = next(
        i
        for i, c in enumerate(network_plan.changes)
        if isinstance(c, AddRoute) and c.route.gateway == ipaddress.IPv4Address(APP_ADDRESSES[0])
    )
    assert failure.value.failed.startswith("+ route default via 203.0.113.10")
    assert "unreachable" in failure.value.reason.lower()
    assert len(failure.value.undone) == failed_at >= 3
    assert failure.value.undo_errors == []
    assert snapshot(edge.gateway) == before


def test_a_failing_check_rolls_back_netlink_and_firewall(edge: EdgeTopology) -> None:
    before = snapshot(edge.gateway)
    assert before[1] is None
    config = config_of(network_toml(edge) + GATEWAY_TOML.replace("{var_dir}", "/nonexistent"))
    started = time.monotonic()
    with pytest.raises(ApplyError) as failure:
        apply_in(edge.gateway, config, check_timeout=0.5)  # no gateway runs: no answer
    assert time.monotonic() - started < 5
    assert failure.value.failed == "check"
    assert "access 203.0.113.1:5060" in failure.value.reason
    assert any("firewall" in step for step in failure.value.undone)
    assert snapshot(edge.gateway) == before


@pytest.fixture
def running(edge: EdgeTopology, short_tmp: Path) -> Iterator[Path]:
    """The real gateway in G, listening on both roles' addresses; yields its config file."""
    with (
        edge.gateway.entered(),
        gateway_process(short_tmp, network_toml(edge) + GATEWAY_TOML) as gw,
    ):
        yield gw.config_path


def _udp_probe(namespace: Namespace, host: str, port: int) -> str:
    """'refused' (the packet got in: ICMP port unreachable came back) or 'dropped'."""
    with namespace.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.connect((host, port))
        sock.send(b"probe")
        try:
            sock.recv(100)
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "dropped"
    return "answered"


def test_cli_applies_with_a_passing_check_firewall_drops_and_show_reports(
    edge: EdgeTopology, running: Path
) -> None:
    access, carrier = _links(edge)
    assert _udp_probe(edge.app, GATEWAY_APP_ADDRESS, 9999) == "refused"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return edge.gateway.run([*_CLI, "net", *args, "--config", str(running)], timeout=30)

    dry = cli("apply")
    assert dry.returncode == 0, dry.stderr
    assert f"+ address {ACCESS_EXTRA}/24 dev {access}" in dry.stdout
    assert "apply them with --yes" in dry.stdout
    assert snapshot(edge.gateway)[1] is None  # nothing applied without --yes

    done = cli("apply", "--yes", "--check-timeout", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SIP OPTIONS answered: access 203.0.113.1:5060, carrier 198.51.100.1:5060" in done.stdout

    table = edge.gateway.run(["nft", "list", "table", "inet", "edgegw"]).stdout
    assert "udp dport 20000-20999 accept" in table
    # Through the firewall: SIP is let in (and answered), other ports are dropped silently.
    with edge.app.entered():
        assert sip_ping(GATEWAY_APP_ADDRESS, 5060) is not None
    assert _udp_probe(edge.app, GATEWAY_APP_ADDRESS, 9999) == "dropped"
    assert _udp_probe(edge.carrier, GATEWAY_CARRIER_ADDRESS, 9999) == "dropped"

    shown = cli("show", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["managed"] is True
    assert report["firewall"] == {"table": "inet edgegw", "present": True}
    assert report["roles"]["access"]["interface"] == access
    assert sorted(report["roles"]["access"]["addresses"]) == [
        f"{GATEWAY_APP_ADDRESS}/24",
        f"{ACCESS_EXTRA}/24",
    ]
    assert report["roles"]["carrier"]["rules"] == [
        {"priority": 1102, "from": f"{GATEWAY_CARRIER_ADDRESS}/32", "table": 102}
    ]
    assert any(
        (r["dst"], r["via"], r["dev"], r["table"])
        == ("0.0.0.0/0", CARRIER_ADDRESSES[0], carrier, 102)
        for r in report["roles"]["carrier"]["routes"]
    )


def test_net_show_without_network_section(edge: EdgeTopology) -> None:
    done = edge.gateway.run([*_CLI, "net", "show", "--json"])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["managed"] is False and report["roles"] == {}
    assert report["firewall"]["present"] is False
    assert {link["name"] for link in report["links"]} >= set(_links(edge))


def test_previous_firewall_table_is_restored_on_rollback(edge: EdgeTopology) -> None:
    previous = (
        "table inet edgegw {\n\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n"
        "\t\tudp dport 4444 counter drop\n\t}\n}\n"
    )
    with edge.gateway.entered():
        firewall.load(previous)
    before = snapshot(edge.gateway)
    config = config_of(network_toml(edge) + GATEWAY_TOML.replace("{var_dir}", "/nonexistent"))
    with pytest.raises(ApplyError):
        apply_in(edge.gateway, config, check_timeout=0.2)
    after = snapshot(edge.gateway)
    assert after == before
    assert after[1] is not None and "udp dport 4444" in after[1]
