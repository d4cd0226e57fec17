"""A call crossing the gateway after `edgegw net apply`, then a rollback, in namespaces.

Layout (`netns.edge_topology`): the gateway runs in namespace G, with its access role on
G's veth toward the app namespace A (203.0.113.1/24) and its carrier role on G's veth
toward the carrier namespace C (198.51.100.1/24), both with the firewall on. The real
`edgegw net apply --yes` puts the [network] config in place (policy routing per role, the
nftables table `inet edgegw`) while the gateway runs and answers its SIP OPTIONS check.
Then user 1001 (sipp, digest auth, UDP) in A calls a number routed to the carrier trunk,
a sipp UAS in C that echoes RTP; an RtpPeer in A sends RTP to the gateway's relay and
counts what comes back through both legs, and the call ends with a CDR.

Each leg's SIP and media use its role's address (gateway.net.roles): the app leg
203.0.113.1, the carrier leg 198.51.100.1. From any other source address, policy routing
would send the carrier leg's packets by the access role's table, which refuses them.

Last, `edgegw net apply --yes` with a config whose check must fail (a SIP listener on a
new access address the running gateway does not serve) rolls back: addresses, routes and
rules read with pyroute2 in G, and the firewall table, equal what they were before.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from gateway.net import firewall
from gateway.net.state import PROTO_EDGEGW, NetState, read_state
from tests.integration.netns import (
    APP_ADDRESSES,
    CARRIER_ADDRESSES,
    GATEWAY_APP_ADDRESS,
    GATEWAY_CARRIER_ADDRESS,
    EdgeTopology,
    Namespace,
)
from tests.integration.peers import (
    _CLI,
    GatewayProcess,
    RtpPeer,
    SippRun,
    SipTrace,
    external_media,
    gateway_process,
    sdp_media_address,
    sipp_binary,
)

# The `edge` fixture (conftest.py) prints the reason and skips when not root.
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        sipp_binary() is None, reason="sipp not on PATH (Debian package sip-tester)"
    ),
]

APP_USER = "1001"
APP_NUMBER = "+8613900139001"
APP_ADDRESS = APP_ADDRESSES[0]
CARRIER_ADDRESS = CARRIER_ADDRESSES[0]
CARRIER_SIP_PORT = 5080
CARRIER_NUMBER = "+8613800138000"
MEDIA_PORTS = (30000, 30099)
# An access address the gateway does not listen on: the failing check's target.
UNSERVED_ADDRESS = "203.0.113.7"
PACKETS = 40


def network_toml(access: str, carrier: str, extra_access: str = "") -> str:
    access_addresses = [f"{GATEWAY_APP_ADDRESS}/24"]
    if extra_access:
        access_addresses.append(f"{extra_access}/24")
    return f"""
        [network]
        firewall = true

        [[network.interfaces]]
        role = "access"
        name = "{access}"
        addresses = {json.dumps(access_addresses)}

        [[network.interfaces]]
        role = "carrier"
        name = "{carrier}"
        addresses = ["{GATEWAY_CARRIER_ADDRESS}/24"]
        routes = [{{ to = "default", via = "{CARRIER_ADDRESS}", main = true }}]
    """


def gateway_toml(password: str, extra_listen: str = "") -> str:
    """SIP on both roles' addresses, the access one first (requests to the trunk must
    still leave from the carrier one); media on each role's address, from [network]."""
    extra = (
        f'{{ transport = "udp", host = "{extra_listen}", port = 5060 }},' if extra_listen else ""
    )
    return f"""
        [general]
        var_dir = "{{var_dir}}"
        log_level = "debug"
        [sip]
        listen = [
            {{ transport = "udp", host = "{GATEWAY_APP_ADDRESS}", port = 5060 }},
            {{ transport = "udp", host = "{GATEWAY_CARRIER_ADDRESS}", port = 5060 }},
            {extra}
        ]
        t1 = 0.1
        t2 = 0.4
        [media]
        port_min = {MEDIA_PORTS[0]}
        port_max = {MEDIA_PORTS[1]}
        timeout = 10.0
        [http]
        listen = "127.0.0.1:8080"

        [[subscribers]]
        username = "{APP_USER}"
        password = "{password}"
        numbers = ["{APP_NUMBER}"]
        balance = "100.00"

        [[trunks]]
        name = "carrier"
        host = "{CARRIER_ADDRESS}"
        port = {CARRIER_SIP_PORT}
        transport = "udp"
        codecs = ["PCMA"]
        prefixes = ["86"]
        tariff_per_minute = "0.10"
    """


