"""Which address serves which network role (gateway.net.roles), and the config's checks."""

from __future__ import annotations

import socket
import textwrap

import pytest

from gateway.config import ConfigError, parse_config
from gateway.net.roles import address_roles, media_addresses

NETWORK = """
[[network.interfaces]]
role = "access"
name = "eth0"
addresses = ["203.0.113.1/24", "203.0.113.2/24"]

[[network.interfaces]]
role = "carrier"
name = "eth1"
addresses = ["198.51.100.1/24"]

[[network.interfaces]]
role = "mgmt"
name = "eth2"
addresses = ["198.51.100.201/24"]
"""


def plans(text: str) -> list[tuple[str, str, str]]:
    parsed = parse_config(textwrap.dedent(text), source="t.toml")
    return [(p.role, p.host, p.sdp_host) for p in media_addresses(parsed)]


def test_each_media_role_takes_its_interfaces_first_address_and_mgmt_none() -> None:
    assert plans(NETWORK) == [
        ("", "127.0.0.1", "127.0.0.1"),
        ("access", "203.0.113.1", "203.0.113.1"),
        ("carrier", "198.51.100.1", "198.51.100.1"),
    ]


def test_media_addresses_entries_replace_the_interfaces_and_carry_the_nat_address() -> None:
    text = (
        NETWORK
        + """
[[media.addresses]]
role = "access"
host = "203.0.113.2"
advertised_host = "198.51.100.77"
"""
    )
    assert plans(text)[1:] == [
        ("access", "203.0.113.2", "198.51.100.77"),
        ("carrier", "198.51.100.1", "198.51.100.1"),
    ]


def test_a_wildcard_media_host_is_named_in_sdp_by_the_default_routes_source() -> None:
    ((role, host, sdp),) = plans('[media]\nhost = "0.0.0.0"\n')
    assert (role, host) == ("", "0.0.0.0")
    assert sdp != "0.0.0.0"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((sdp, 0))  # an address of this box
    # An advertised address is taken as it is.
    assert plans('[media]\nhost = "0.0.0.0"\nadvertised_host = "203.0.113.9"\n')[0][2] == (
        "203.0.113.9"
    )


def test_listeners_take_their_interfaces_role_or_their_own() -> None:
    text = (
        NETWORK
        + """
[sip]
listen = [
    { transport = "udp", host = "203.0.113.1", port = 5060 },
    { transport = "udp", host = "127.0.0.1", port = 5060, role = "carrier" },
]
"""
    )
    roles = address_roles(parse_config(textwrap.dedent(text), source="t.toml"))
    assert roles["203.0.113.1"] == "access"
    assert roles["198.51.100.1"] == "carrier"
    assert roles["127.0.0.1"] == "carrier"


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        (
            '[sip]\nlisten = [{ transport = "udp", host = "203.0.113.1", port = 5060, '
            'role = "carrier" }]\n',
            "sip.listen[0].role",
            "is carrier, but 203.0.113.1 is on the access interface",
        ),
        (
            '[[media.addresses]]\nrole = "carrier"\nhost = "198.51.100.1"\n'
            '[[media.addresses]]\nrole = "carrier"\nhost = "198.51.100.2"\n',
            "media.addresses[1]",
            "a second IPv4 address for role carrier: see [0]",
        ),
        (
            '[[media.addresses]]\nrole = "access"\nhost = "0.0.0.0"\n',
            "media.addresses[0].host",
            "must be the role's own IP address, got '0.0.0.0'",
        ),
        (
            '[[media.addresses]]\nrole = "access"\nhost = "203.0.113.1"\n'
            'advertised_host = "nat.example"\n',
            "media.addresses[0].advertised_host",
            "must be empty or an IP address, got 'nat.example'",
        ),
    ],
)
def test_role_settings_that_cannot_work_are_refused(extra: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(textwrap.dedent(NETWORK) + extra, source="t.toml")
    assert (refused.value.key, refused.value.reason) == (key, reason)
