"""Carry out a network plan, check the result, and roll back on any failure.

A plan is a list of steps that each know how to undo themselves: `NetlinkStep` applies one
`gateway.net.plan` change with pyroute2 and undoes it with the change's inverse;
`gateway.net.firewall.NftStep` swaps the nftables table. `run_steps()` applies them in
order; when one fails, the ones already applied are undone in reverse order. After the last
one the `check` callable runs (e.g. the gateway answering SIP OPTIONS on every role's
address); if it reports a failure, everything is undone as well. Either way the caller gets
an `ApplyError` saying which step or check failed and whether the roll-back was complete.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyroute2 import IPRoute

from gateway.net.plan import (
    AddAddress,
    AddRoute,
    AddRule,
    Change,
    CreateVlan,
    DeleteVlan,
    RemoveAddress,
    RemoveRoute,
    RemoveRule,
    SetLink,
    describe,
    inverse,
)
from gateway.net.state import RouteState, RuleState

__all__ = ["ApplyError", "Check", "NetlinkStep", "Step", "execute", "netlink_steps", "run_steps"]

# Returns None when the applied state works, else what is wrong with it.
Check = Callable[[], str | None]


class Step(Protocol):
    def describe(self) -> str: ...

    def apply(self) -> None: ...

    def undo(self) -> None: ...


class ApplyError(Exception):
    """A step or the check failed; `undone` lists what was rolled back, `undo_errors` what
    could not be (empty: the previous state is back)."""

    def __init__(self, failed: str, reason: str, undone: list[str], undo_errors: list[str]) -> None:
        self.failed = failed
        self.reason = reason
        self.undone = undone
        self.undo_errors = undo_errors
        outcome = (
            "rolled back" if not undo_errors else f"roll-back incomplete: {'; '.join(undo_errors)}"
        )
        super().__init__(f"{failed}: {reason} ({outcome})")


@dataclass
class NetlinkStep:
    ipr: IPRoute
    change: Change
    _text: str = field(init=False)

    def __post_init__(self) -> None:
        self._text = describe(self.change)

    def describe(self) -> str:
        return self._text

    def apply(self) -> None:
        execute(self.ipr, self.change)

    def undo(self) -> None:
        execute(self.ipr, inverse(self.change))


def netlink_steps(ipr: IPRoute, changes: Sequence[Change]) -> list[Step]:
    return [NetlinkStep(ipr, change) for change in changes]


def run_steps(steps: Sequence[Step], check: Check | None = None) -> list[str]:
    """Apply every step, then check; the descriptions applied, or ApplyError (rolled back)."""
    done: list[Step] = []
    for step in steps:
        try:
            step.apply()
        except Exception as exc:  # any failure of a step means: undo, then report it
            raise _rolled_back(step.describe(), _reason(exc), done) from exc
        done.append(step)
    if check is not None:
        problem = check()
        if problem is not None:
            raise _rolled_back("check", problem, done)
    return [step.describe() for step in done]


def _rolled_back(failed: str, reason: str, done: list[Step]) -> ApplyError:
    undone: list[str] = []
    errors: list[str] = []
    for step in reversed(done):
        try:
            step.undo()
        except Exception as exc:  # keep undoing the rest; report every one that failed
            errors.append(f"undo {step.describe()}: {_reason(exc)}")
        else:
            undone.append(step.describe())
    return ApplyError(failed, reason, undone, errors)


def _reason(exc: BaseException) -> str:
    # pyroute2's NetlinkError carries (errno, strerror) in args.
    args = exc.args
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return f"{args[1]} (errno {args[0]})"
    return str(exc) or type(exc).__name__


# -- one change over rtnetlink -----------------------------------------------------------------


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LookupError(f"interface {name} does not exist")
    return int(found[0])


def execute(ipr: IPRoute, change: Change) -> None:
    """Make the kernel carry out one change; raises NetlinkError/LookupError with the reason."""
    match change:
        case CreateVlan(name, parent, vlan_id):
            ipr.link("add", ifname=name, kind="vlan", link=_index(ipr, parent), vlan_id=vlan_id)
        case DeleteVlan(name, _parent, _vlan_id):
            ipr.link("del", index=_index(ipr, name))
        case SetLink(name, up):
            ipr.link("set", index=_index(ipr, name), state="up" if up else "down")
        case AddAddress(address) | RemoveAddress(address):
            command = "add" if isinstance(change, AddAddress) else "del"
            ipr.addr(
                command,
                index=_index(ipr, address.ifname),
                address=str(address.address.ip),
                prefixlen=address.address.network.prefixlen,
            )
        case AddRoute(route) | RemoveRoute(route):
            command = "add" if isinstance(change, AddRoute) else "del"
            ipr.route(command, **_route_arguments(ipr, route))
        case AddRule(rule) | RemoveRule(rule):
            command = "add" if isinstance(change, AddRule) else "del"
            ipr.rule(command, **_rule_arguments(rule))


def _route_arguments(ipr: IPRoute, route: RouteState) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "dst": str(route.dst),
        "table": route.table,
        "scope": route.scope,
        "proto": route.proto,
        "type": route.kind,
    }
    if route.metric:
        arguments["priority"] = route.metric
    if route.gateway is not None:
        arguments["gateway"] = str(route.gateway)
    if route.dev is not None:
        arguments["oif"] = _index(ipr, route.dev)
    if route.prefsrc is not None:
        arguments["prefsrc"] = str(route.prefsrc)
    return arguments


def _rule_arguments(rule: RuleState) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "table": rule.table,
        "priority": rule.priority,
        "protocol": rule.protocol,
    }
    if rule.src is not None:
        arguments["src"] = str(rule.src.network_address)
        arguments["src_len"] = rule.src.prefixlen
    return arguments