Snapshot = tuple[NetState, str | None]


def snapshot(namespace: Namespace) -> Snapshot:
    """What the kernel reports in `namespace`: links, addresses, routes, rules; nft table."""
    with namespace.entered(), IPRoute() as ipr:
        return read_state(ipr), firewall.current_table()


@dataclass
class NetLab:
    tmp: Path
    edge: EdgeTopology
    stack: contextlib.ExitStack
    password: str

    @property
    def access(self) -> str:
        return self.edge.topology.links[0].left

    @property
    def carrier_link(self) -> str:
        return self.edge.topology.links[1].left

    def write_config(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text.replace("{var_dir}", str(self.tmp / "var")), encoding="utf-8")
        return path

    def net_apply(self, config: Path) -> subprocess.CompletedProcess[str]:
        """The real `edgegw net apply --yes` run inside G."""
        return self.edge.gateway.run(
            [*_CLI, "net", "apply", "--yes", "--check-timeout", "3", "--config", str(config)],
            timeout=30,
        )

    def start_gateway(self) -> GatewayProcess:
        network = network_toml(self.access, self.carrier_link)
        text = network + gateway_toml(self.password)
        with self.edge.gateway.entered():
            return self.stack.enter_context(gateway_process(self.tmp, text))

    def echo_carrier(self) -> SippRun:
        with self.edge.carrier.entered():
            run = SippRun(
                "carrier_uas",
                workdir=self.tmp / "sipp",
                name="carrier",
                local_ip=CARRIER_ADDRESS,
                local_port=CARRIER_SIP_PORT,
                rtp_echo=True,
                timeout=20.0,
            )
            self.stack.enter_context(run)
            run.wait_bound()
        return run

    def app_media(self) -> RtpPeer:
        with self.edge.app.entered():
            return self.stack.enter_context(RtpPeer(APP_ADDRESS))

    def caller(self, media: RtpPeer) -> SippRun:
        """1001 in A calling the carrier's number over UDP to the access address."""
        scenario = external_media("uac_call", self.tmp / "uac_ext.xml", media.address)
        with self.edge.app.entered():
            run = SippRun(
                scenario,
                workdir=self.tmp / "sipp",
                name="caller",
                remote=f"{GATEWAY_APP_ADDRESS}:5060",
                local_ip=APP_ADDRESS,
                service=CARRIER_NUMBER,
                auth=(APP_USER, self.password),
                keys={"caller": APP_USER},
                duration_ms=4000,
                timeout=15.0,
            )
            self.stack.enter_context(run)
        return run


@pytest.fixture
def lab(short_tmp: Path, edge: EdgeTopology) -> Iterator[NetLab]:
    with contextlib.ExitStack() as stack:
        yield NetLab(short_tmp, edge, stack, f"pw-{secrets.token_hex(8)}")


def is_ok_to_invite(trace: SipTrace) -> bool:
    return trace.direction == "received" and trace.status == 200 and trace.method == "INVITE"


