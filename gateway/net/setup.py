"""What `edgegw net show` and `edgegw net apply` do, without the command-line parts.

`plan_network` (sans-IO) puts the netlink changes and the firewall ruleset of a config
together; `apply_network` carries them out in one roll-back-able run (netlink first, the
firewall last, then the check); `show_network` describes the kernel's state per role as one
JSON-ready document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from gateway.config import Config
from gateway.net.apply import Check, Step, netlink_steps, run_steps
from gateway.net.firewall import TABLE, NftStep, build_ruleset
from gateway.net.plan import Change, describe, desired_state, plan
from gateway.net.state import TABLE_MAIN, NetState, RouteState, read_state

__all__ = ["NetworkPlan", "apply_network", "plan_network", "read_current", "show_network"]


@dataclass(frozen=True)
class NetworkPlan:
    """Netlink changes, then the firewall ruleset (None: the firewall is left alone)."""

    changes: list[Change]
    ruleset: str | None

    @property
    def managed(self) -> bool:
        return self.ruleset is not None

    def lines(self) -> list[str]:
        lines = [describe(change) for change in self.changes]
        if self.ruleset is not None:
            lines.append(NftStep(self.ruleset).describe())
        return lines


def plan_network(config: Config, state: NetState) -> NetworkPlan:
    """The plan for `config` on `state`; an empty `[network]` plans nothing at all."""
    if not config.network.interfaces:
        return NetworkPlan([], None)
    return NetworkPlan(plan(config.network, state), build_ruleset(config))


def apply_network(ipr: IPRoute, network_plan: NetworkPlan, check: Check | None) -> list[str]:
    """Apply, check, roll back on failure (ApplyError); the steps applied."""
    steps: list[Step] = list(netlink_steps(ipr, network_plan.changes))
    if network_plan.ruleset is not None:
        steps.append(NftStep(network_plan.ruleset))
    return run_steps(steps, check)


def _route(route: RouteState) -> dict[str, Any]:
    return {
        "table": "main" if route.table == TABLE_MAIN else route.table,
        "dst": str(route.dst),
        "via": None if route.gateway is None else str(route.gateway),
        "dev": route.dev,
        "src": None if route.prefsrc is None else str(route.prefsrc),
        "metric": route.metric,
        "proto": route.proto,
    }


def show_network(config: Config, state: NetState, firewall_present: bool) -> dict[str, Any]:
    """Per configured role: its link, addresses, routes (its table and main via it), rules."""
    roles: dict[str, Any] = {}
    for desired in desired_state(config.network):
        link = state.link(desired.link)
        roles[desired.role] = {
            "interface": desired.link,
            "present": link is not None,
            "up": link is not None and link.up,
            "table": desired.table,
            "addresses": [str(a.address) for a in state.addresses_of(desired.link)],
            "wanted_addresses": [str(a.address) for a in desired.addresses],
            "routes": [
                _route(route)
                for route in state.routes
                if route.table == desired.table
                or (route.table == TABLE_MAIN and route.dev == desired.link)
            ],
            "rules": [
                {"priority": r.priority, "from": str(r.src or "all"), "table": r.table}
                for r in state.rules
                if r.table == desired.table
            ],
        }
    return {
        "managed": bool(config.network.interfaces),
        "roles": roles,
        "links": [
            {"name": link.name, "up": link.up, "kind": link.kind or "device"}
            for link in state.links
        ],
        "firewall": {"table": TABLE, "present": firewall_present},
    }


def read_current() -> NetState:
    """The kernel's state in this network namespace."""
    with IPRoute() as ipr:
        return read_state(ipr)
