"""The nftables ruleset builder (sans-IO); `nft --check` parses the result when root."""

from __future__ import annotations

import os
import subprocess

import pytest

from gateway.config import Config, parse_config
from gateway.net.firewall import build_ruleset, removal_ruleset, role_rules

ROLES = """
[sip]
listen = [
    { transport = "udp", host = "203.0.113.1", port = 5060 },
    { transport = "tcp", host = "203.0.113.1", port = 5060 },
    { transport = "tls", host = "203.0.113.1", port = 5061 },
    { transport = "udp", host = "198.51.100.1", port = 5070 },
]

[media]
port_min = 30000
port_max = 30999

[http]
listen = "0.0.0.0:8080"

[[network.interfaces]]
role = "access"
name = "eth0"
addresses = ["203.0.113.1/24"]

[[network.interfaces]]
role = "carrier"
name = "eth1"
vlan = 20
addresses = ["198.51.100.1/24"]

[[network.interfaces]]
role = "mgmt"
name = "eth2"
addresses = ["198.51.100.129/25"]
"""

TRUNK = """
[[trunks]]
name = "c1"
host = "198.51.100.10"
networks = ["198.51.100.0/28", "2001:db8::/32"]
"""


def config(text: str) -> Config:
    return parse_config(text, source="t.toml")


def test_each_role_opens_only_what_it_needs() -> None:
    cfg = config(ROLES)
    access, carrier, mgmt = cfg.network.interfaces
    assert role_rules(cfg, access) == [
        "icmp type echo-request accept",
        "udp dport 5060 accept",
        "tcp dport { 5060, 5061 } accept",
        "udp dport 30000-30999 accept",
    ]
    # No trunk networks: any source; SIP only on the port that listens on the carrier side.
    assert role_rules(cfg, carrier) == [
        "icmp type echo-request accept",
        "udp dport 5070 accept",
        "udp dport 30000-30999 accept",
    ]
    assert role_rules(cfg, mgmt) == [
        "icmp type echo-request accept",
        "tcp dport { 22, 8080 } accept",
    ]


def test_carrier_takes_sip_and_media_from_trunk_networks_only() -> None:
    cfg = config(ROLES + TRUNK)
    carrier = cfg.network.interfaces[1]
    assert role_rules(cfg, carrier)[1:] == [
        "ip saddr { 198.51.100.0/28 } udp dport 5070 accept",
        "ip saddr { 198.51.100.0/28 } udp dport 30000-30999 accept",
        "ip6 saddr { 2001:db8::/32 } udp dport 5070 accept",
        "ip6 saddr { 2001:db8::/32 } udp dport 30000-30999 accept",
    ]


def test_http_on_loopback_is_not_opened_on_mgmt() -> None:
    cfg = config(ROLES.replace('listen = "0.0.0.0:8080"', 'listen = "127.0.0.1:8080"'))
    assert role_rules(cfg, cfg.network.interfaces[2])[1:] == ["tcp dport 22 accept"]


def test_ruleset_replaces_the_table_and_drops_the_rest_per_role_interface() -> None:
    text = build_ruleset(config(ROLES))
    lines = text.splitlines()
    assert lines[:3] == ["table inet edgegw", "delete table inet edgegw", "table inet edgegw {"]
    assert "\t\tct state established,related accept" in lines
    assert '\t\tiifname "eth1.20" jump carrier' in lines  # the VLAN sub-interface
    assert lines.count("\t\tcounter drop") == 3
    # Nothing for interfaces without a role: the base chain accepts by default.
    assert "policy accept" in text and "policy drop" not in text


def test_unmanaged_or_disabled_firewall_only_removes_the_table() -> None:
    assert build_ruleset(config("")) == removal_ruleset()
    assert build_ruleset(config(ROLES + "\n[network]\nfirewall = false\n")) == removal_ruleset()


@pytest.mark.skipif(os.geteuid() != 0, reason="nft --check needs CAP_NET_ADMIN")
def test_nft_accepts_the_ruleset() -> None:
    done = subprocess.run(
        ["nft", "--check", "-f", "-"],
        input=build_ruleset(config(ROLES + TRUNK)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
