"""Trunk connectivity end to end: OPTIONS health, outbound registration, RFC 3263 lookups.

* Health: the gateway runs in the test's Trio loop and pings a UDP peer that answers
  OPTIONS, then goes silent (down after `options_failures` pings), then answers again (up).
* Registration: two real gateways as child processes, the second one the carrier's
  registrar whose subscriber holds the trunk's credentials. The binding shows up there
  (a REGISTER query with those credentials lists it), is refreshed, and is gone after the
  first gateway stops; a wrong password ends in the failed state after two REGISTERs.
* DNS: a small DNS server on 127.0.0.1 (answers built with dnspython) serves NAPTR, SRV,
  A and AAAA records to the resolver: order, priorities, weights, missing records,
  NXDOMAIN, server failure and timeouts.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.config import parse_config
from gateway.service import Gateway
from gateway.sip.message import Request, Response
from gateway.transport.dns import DnsError, DnsTimeout, Resolver, Target
from tests.integration.dnsserver import TinyDns, tiny_dns
from tests.integration.peers import GatewayProcess, free_udp_port, gateway_process
from tests.integration.sipclient import UdpPeer, media_range, wait_for_sip

# ---- DNS: the resolver against the server ----------------------------------------------------


def carrier_zone(server: TinyDns) -> None:
    server.add(
        "carrier.test",
        "NAPTR",
        '10 50 "s" "SIP+D2U" "" _sip._udp.carrier.test.',
        '10 10 "s" "SIP+D2T" "" _sip._tcp.carrier.test.',
        '5 10 "s" "SIP+D2S" "" _sip._sctp.carrier.test.',  # SCTP: skipped
        '20 10 "u" "E2U+sip" "!^.*$!sip:info@carrier.test!" .',  # not a SIP service
    )
    server.add(
        "_sip._tcp.carrier.test",
        "SRV",
        "20 0 5070 backup.carrier.test.",
        "10 100 5060 main.carrier.test.",
    )
    server.add("_sip._udp.carrier.test", "SRV", "10 10 5080 main.carrier.test.")
    server.add("main.carrier.test", "A", "203.0.113.10")
    server.add("main.carrier.test", "AAAA", "2001:db8::10")
    server.add("backup.carrier.test", "A", "203.0.113.20")


async def test_naptr_srv_a_in_order() -> None:
    async with tiny_dns() as server:
        carrier_zone(server)
        resolver = Resolver(server.config())
        targets = await resolver.locate("carrier.test", "udp", 5060)
        assert targets == [
            Target("tcp", "203.0.113.10", 5060),
            Target("tcp", "2001:db8::10", 5060),
            Target("tcp", "203.0.113.20", 5070),
            Target("udp", "203.0.113.10", 5080),
            Target("udp", "2001:db8::10", 5080),
        ]
        # Only the families the gateway can send from.
        v4 = Resolver(server.config(), families=(4,))
        assert [t.host for t in await v4.locate("carrier.test", "udp", 5060)] == [
            "203.0.113.10",
            "203.0.113.20",
            "203.0.113.10",
        ]


async def test_tls_trunk_takes_only_sips_services() -> None:
    async with tiny_dns() as server:
        server.add(
            "secure.test",
            "NAPTR",
            '10 10 "s" "SIP+D2U" "" _sip._udp.secure.test.',
            '20 10 "s" "SIPS+D2T" "" _sips._tcp.secure.test.',
        )
        server.add("_sip._udp.secure.test", "SRV", "0 0 5060 edge.secure.test.")
        server.add("_sips._tcp.secure.test", "SRV", "0 0 5061 edge.secure.test.")
        server.add("edge.secure.test", "A", "203.0.113.30")
        resolver = Resolver(server.config(), families=(4,))
        assert await resolver.locate("secure.test", "tls", 5061) == [
            Target("tls", "203.0.113.30", 5061)
        ]


async def test_weights_share_the_first_place_and_answers_are_cached() -> None:
    async with tiny_dns() as server:
        server.add(
            "_sip._udp.weighted.test",
            "SRV",
            "10 80 5060 a.weighted.test.",
            "10 20 5060 b.weighted.test.",
        )
        server.add("a.weighted.test", "A", "203.0.113.1")
        server.add("b.weighted.test", "A", "203.0.113.2")
        resolver = Resolver(server.config(), families=(4,))
        firsts: Counter[str] = Counter()
        for _ in range(300):
            targets = await resolver.locate("weighted.test", "udp", 5060)
            assert sorted(t.host for t in targets) == ["203.0.113.1", "203.0.113.2"]
            firsts[targets[0].host] += 1
        assert 0.7 < firsts["203.0.113.1"] / 300 < 0.9, firsts
        # NAPTR (no data), SRV, two A: asked once each, then all from the cache.
        assert resolver.queries == 4
        assert Counter(q for q in server.queries) == {
            ("weighted.test", "NAPTR"): 1,
            ("_sip._udp.weighted.test", "SRV"): 1,
            ("a.weighted.test", "A"): 1,
            ("b.weighted.test", "A"): 1,
        }


async def test_no_naptr_srv_of_the_configured_transport() -> None:
    async with tiny_dns() as server:
        server.add("plain.test", "A", "203.0.113.40")  # the domain exists, without NAPTR
        server.add("_sip._tcp.plain.test", "SRV", "0 0 5090 pbx.plain.test.")
        server.add("pbx.plain.test", "A", "203.0.113.41")
        resolver = Resolver(server.config(), families=(4,))
        assert await resolver.locate("plain.test", "tcp", 5060) == [
            Target("tcp", "203.0.113.41", 5090)
        ]
        assert ("_sip._udp.plain.test", "SRV") not in server.queries


async def test_no_srv_falls_back_to_addresses_at_the_configured_port() -> None:
    async with tiny_dns() as server:
        server.add("bare.test", "A", "203.0.113.50")
        server.add("bare.test", "AAAA", "2001:db8::50")
        resolver = Resolver(server.config())
        assert await resolver.locate("bare.test", "udp", 5062) == [
            Target("udp", "203.0.113.50", 5062),
            Target("udp", "2001:db8::50", 5062),
        ]
        # A static trunk with a host name gets the A/AAAA step only.
        assert await resolver.static("bare.test", "tcp", 5063) == [
            Target("tcp", "203.0.113.50", 5063),
            Target("tcp", "2001:db8::50", 5063),
        ]


async def test_srv_dot_target_means_no_sip_there() -> None:
    async with tiny_dns() as server:
        server.add("nosip.test", "A", "203.0.113.60")
        server.add("_sip._udp.nosip.test", "SRV", "0 0 0 .")
        resolver = Resolver(server.config())
        with pytest.raises(DnsError, match=r"_sip\._udp\.nosip\.test: the SRV records name no"):
            await resolver.locate("nosip.test", "udp", 5060)


async def test_nxdomain_is_an_error_and_cached() -> None:
    async with tiny_dns() as server:
        resolver = Resolver(server.config())
        for _ in range(2):
            with pytest.raises(DnsError, match=r"nowhere\.test: no such domain \(NXDOMAIN\)"):
                await resolver.locate("nowhere.test", "udp", 5060)
        with pytest.raises(DnsError, match=r"nowhere\.test: no address record"):
            await resolver.static("nowhere.test", "udp", 5060)
        assert server.queries.count(("nowhere.test", "NAPTR")) == 1  # the SOA's 60 s


async def test_server_failure_and_timeout() -> None:
    async with tiny_dns() as server:
        server.servfail.add("broken.test.")
        server.silent.add("slow.test.")
        resolver = Resolver(server.config(timeout=0.4))
        with pytest.raises(DnsError, match=r"broken\.test NAPTR: every name server failed"):
            await resolver.locate("broken.test", "udp", 5060)
        started = trio.current_time()
        with pytest.raises(DnsTimeout, match=r"slow\.test NAPTR: no answer within 0\.4 s"):
            await resolver.locate("slow.test", "udp", 5060)
        waited = trio.current_time() - started
        assert 0.3 < waited < 2.0, waited


async def test_answers_expire_with_their_ttl() -> None:
    now = [1000.0]
    async with tiny_dns() as server:
        server.ttl = 30
        server.add("ttl.test", "A", "203.0.113.70")
        resolver = Resolver(server.config(), families=(4,), clock=lambda: now[0])
        await resolver.static("ttl.test", "udp", 5060)
        now[0] += 29.0
        await resolver.static("ttl.test", "udp", 5060)
        assert server.queries.count(("ttl.test", "A")) == 1
        now[0] += 1.0
        server.records[("ttl.test.", "A")] = ["203.0.113.71"]
        assert await resolver.static("ttl.test", "udp", 5060) == [
            Target("udp", "203.0.113.71", 5060)
        ]
        assert server.queries.count(("ttl.test", "A")) == 2


# ---- health: a gateway pinging a UDP peer ---------------------------------------------------


def http_port() -> int:
    """A TCP port for the partner API, which every gateway runs (8080 would collide)."""
    return free_udp_port("127.0.0.1", also_tcp=True)


def own_config(var_dir: Path, sip_port: int, trunk_toml: str, dns_port: int = 0) -> str:
    media = media_range()
    dns = f'[dns]\nservers = ["127.0.0.1:{dns_port}"]\ntimeout = 0.5\n' if dns_port else ""
    return (
        textwrap.dedent(
            f"""
            [general]
            var_dir = "{var_dir}"
            log_level = "warning"

            [sip]
            listen = [{{ transport = "udp", host = "127.0.0.1", port = {sip_port} }}]
            t1 = 0.05

            [media]
            host = "127.0.0.1"
            port_min = {media[0]}
            port_max = {media[1]}

            [http]
            listen = "127.0.0.1:{http_port()}"
            """
        )
        + dns
        + textwrap.dedent(trunk_toml)
    )


@asynccontextmanager
async def gateway_in_loop(config_text: str) -> AsyncIterator[Gateway]:
    config = parse_config(config_text, source="test.toml")
    gateway = Gateway(config)
    udp = config.sip.listen[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway.serve)
        await wait_for_sip((udp.host, udp.port))
        yield gateway
        nursery.cancel_scope.cancel()


@dataclass
class OptionsResponder:
    """Answers OPTIONS with `status` (None: silent); counts the pings (distinct Call-IDs)."""

    peer: UdpPeer
    status: int | None = 200
    pings: list[str] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            item = await self.peer.receive(timeout=60)
            if item is None:
                continue
            message, source = item
            if not isinstance(message, Request) or message.method != "OPTIONS":
                continue
            if message.call_id not in self.pings:
                self.pings.append(message.call_id)
            if self.status is not None:
                await self.peer.reply(message, self.status, to=source)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"not within {timeout} s: {what}")


def trunk_toml(host: str, port: int, extra: str = "") -> str:
    return f"""
    [[trunks]]
    name = "carrier"
    host = "{host}"
    port = {port}
    options_ping = true
    options_interval = 0.3
    options_failures = 2
    {extra}
    """


async def test_options_down_after_n_failures_and_up_after_one_answer(short_tmp: Path) -> None:
    sip_port = free_udp_port("127.0.0.1")
    peer = await UdpPeer.open(("127.0.0.1", sip_port), host="127.0.0.1")
    responder = OptionsResponder(peer)
    config = own_config(short_tmp / "var", sip_port, trunk_toml("127.0.0.1", peer.local[1]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder.run)
        async with gateway_in_loop(config) as gateway:
            monitor = gateway.trunk_monitor

            def row() -> dict[str, Any]:
                return monitor.snapshot()[0]

            await eventually(lambda: row()["state"] == "up", "trunk up")
            rtt = row()["last_rtt_ms"]
            assert rtt is not None and 0 < rtt < 250, rtt
            print(f"OPTIONS round trip on loopback: {rtt} ms")

            responder.status = None  # the trunk goes silent
            silent_from = len(responder.pings)
            await eventually(lambda: not monitor.is_up("carrier"), "trunk down")
            assert len(responder.pings) - silent_from >= 2  # options_failures pings lost
            assert row()["last_error"] == "timeout" and row()["failures"] >= 2

            responder.status = 404  # any final answer: its SIP stack is back
            await eventually(lambda: monitor.is_up("carrier"), "trunk up again")
            assert row()["last_status"] == 404 and row()["failures"] == 0

            result = await monitor.ping("carrier")  # on demand, as `edgegw trunk ping`
            assert result.status == 404 and result.rtt is not None and result.rtt < 0.25
            assert result.target == Target("udp", "127.0.0.1", peer.local[1])

            responder.status = 503  # overloaded counts as a failure
            await eventually(lambda: not monitor.is_up("carrier"), "down on 503s")
            assert row()["last_status"] == 503

            status = await gateway._status({})
            assert status["trunk_health"][0]["state"] == "down"
        nursery.cancel_scope.cancel()
    peer.close()


async def test_options_to_a_trunk_found_by_rfc3263(short_tmp: Path) -> None:
    sip_port = free_udp_port("127.0.0.1")
    peer = await UdpPeer.open(("127.0.0.1", sip_port), host="127.0.0.1")
    responder = OptionsResponder(peer)
    async with tiny_dns() as server, trio.open_nursery() as nursery:
        server.add("carrier.test", "NAPTR", '10 10 "s" "SIP+D2U" "" _sip._udp.carrier.test.')
        server.add("_sip._udp.carrier.test", "SRV", f"10 10 {peer.local[1]} sbc.carrier.test.")
        server.add("sbc.carrier.test", "A", "127.0.0.1")
        trunk = trunk_toml("carrier.test", 5060, 'resolve = "rfc3263"')
        config = own_config(short_tmp / "var", sip_port, trunk, dns_port=server.port)
        nursery.start_soon(responder.run)
        async with gateway_in_loop(config) as gateway:
            await eventually(lambda: gateway.trunk_monitor.snapshot()[0]["state"] == "up", "up")
            result = await gateway.trunk_monitor.ping("carrier")
            assert result.status == 200
            assert result.target == Target("udp", "127.0.0.1", peer.local[1])
        assert ("carrier.test", "NAPTR") in server.queries
        nursery.cancel_scope.cancel()
    peer.close()


async def test_options_to_an_unresolvable_trunk_marks_it_down(short_tmp: Path) -> None:
    sip_port = free_udp_port("127.0.0.1")
    async with tiny_dns() as server:
        trunk = trunk_toml("gone.test", 5060, 'resolve = "rfc3263"')
        config = own_config(short_tmp / "var", sip_port, trunk, dns_port=server.port)
        async with gateway_in_loop(config) as gateway:
            monitor = gateway.trunk_monitor
            await eventually(lambda: not monitor.is_up("carrier"), "down")
            error = monitor.snapshot()[0]["last_error"]
            assert error == "dns: gone.test: no such domain (NXDOMAIN)"


# ---- registration: to a second gateway as the carrier's registrar ---------------------------

CARRIER_USER = "trunk-user"
CARRIER_PASSWORD = "carrier-secret-1"


def carrier_config(sip_port: int) -> str:
    media = media_range()
    return textwrap.dedent(
        f"""
        [general]
        var_dir = "{{var_dir}}"

        [sip]
        listen = [{{ transport = "udp", host = "127.0.0.1", port = {sip_port} }}]
        realm = "carrier.test"
        auth_algorithms = ["SHA-256", "MD5"]
        min_expires = 6

        [media]
        host = "127.0.0.1"
        port_min = {media[0]}
        port_max = {media[1]}

        [http]
        listen = "127.0.0.1:{http_port()}"

        [[subscribers]]
        username = "{CARRIER_USER}"
        password = "{CARRIER_PASSWORD}"
        """
    )


def registering_config(sip_port: int, carrier_port: int, password: str) -> str:
    media = media_range()
    return textwrap.dedent(
        f"""
        [general]
        var_dir = "{{var_dir}}"

        [sip]
        listen = [{{ transport = "udp", host = "127.0.0.1", port = {sip_port} }}]

        [media]
        host = "127.0.0.1"
        port_min = {media[0]}
        port_max = {media[1]}

        [http]
        listen = "127.0.0.1:{http_port()}"

        [[trunks]]
        name = "carrier"
        host = "127.0.0.1"
        port = {carrier_port}
        register = true
        username = "{CARRIER_USER}"
        password = "{password}"
        register_expires = 3
        """
    )


async def status_of(process: GatewayProcess) -> dict[str, Any]:
    done = await trio.to_thread.run_sync(process.cli, "status", "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def wait_status(
    process: GatewayProcess, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    deadline = trio.current_time() + 10.0
    while True:
        status = await status_of(process)
        if check(status):
            return status
        if trio.current_time() > deadline:
            raise AssertionError(f"{what}: not within 10 s; last status: {status}")
        await trio.sleep(0.1)


async def carrier_bindings(carrier: GatewayProcess) -> list[str]:
    """The Contact values the carrier's registrar holds for the trunk's account."""
    peer = await UdpPeer.open(carrier.sip)
    try:
        query = peer.request("REGISTER", f"sip:{peer.domain}", from_user=CARRIER_USER)
        query.headers.remove("Contact")  # a query (RFC 3261 10.2.3)
        query.headers.set("To", f"<sip:{CARRIER_USER}@{peer.domain}>")
        challenge = await peer.transact(query)
        assert challenge.status == 401
        retry = peer.authorize(query, challenge, CARRIER_USER, password=CARRIER_PASSWORD)
        answer: Response = await peer.transact(retry)
        assert answer.status == 200, answer.reason
        return answer.headers.get_all("Contact")
    finally:
        peer.close()


def registration(status: dict[str, Any]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = status["trunk_registrations"]
    return rows[0]


async def test_registers_refreshes_and_deregisters(short_tmp: Path) -> None:
    carrier_port = free_udp_port("127.0.0.1")
    own_port = free_udp_port("127.0.0.1")
    ours = f"sip:127.0.0.1:{own_port}"
    config = registering_config(own_port, carrier_port, CARRIER_PASSWORD)
    with gateway_process(short_tmp / "c", carrier_config(carrier_port)) as carrier:
        with gateway_process(short_tmp / "o", config) as gateway:
            status = await wait_status(
                gateway, lambda s: registration(s)["registered"], "registered"
            )
            row = registration(status)
            # register_expires = 3 is below the carrier's Min-Expires: 423, then 6.
            assert row["expires"] == 6 and row["aor"] == f"sip:{CARRIER_USER}@127.0.0.1"
            assert row["registrar"] == f"udp:127.0.0.1:{carrier_port}"
            contacts = await carrier_bindings(carrier)
            assert any(c.startswith(f"<{ours}>;expires=") for c in contacts), contacts

            first_expiry = row["expires_at"]
            status = await wait_status(
                gateway,
                lambda s: (registration(s)["expires_at"] or 0) > first_expiry + 1,
                "refreshed",
            )
            assert registration(status)["state"] == "registered"
            assert registration(status)["failures"] == 0
            assert any(c.startswith(f"<{ours}>") for c in await carrier_bindings(carrier))
            carrier_status = await status_of(carrier)
            assert carrier_status["registrations"] == 1
        # Stopped (SIGTERM): the binding was removed with Expires: 0.
        assert not [c for c in await carrier_bindings(carrier) if c.startswith(f"<{ours}>")]
        assert (await status_of(carrier))["registrations"] == 0


async def test_wrong_password_fails_without_a_register_loop(short_tmp: Path) -> None:
    carrier_port = free_udp_port("127.0.0.1")
    own_port = free_udp_port("127.0.0.1")
    config = registering_config(own_port, carrier_port, "not-the-password")
    with (
        gateway_process(short_tmp / "c", carrier_config(carrier_port)) as carrier,
        gateway_process(short_tmp / "o", config) as gateway,
    ):
        failed = await wait_status(gateway, lambda s: registration(s)["state"] == "failed", "fail")
        row = registration(failed)
        assert row["last_status"] == 403 and row["failures"] == 1
        assert row["next_register_at"] - time.time() > 20  # backing off
        await trio.sleep(1.5)
        carrier_status = await status_of(carrier)
        # One challenge, one refused answer: two REGISTERs, then silence.
        assert carrier_status["auth_challenges"] == 1
        assert carrier_status["auth_failures"] == 1
        assert carrier_status["registrations"] == 0
        assert registration(await status_of(gateway))["failures"] == 1
