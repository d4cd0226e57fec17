"""The host firewall per role: an nftables table `inet edgegw` built from the config.

`build_ruleset(config)` is sans-IO: it returns the text for `nft -f` that replaces the
table in one transaction (nft applies a file atomically). Traffic arriving on a role's
interface gets, after `ct state established,related`:
* access: SIP on the ports the gateway listens on there (UDP; TCP and TLS), and the media
  port range;
* carrier: the same, from the trunks' `networks` only when any are given;
* mgmt: the HTTP address's port (metrics, partner API) and SSH;
* every role: ICMP echo requests (ping);
and everything else is counted and dropped. Interfaces without a role (loopback, others)
are not touched. `NftStep` applies the table and undoes it by restoring the table as it
was before (or removing it when there was none); nothing outside `inet edgegw` changes.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.config import Config, NetworkInterfaceConfig

__all__ = [
    "TABLE",
    "FirewallError",
    "NftStep",
    "build_ruleset",
    "current_table",
    "removal_ruleset",
    "role_rules",
]

TABLE = "inet edgegw"
_UNSPECIFIED = ("0.0.0.0", "::")


class FirewallError(RuntimeError):
    """nft refused a ruleset or could not be run; the message carries nft's own words."""


def _role_addresses(interface: NetworkInterfaceConfig) -> set[str]:
    return {str(ipaddress.ip_interface(a).ip) for a in interface.addresses}


def _listening_here(host: str, addresses: set[str]) -> bool:
    return host in _UNSPECIFIED or host in addresses


def _ports(ports: Iterable[int]) -> str:
    unique = sorted(set(ports))
    return str(unique[0]) if len(unique) == 1 else "{ " + ", ".join(map(str, unique)) + " }"


def _sip_and_media(config: Config, addresses: set[str], source: str) -> list[str]:
    listen = [entry for entry in config.sip.listen if _listening_here(entry.host, addresses)]
    udp = [entry.port for entry in listen if entry.transport == "udp"]
    tcp = [entry.port for entry in listen if entry.transport in ("tcp", "tls")]
    lines = []
    if udp:
        lines.append(f"{source}udp dport {_ports(udp)} accept")
    if tcp:
        lines.append(f"{source}tcp dport {_ports(tcp)} accept")
    media = config.media
    lines.append(f"{source}udp dport {media.port_min}-{media.port_max} accept")
    return lines


def _trunk_sources(config: Config) -> list[str]:
    """`ip saddr { ... } ` prefixes for the trunks' networks; [""] (any source) if none."""
    networks = [
        ipaddress.ip_network(network, strict=False)
        for trunk in config.trunks
        for network in trunk.networks
    ]
    if not networks:
        return [""]
    sources = []
    for family, keyword in ((4, "ip"), (6, "ip6")):
        chosen = sorted({str(n) for n in networks if n.version == family})
        if chosen:
            sources.append(f"{keyword} saddr {{ {', '.join(chosen)} }} ")
    return sources


def role_rules(config: Config, interface: NetworkInterfaceConfig) -> list[str]:
    """The accepting rules of one role's chain (the chain ends in a counted drop)."""
    addresses = _role_addresses(interface)
    lines = ["icmp type echo-request accept"]
    if interface.role == "access":
        lines += _sip_and_media(config, addresses, "")
    elif interface.role == "carrier":
        for source in _trunk_sources(config):
            lines += _sip_and_media(config, addresses, source)
    else:
        ports = [config.network.ssh_port]
        if _listening_here(config.http.host, addresses):
            ports.append(config.http.port)
        lines.append(f"tcp dport {_ports(ports)} accept")
    return lines


def _replace_prologue() -> list[str]:
    # Declaring the table first makes the delete succeed when it does not exist yet.
    return [f"table {TABLE}", f"delete table {TABLE}"]


def removal_ruleset() -> str:
    """`nft -f` text that removes the table (and is fine when there is none)."""
    return "\n".join(_replace_prologue()) + "\n"


def build_ruleset(config: Config) -> str:
    """`nft -f` text that replaces table inet edgegw with the config's firewall."""
    interfaces = config.network.interfaces
    if not config.network.firewall or not interfaces:
        return removal_ruleset()
    lines = [*_replace_prologue(), f"table {TABLE} {{", "\tchain input {"]
    lines += [
        "\t\ttype filter hook input priority filter; policy accept;",
        "\t\tct state established,related accept",
    ]
    lines += [f'\t\tiifname "{i.link_name}" jump {i.role}' for i in interfaces]
    lines.append("\t}")
    for interface in interfaces:
        lines.append(f"\tchain {interface.role} {{")
        lines += [f"\t\t{rule}" for rule in role_rules(config, interface)]
        lines += ["\t\tcounter drop", "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- applying with nft -------------------------------------------------------------------------


def _nft(arguments: Sequence[str], text: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["nft", *arguments], input=text, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FirewallError(f"cannot run nft: {exc}") from exc


def current_table() -> str | None:
    """`nft list table inet edgegw`, or None when there is no such table."""
    done = _nft(["list", "table", *TABLE.split()])
    if done.returncode != 0:
        if "No such file" in done.stderr:
            return None
        raise FirewallError(f"nft list table {TABLE}: {done.stderr.strip()}")
    return done.stdout


def load(text: str) -> None:
    """Run `nft -f -` on `text` (one atomic transaction)."""
    done = _nft(["-f", "-"], text)
    if done.returncode != 0:
        raise FirewallError(f"nft -f refused the ruleset: {done.stderr.strip()}")


@dataclass
class NftStep:
    """Replace table inet edgegw with `ruleset`; undo restores what was there before."""

    ruleset: str
    _previous: str | None = field(default=None, init=False)

    def describe(self) -> str:
        if self.ruleset == removal_ruleset():
            return f"- firewall table {TABLE}"
        return f"~ firewall table {TABLE} ({self.ruleset.count(' jump ')} roles)"

    def apply(self) -> None:
        self._previous = current_table()
        load(self.ruleset)

    def undo(self) -> None:
        load(removal_ruleset() + (self._previous or ""))