def wait_cdr(gateway: GatewayProcess, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        done = gateway.cli("cdr", "--json")
        assert done.returncode == 0, done.stderr
        records: list[dict[str, Any]] = json.loads(done.stdout)
        if records or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(records) == 1, f"expected one CDR, got {records}"
    return records[0]


def test_call_crosses_the_applied_network_and_a_failed_apply_rolls_back(lab: NetLab) -> None:
    gateway = lab.start_gateway()
    assert snapshot(lab.edge.gateway)[1] is None, "no firewall before the apply"

    applied = lab.net_apply(gateway.config_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert (
        f"SIP OPTIONS answered: access {GATEWAY_APP_ADDRESS}:5060, "
        f"carrier {GATEWAY_CARRIER_ADDRESS}:5060" in applied.stdout
    ), applied.stdout
    table = lab.edge.gateway.run(["nft", "list", "table", "inet", "edgegw"])
    assert table.returncode == 0, table.stderr
    assert f'iifname "{lab.access}" jump access' in table.stdout, table.stdout
    assert f'iifname "{lab.carrier_link}" jump carrier' in table.stdout, table.stdout
    assert f"udp dport {MEDIA_PORTS[0]}-{MEDIA_PORTS[1]} accept" in table.stdout
    state, _ = snapshot(lab.edge.gateway)
    rules = {(r.priority, str(r.src), r.table) for r in state.rules if r.protocol == PROTO_EDGEGW}
    assert rules == {
        (1101, f"{GATEWAY_APP_ADDRESS}/32", 101),
        (1102, f"{GATEWAY_CARRIER_ADDRESS}/32", 102),
    }

    # A call from A to the carrier in C, through the firewall and the policy routing.
    carrier = lab.echo_carrier()
    media = lab.app_media()
    uac = lab.caller(media)
    answer = uac.wait_for_message(is_ok_to_invite, timeout=8)
    relay_a = sdp_media_address(answer.body)
    assert relay_a[0] == GATEWAY_APP_ADDRESS, answer.body
    media.send_stream(relay_a, count=PACKETS)
    echoed = media.wait_for(PACKETS, timeout=2.5)
    calls = gateway.cli("calls", "--json")
    assert calls.returncode == 0, calls.stderr
    (call,) = json.loads(calls.stdout)
    toward_carrier = call["media"]["b"]["rtp"]
    assert "send-error" not in toward_carrier["drops"], (
        f"the relay could not send toward the carrier from {toward_carrier['local']}: "
        f"{toward_carrier['drops']}; kernel: "
        + lab.edge.gateway.run(
            ["ip", "route", "get", CARRIER_ADDRESS, "from", toward_carrier["local"][0]]
        ).stderr.strip()
    )
    assert echoed, (
        f"{media.received}/{media.sent} RTP packets came back through the gateway; "
        f"gateway's media: {json.dumps(call['media'])}"
    )
    assert {p.source for p in media.snapshot()} == {relay_a}
    assert (call["route"], call["trunk"], call["state"]) == ("trunk", "carrier", "answered")
    assert call["media"]["b"]["rtp"]["latched"] == [CARRIER_ADDRESS, carrier.media_port]
    assert call["media"]["b"]["rtp"]["packets_in"] == PACKETS
    assert call["media"]["a"]["rtp"]["local"][0] == GATEWAY_APP_ADDRESS
    assert call["media"]["b"]["rtp"]["local"][0] == GATEWAY_CARRIER_ADDRESS
    status = json.loads(gateway.cli("status", "--json").stdout)
    assert status["sip_listen"] == [
        f"udp:{GATEWAY_APP_ADDRESS}:5060 (access)",
        f"udp:{GATEWAY_CARRIER_ADDRESS}:5060 (carrier)",
    ]
    in_use = {(m["role"], m["host"]): m["in_use"] for m in status["media_addresses"]}
    assert in_use == {
        ("", "127.0.0.1"): 0,
        ("access", GATEWAY_APP_ADDRESS): 1,
        ("carrier", GATEWAY_CARRIER_ADDRESS): 1,
    }

    called = uac.wait()
    assert called.ok, called.describe()
    behind_trunk = carrier.wait(timeout=5)
    assert behind_trunk.ok, behind_trunk.describe()
    (invite,) = behind_trunk.received("INVITE")
    assert invite.first_line == (
        f"INVITE sip:{CARRIER_NUMBER}@{CARRIER_ADDRESS}:{CARRIER_SIP_PORT} SIP/2.0"
    ), invite.text
    assert sdp_media_address(invite.body)[0] == GATEWAY_CARRIER_ADDRESS, invite.body
    assert f"SIP/2.0/UDP {GATEWAY_CARRIER_ADDRESS}:5060" in (invite.header("Via") or "")
    cdr = wait_cdr(gateway)
    assert (cdr["route"], cdr["trunk"], cdr["callee"]) == ("trunk", "carrier", CARRIER_NUMBER)
    assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "caller-bye"), cdr

    # A config whose check must fail: nobody answers SIP on the new access address.
    before = snapshot(lab.edge.gateway)
    failing = lab.write_config(
        "failing.toml",
        network_toml(lab.access, lab.carrier_link, extra_access=UNSERVED_ADDRESS)
        + gateway_toml(lab.password, extra_listen=UNSERVED_ADDRESS),
    )
    started = time.monotonic()
    refused = lab.net_apply(failing)
    assert refused.returncode != 0, refused.stdout
    assert time.monotonic() - started < 10
    assert f"+ address {UNSERVED_ADDRESS}/24 dev {lab.access}" in refused.stdout
    assert "net apply failed at check" in refused.stderr, refused.stderr
    assert f"access {UNSERVED_ADDRESS}:5060" in refused.stderr, refused.stderr
    after = snapshot(lab.edge.gateway)
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert UNSERVED_ADDRESS not in str(after[0])
