"""Network namespaces for integration tests: named namespaces, veth links, processes inside.

`Topology` is a context manager that creates namespaces named `egw-<random>-<role>`
(unique per test), veth pairs between them (or both ends in one namespace, for a client
such as baresip that refuses to run on loopback alone), addresses and routes, all through
pyroute2. Only 198.51.100.0/24 and 203.0.113.0/24 (RFC 5737 documentation ranges) are
accepted: the build machines use 192.0.2.0/24 themselves. On exit, even when the test
failed, every process still inside its namespaces is killed (they are ours: the names are
unique) and every namespace and veth it made is removed.

`Namespace.popen()` runs a command inside (`ip netns exec`); `Namespace.entered()`
switches the calling thread into the namespace for a while, so sockets it opens and
processes it starts (e.g. `peers.gateway_process`) live there.

`edge_topology()` builds the layout the gateway tests use: the gateway in G with one
interface toward the app namespace A (203.0.113.0/24) and one toward the carrier
namespace C (198.51.100.0/24).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetNS, netns

ALLOWED_NETWORKS = (
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("203.0.113.0/24"),
)
PREFIX = "egw-"
NETNS_DIR = Path("/var/run/netns")


class NetnsError(RuntimeError):
    """A topology step failed; the message names the namespace or link and the reason."""


def root_skip_reason() -> str | None:
    """Why namespace tests cannot run here (a skip reason), or None when they can."""
    if os.geteuid() != 0:
        return "needs root: network namespaces"
    return None


def check_address(address: str) -> ipaddress.IPv4Interface:
    """`address` ("A.B.C.D/len") if it lies in one of the allowed test ranges."""
    try:
        interface = ipaddress.IPv4Interface(address)
    except ValueError as exc:
        raise NetnsError(f"{address!r}: not an IPv4 address with prefix length") from exc
    if "/" not in address:
        raise NetnsError(f"{address!r}: give the prefix length, e.g. {address}/24")
    if not any(interface.network.subnet_of(net) for net in ALLOWED_NETWORKS):
        allowed = " or ".join(str(net) for net in ALLOWED_NETWORKS)
        raise NetnsError(f"{address}: test topologies use only {allowed}")
    return interface


@dataclass
class Namespace:
    """One network namespace of a topology."""

    name: str
    role: str
    addresses: list[ipaddress.IPv4Interface] = field(default_factory=list)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def address(self, index: int = 0) -> str:
        """The `index`-th address given to this namespace (without prefix length)."""
        return str(self.addresses[index].ip)

    def command(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def popen(self, args: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
        """Start `args` inside the namespace; killed when the topology closes.

        `ip netns exec` execs the command in its own process, so the Popen's pid is the
        command's pid.
        """
        process = subprocess.Popen(self.command(args), **options)
        self.processes.append(process)
        return process

    def run(self, args: Sequence[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run `args` inside to completion (text output, never raises on exit code)."""
        return subprocess.run(
            self.command(args), capture_output=True, text=True, timeout=timeout, check=False
        )

    @contextlib.contextmanager
    def entered(self) -> Iterator[Namespace]:
        """Run the block with the calling thread inside this namespace.

        setns(2) on a network namespace changes only the calling thread; the thread's own
        namespace is restored afterwards whatever happens in the block.
        """
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            netns.setns(self.name, flags=0)
            try:
                yield self
            finally:
                netns.setns(home)
        finally:
            os.close(home)

    def pids(self) -> list[int]:
        """Every process whose network namespace is this one."""
        done = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in done.stdout.split()]


@dataclass(frozen=True)
class Link:
    """A veth pair: `left` in namespace `a`, `right` in namespace `b`."""

    a: Namespace
    left: str
    b: Namespace
    right: str


class Topology:
    """Namespaces and veth links made for one test; `close()` (or the `with` end) removes them."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.tag = f"{prefix}{secrets.token_hex(3)}"
        self.namespaces: list[Namespace] = []
        self.links: list[Link] = []
        self._veth_names: list[str] = []

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespace(self, role: str) -> Namespace:
        """A new namespace `egw-<random>-<role>` with loopback up."""
        name = f"{self.tag}-{role}"
        if any(ns.name == name for ns in self.namespaces):
            raise NetnsError(f"{name}: this topology already has a namespace {role!r}")
        try:
            netns.create(name)
        except OSError as exc:
            raise NetnsError(f"{name}: cannot create the namespace: {exc}") from exc
        namespace = Namespace(name, role)
        self.namespaces.append(namespace)
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        return namespace

    def link(
        self,
        a: Namespace,
        a_addresses: Sequence[str],
        b: Namespace,
        b_addresses: Sequence[str],
    ) -> Link:
        """A veth pair from `a` to `b` (the same namespace is allowed), addressed and up."""
        checked_a = [check_address(address) for address in a_addresses]
        checked_b = [check_address(address) for address in b_addresses]
        # Interface names are at most 15 bytes: "<6 hex><index><a|b>" keeps them short
        # and unique per topology.
        index = len(self.links)
        left, right = f"v{self.tag[-6:]}{index}a", f"v{self.tag[-6:]}{index}b"
        self._veth_names += [left, right]
        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=left, kind="veth", peer=right)
                ipr.link("set", index=ipr.link_lookup(ifname=left)[0], net_ns_fd=a.name)
                ipr.link("set", index=ipr.link_lookup(ifname=right)[0], net_ns_fd=b.name)
            self._configure(a, left, checked_a)
            self._configure(b, right, checked_b)
        except Exception as exc:
            raise NetnsError(f"veth {left}/{right} ({a.name} - {b.name}): {exc}") from exc
        link = Link(a, left, b, right)
        self.links.append(link)
        return link

    def route(self, namespace: Namespace, destination: str, via: str) -> None:
        """A route in `namespace` to `destination` ("default" or a network) via `via`."""
        gateway = check_address(f"{via}/32").ip
        if destination != "default":
            check_address(destination)
        try:
            with NetNS(namespace.name) as ns:
                ns.route("add", dst=destination, gateway=str(gateway))
        except Exception as exc:
            raise NetnsError(f"{namespace.name}: route {destination} via {via}: {exc}") from exc

    def close(self) -> None:
        """Kill what runs inside, delete the namespaces and any veth left in this one."""
        for namespace in self.namespaces:
            _stop_processes(namespace)
        for namespace in self.namespaces:
            with contextlib.suppress(OSError):
                netns.remove(namespace.name)
        # A veth still in the test's own namespace (made, then the move failed).
        with IPRoute() as ipr:
            for name in self._veth_names:
                for index in ipr.link_lookup(ifname=name):
                    with contextlib.suppress(Exception):
                        ipr.link("del", index=index)
        self.namespaces.clear()
        self.links.clear()

    @staticmethod
    def _configure(
        namespace: Namespace, ifname: str, addresses: list[ipaddress.IPv4Interface]
    ) -> None:
        with NetNS(namespace.name) as ns:
            index = ns.link_lookup(ifname=ifname)[0]
            for interface in addresses:
                ns.addr(
                    "add",
                    index=index,
                    address=str(interface.ip),
                    prefixlen=interface.network.prefixlen,
                )
            ns.link("set", index=index, state="up")
        namespace.addresses += addresses


def _stop_processes(namespace: Namespace) -> None:
    """SIGTERM what we started there, SIGKILL whatever is still inside after 3 s."""
    for process in namespace.processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 3.0
    for process in namespace.processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    # Anything else inside (a child of ours, a process started through `entered()`) runs
    # in a namespace only this test knows: it is ours to end.
    for pid in namespace.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for process in namespace.processes:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---- the gateway's test layout -----------------------------------------------------------

GATEWAY_APP_ADDRESS = "203.0.113.1"
GATEWAY_CARRIER_ADDRESS = "198.51.100.1"
APP_ADDRESSES = ("203.0.113.10", "203.0.113.11")
CARRIER_ADDRESSES = ("198.51.100.10", "198.51.100.11")


@dataclass(frozen=True)
class EdgeTopology:
    """The gateway in `gateway`, app clients in `app`, carrier peers in `carrier`."""

    topology: Topology
    gateway: Namespace
    app: Namespace
    carrier: Namespace


def edge_topology(topology: Topology) -> EdgeTopology:
    """G <-veth-> A (203.0.113.0/24) and G <-veth-> C (198.51.100.0/24).

    G holds 203.0.113.1 and 198.51.100.1; A holds 203.0.113.10 and .11 (two clients may
    share it on different addresses); C holds 198.51.100.10 and .11. A and C route
    everything via G, so a peer reaches whichever of G's addresses the gateway names in
    its SDP. G does not forward between A and C: nothing bypasses the gateway.
    """
    gateway = topology.namespace("g")
    app = topology.namespace("a")
    carrier = topology.namespace("c")
    topology.link(gateway, [f"{GATEWAY_APP_ADDRESS}/24"], app, [f"{a}/24" for a in APP_ADDRESSES])
    topology.link(
        gateway,
        [f"{GATEWAY_CARRIER_ADDRESS}/24"],
        carrier,
        [f"{c}/24" for c in CARRIER_ADDRESSES],
    )
    topology.route(app, "default", GATEWAY_APP_ADDRESS)
    topology.route(carrier, "default", GATEWAY_CARRIER_ADDRESS)
    return EdgeTopology(topology, gateway, app, carrier)
