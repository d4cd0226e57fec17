"""Fraud limits and overload through the running gateway, over real sockets (issue 4).

Each limit is driven by a real SIP client; the carrier trunk is a socket of the test that
records every request reaching it, and no refused call ever shows up there. What each
hostile input gets:

* over the box's call rate (`limits.cps`): 503 "Service Unavailable", Retry-After;
* over its CPU budget (`limits.max_cpu`) during a real INVITE flood against the real
  `edgegw run` process: 503 "CPU Overloaded", Retry-After;
* while its event loop runs late (`limits.max_loop_lag`): 503 "Event Loop Overloaded";
* an account at its concurrent-call limit: 403 "Too Many Calls For Account";
* an account over its calls per minute: 503 "Calls Per Minute Exceeded", Retry-After;
* a blocked destination prefix (premium rate, satellite): 403 "Destination Blocked";
* the box at `max_calls`: 503 "Too Many Calls";
* a source address that failed authentication too often: nothing at all until the ban
  expires; its calls already set up go on; loopback (by default) and trunks are never
  banned.

Emergency calls pass every one of these and reach the trunk.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from gateway.sip.message import Request, Response, make_response, new_branch
from tests.integration.peers import gateway_process
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    NoMessage,
    Peer,
    TcpPeer,
    UdpPeer,
    ack_for_failure,
    authorize,
    free_sip_port,
    gateway_config_text,
    in_dialog,
    media_range,
    sdp_offer,
)

TRUNK_NUMBER = "+4930123456"


def limits(text: str) -> GatewaySettings:
    """Harness settings with these [limits] lines; the load limits are off unless set."""
    lines = {"max_cpu": "max_cpu = 0.0", "max_loop_lag": "max_loop_lag = 0.0"}
    for line in text.splitlines():
        lines[line.split("=")[0].strip()] = line
    return GatewaySettings(ipv6=False, limits_toml="\n".join(lines.values()))


@pytest.fixture
async def peer(gw: GatewayUnderTest) -> AsyncIterator[UdpPeer]:
    client = await UdpPeer.open(gw.udp4)
    try:
        yield client
    finally:
        client.close()


async def ready(peer: Peer, caller: str, to: str, *, password: str | None = None) -> Request:
    """An INVITE from `caller` to `to` with answered credentials, not yet sent."""
    invite = peer.invite(caller, to)
    challenge = await peer.transact(invite)
    assert challenge.status == 407, f"{challenge.status} {challenge.reason}"
    return peer.authorize(invite, challenge, caller, password=password)


async def refused(peer: Peer, invite: Request) -> Response:
    """Send `invite`; its final response (a failure, ACKed)."""
    response = await peer.transact(invite)
    assert response.status >= 300, f"{response.status} {response.reason}"
    return response


async def carried(trunk: UdpPeer, gw_address: tuple[str, int], *, ring: bool = True) -> Request:
    """The next INVITE at the trunk, answered 180 so that it rings (and is not resent)."""
    invite = await trunk.expect_request("INVITE")
    if ring:
        await trunk.reply(invite, 180, to_tag=_tag(), to=gw_address)
    return invite


async def trunk_invites(
    trunk: UdpPeer, gw_address: tuple[str, int], quiet: float = 0.3
) -> list[Request]:
    """Every new INVITE the trunk gets (backlog included) until nothing came for `quiet` s,
    each answered 180; retransmissions are not counted twice."""
    messages = [m for m, _ in trunk.backlog]
    trunk.backlog.clear()
    while (item := await trunk.receive(quiet)) is not None:
        messages.append(item[0])
    found: dict[str, Request] = {}
    for message in messages:
        if isinstance(message, Request) and message.method == "INVITE":
            if message.call_id not in found:
                await trunk.reply(message, 180, to_tag=_tag(), to=gw_address)
            found.setdefault(message.call_id, message)
    return list(found.values())


async def end_all(gw: GatewayUnderTest, trunk: UdpPeer, invites: list[Request]) -> None:
    """Refuse every carried call at the trunk and wait until the gateway holds none."""
    for invite in invites:
        await trunk.reply(invite, 486, to_tag="end", to=gw.udp4)
    with trio.fail_after(5):
        while gw.running.core.calls:
            await trio.sleep(0.02)


def _tag() -> str:
    return "carrier-" + new_branch()[-8:]


def dialled(invite: Request) -> str:
    return invite.uri.split("@")[0].removeprefix("sip:")


# ---- the box's call rate -------------------------------------------------------------------


@pytest.mark.parametrize("gateway_settings", [limits("cps = 2")], ids=["cps=2"])
async def test_global_call_rate_refuses_503_with_retry_after(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    first = await ready(peer, "1001", TRUNK_NUMBER)
    second = await ready(peer, "1002", TRUNK_NUMBER)
    third = await ready(peer, "1001", TRUNK_NUMBER)
    emergency = await ready(peer, "1002", "110")
    # Back to back: two tokens in the bucket, then none for half a second.
    for invite in (first, second, third):
        await peer.send(invite)
    response = await peer.expect_response(third)
    assert (response.status, response.reason) == (503, "Service Unavailable")
    assert response.headers.get("Retry-After") == "1"
    await peer.send(emergency)
    reached = await trunk_invites(trunk, gw.udp4)
    assert sorted(dialled(i) for i in reached) == sorted([TRUNK_NUMBER, TRUNK_NUMBER, "110"])
    assert gw.running.core.stats.refusals["global_rate"] == 1
    assert len(gw.running.core.calls) == 3
    await end_all(gw, trunk, reached)


# ---- per account ----------------------------------------------------------------------------


async def end_one(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer, call: tuple[Request, Request]
) -> None:
    """The trunk refuses one ringing call with 486; the caller gets it and ACKs."""
    caller_invite, at_trunk = call
    await trunk.reply(at_trunk, 486, to_tag="busy", to=gw.udp4)
    busy = await peer.expect_response(caller_invite)
    assert busy.status == 486
    await peer.send(ack_for_failure(caller_invite, busy))


async def place(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer, caller: str, to: str
) -> tuple[Request, Request]:
    """A call that reaches the trunk and rings: (the caller's INVITE, the trunk's)."""
    invite = await ready(peer, caller, to)
    await peer.send(invite)
    return invite, await carried(trunk, gw.udp4)


@pytest.mark.parametrize("gateway_settings", [limits("calls_per_account = 2")], ids=["2-calls"])
async def test_account_at_its_concurrent_call_limit_gets_403(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    admission = gw.running.core.admission
    first = await place(gw, peer, trunk, "1001", TRUNK_NUMBER)
    second = await place(gw, peer, trunk, "1001", TRUNK_NUMBER)
    over = await refused(peer, await ready(peer, "1001", TRUNK_NUMBER))
    assert (over.status, over.reason) == (403, "Too Many Calls For Account")
    assert "Retry-After" not in over.headers
    # Another account has its own count; an emergency call passes the full account
    # (and, being a call in progress, counts toward it).
    other = await place(gw, peer, trunk, "1002", TRUNK_NUMBER)
    emergency = await place(gw, peer, trunk, "1001", "120")
    assert dialled(emergency[1]) == "120"
    assert await trunk_invites(trunk, gw.udp4) == []  # the refused call never reached it
    assert (admission.active("1001"), admission.active("1002")) == (3, 1)
    # Calls end, and 1001 may call again once it is under its limit.
    await end_one(gw, peer, trunk, first)
    await end_one(gw, peer, trunk, emergency)
    with trio.fail_after(5):
        while admission.active("1001") != 1:
            await trio.sleep(0.02)
    third = await place(gw, peer, trunk, "1001", TRUNK_NUMBER)
    assert gw.running.core.stats.refusals["account_calls"] == 1
    await end_all(gw, trunk, [second[1], other[1], third[1]])
    assert admission.active("1001") == admission.active("1002") == 0


@pytest.mark.parametrize(
    "gateway_settings", [limits("calls_per_minute_per_account = 2")], ids=["2-per-minute"]
)
async def test_account_over_its_calls_per_minute_gets_503_with_retry_after(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    ringing = []
    for _ in range(2):
        await peer.send(await ready(peer, "1001", TRUNK_NUMBER))
        ringing.append(await carried(trunk, gw.udp4))
    over = await refused(peer, await ready(peer, "1001", TRUNK_NUMBER))
    assert (over.status, over.reason) == (503, "Calls Per Minute Exceeded")
    # One call every 30 s: the next is due in the rest of those 30 s.
    assert 20 <= int(over.headers.get("Retry-After") or "0") <= 30
    await peer.send(await ready(peer, "1002", TRUNK_NUMBER))
    ringing.append(await carried(trunk, gw.udp4))
    await peer.send(await ready(peer, "1001", "110"))
    ringing.append(await carried(trunk, gw.udp4))
    assert [dialled(i) for i in ringing] == [TRUNK_NUMBER] * 3 + ["110"]
    assert await trunk_invites(trunk, gw.udp4) == []
    assert gw.running.core.stats.refusals["account_per_minute"] == 1
    assert gw.running.core.stats.calls_rate_limited == 1
    await end_all(gw, trunk, ringing)


# ---- destinations and capacity ---------------------------------------------------------------


@pytest.mark.parametrize(
    "gateway_settings", [limits('blocked_prefixes = ["979", "881", "1"]')], ids=["blocked"]
)
async def test_blocked_destination_prefixes_get_403_and_emergency_passes(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    # E.164, the international dialling format of the home plan (CN: 00), and NANP.
    for number in ("+979123456789", "00881612345678", "+12025550123"):
        response = await refused(peer, await ready(peer, "1001", number))
        assert (response.status, response.reason) == (403, "Destination Blocked"), number
    assert await trunk_invites(trunk, gw.udp4) == []
    # 911 starts with the blocked "1" but is an emergency number; others still pass.
    await peer.send(await ready(peer, "1001", "911"))
    emergency = await carried(trunk, gw.udp4)
    await peer.send(await ready(peer, "1001", TRUNK_NUMBER))
    ordinary = await carried(trunk, gw.udp4)
    assert [dialled(emergency), dialled(ordinary)] == ["911", TRUNK_NUMBER]
    assert gw.running.core.stats.refusals["blocked_destination"] == 3
    await end_all(gw, trunk, [emergency, ordinary])


@pytest.mark.parametrize("gateway_settings", [limits("max_calls = 1")], ids=["max_calls=1"])
async def test_box_at_max_calls_gets_503_and_emergency_passes(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    await peer.send(await ready(peer, "1001", TRUNK_NUMBER))
    first = await carried(trunk, gw.udp4)
    response = await refused(peer, await ready(peer, "1002", TRUNK_NUMBER))
    assert (response.status, response.reason) == (503, "Too Many Calls")
    await peer.send(await ready(peer, "1002", "119"))
    emergency = await carried(trunk, gw.udp4)
    assert dialled(emergency) == "119"
    assert await trunk_invites(trunk, gw.udp4) == []
    assert gw.running.core.stats.refusals["max_calls"] == 1
    await end_all(gw, trunk, [first, emergency])


# ---- event-loop lag --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gateway_settings", [limits("max_loop_lag = 0.1")], ids=["max_loop_lag=0.1"]
)
async def test_event_loop_running_late_gets_503_and_emergency_passes(
    gw: GatewayUnderTest, peer: UdpPeer, trunk: UdpPeer
) -> None:
    """The gateway shares this test's event loop: blocking it is real lateness.

    The load sampler wakes every 0.1 s; blocking the loop for 0.3 s at a time makes each
    wake-up about 0.2 s late, twice the threshold, until the loop runs freely again.
    """
    core = gw.running.core
    await peer.send(await ready(peer, "1001", TRUNK_NUMBER))
    ringing = [await carried(trunk, gw.udp4)]  # on time: admitted
    late = await ready(peer, "1001", TRUNK_NUMBER)
    emergency = await ready(peer, "1001", "112")
    for _ in range(6):
        time.sleep(0.3)
        await trio.sleep(0)
    lag = core.admission.load.lag()
    assert lag is not None and lag > 0.1, lag
    await peer.send(late)
    await peer.send(emergency)
    response = await peer.expect_response(late)
    assert (response.status, response.reason) == (503, "Event Loop Overloaded")
    assert response.headers.get("Retry-After") == "5"
    ringing.append(await carried(trunk, gw.udp4))
    assert dialled(ringing[-1]) == "112"
    assert core.stats.refusals["loop_lag"] == 1
    # A second later the loop is on time again and calls are admitted.
    with trio.fail_after(5):
        while (core.admission.load.lag() or 0.0) > 0.1:
            await trio.sleep(0.1)
    await peer.send(await ready(peer, "1001", TRUNK_NUMBER))
    ringing.append(await carried(trunk, gw.udp4))
    assert await trunk_invites(trunk, gw.udp4) == []
    await end_all(gw, trunk, ringing)


# ---- CPU, against the real process -----------------------------------------------------------

FLOOD_SECONDS = 6.0
FLOOD_WINDOW = 64


def flood(target: tuple[str, int], stop: threading.Event) -> int:
    """Unauthenticated INVITEs as fast as the gateway answers them (each gets a 407)."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        local = sock.getsockname()
        deadline = time.monotonic() + FLOOD_SECONDS
        while not stop.is_set() and time.monotonic() < deadline:
            for _ in range(FLOOD_WINDOW):
                sock.sendto(flood_invite(local, target, sent), target)
                sent += 1
            try:
                for _ in range(FLOOD_WINDOW):
                    sock.recv(65536)
            except TimeoutError:
                pass  # some were lost to a full socket buffer: send the next window
    return sent


def flood_invite(local: tuple[str, int], target: tuple[str, int], n: int) -> bytes:
    host, port = target
    return (
        f"INVITE sip:{TRUNK_NUMBER}@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-flood-{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:1001@{host}>;tag=flood{n}\r\n"
        f"To: <sip:{TRUNK_NUMBER}@{host}>\r\n"
        f"Call-ID: flood-{n}@{local[0]}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:1001@{local[0]}:{local[1]}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def test_cpu_over_budget_gets_503_from_the_real_process_under_a_flood(
    short_tmp: Path, trunk: UdpPeer
) -> None:
    """`edgegw run` with max_cpu = 0.2: idle it admits calls; while a flood of INVITEs keeps
    it busy (each gets a 407, far over a fifth of a core) new calls get 503, emergency
    calls still pass; a second after the flood it admits calls again.

    The control client talks TCP, so the flood (UDP) cannot crowd its messages out.
    """
    sip_port = free_sip_port(["127.0.0.1"])
    settings = limits("max_cpu = 0.2")
    config = gateway_config_text(
        Path("{var_dir}"), sip_port, media_range(), trunk.local[1], settings
    )
    gw_address = ("127.0.0.1", sip_port)
    with gateway_process(short_tmp, config) as process:
        await trio.sleep(1.5)  # start-up work leaves the load window
        client = await TcpPeer.connect(process.sip)
        try:
            await client.send(await ready(client, "1001", TRUNK_NUMBER))
            reached = [await carried(trunk, gw_address)]  # idle: admitted

            stop = threading.Event()
            sent: list[int] = []

            async def run_flood() -> None:
                sent.append(await trio.to_thread.run_sync(flood, gw_address, stop))

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_flood)
                try:
                    refusal = await _until_refused(client, trunk, gw_address, reached)
                    took = trio.current_time() - started
                    assert (refusal.status, refusal.reason) == (503, "CPU Overloaded")
                    assert refusal.headers.get("Retry-After") == "5"
                    # Bracketed by two refusals, an emergency call is admitted.
                    emergency = await ready(client, "1002", "110")
                    after = await ready(client, "1002", TRUNK_NUMBER)
                    await client.send(emergency)
                    reached.append(await carried(trunk, gw_address))
                    response = await refused(client, after)
                    assert (response.status, response.reason) == (503, "CPU Overloaded")
                finally:
                    stop.set()
            assert dialled(reached[-1]) == "110"
            print(
                f"flood of {sent[0]} INVITEs: first 503 after {took:.2f} s, "
                f"{len(reached) - 2} calls admitted before it"
            )

            await trio.sleep(1.5)  # the flood leaves the load window
            await client.send(await ready(client, "1001", TRUNK_NUMBER))
            reached.append(await carried(trunk, gw_address))
            assert await trunk_invites(trunk, gw_address) == []  # none of the refused calls
            status = process.cli("status", "--json")
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["calls_refused"] >= 2
        finally:
            await client.aclose()
        for invite in reached:
            await trunk.reply(invite, 486, to_tag="end", to=gw_address)


async def _until_refused(
    client: TcpPeer, trunk: UdpPeer, gw_address: tuple[str, int], reached: list[Request]
) -> Response:
    """Authenticated calls every 0.2 s until one is refused (within the flood's time); the
    ones admitted before the load shows are recorded in `reached`."""
    with trio.fail_after(FLOOD_SECONDS):
        while True:
            invite = await ready(client, "1001", TRUNK_NUMBER)
            await client.send(invite)
            try:
                return await client.expect_response(invite, timeout=0.2)
            except NoMessage:
                reached.append(await carried(trunk, gw_address))


# ---- bans -----------------------------------------------------------------------------------

BAN_SETTINGS = limits(
    "ban_exempt = []\nauth_failures_before_ban = 3\nauth_failure_window = 10.0\nban_seconds = 1.5"
)


async def fail_auth(peer: UdpPeer, method: str = "INVITE") -> Response:
    """A request whose digest answer uses a wrong password; the gateway's final response."""
    if method == "INVITE":
        request = peer.invite("1001", TRUNK_NUMBER)
    else:
        request = peer.request("REGISTER", f"sip:{peer.domain}", to_user="1001")
    challenge = await peer.transact(request)
    retry = authorize(
        request,
        challenge,
        username="1001",
        password="guessed",
        transport=peer.transport,
        local=peer.local,
    )
    return await peer.transact(retry)


@pytest.mark.parametrize("gateway_settings", [BAN_SETTINGS], ids=["3-failures"])
async def test_repeated_auth_failures_ban_the_source_silently_until_it_expires(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    core = gw.running.core
    attacker = await UdpPeer.open(gw.udp4, host="127.0.0.2")
    neighbour = await UdpPeer.open(gw.udp4, host="127.0.0.3")
    try:
        for method in ("INVITE", "REGISTER", "INVITE"):  # password guessing
            response = await fail_auth(attacker, method)
            assert (response.status, response.reason) == (403, "Forbidden")
        assert core.stats.bans == 1
        layer = gw.running.endpoint.layer
        transactions = len(layer)
        # Banned: no answer at all, not even to a request without credentials.
        await attacker.send(attacker.request("OPTIONS", f"sip:{attacker.domain}"))
        await attacker.send(attacker.invite("1001", TRUNK_NUMBER))
        stray_bye = attacker.request("BYE", to_user="1002")
        stray_bye.headers.set("To", f"{stray_bye.headers.get('To')};tag=none")
        await attacker.send(stray_bye)
        await attacker.expect_silence(0.5)
        assert core.stats.banned_dropped == 4  # and the ACK for the last 403, sent after it
        assert len(layer) <= transactions  # nothing is kept for what was dropped
        # Another address is not affected and may call.
        assert (await neighbour.options()).status == 200
        await neighbour.send(await ready(neighbour, "1002", TRUNK_NUMBER))
        ringing = await carried(trunk, gw.udp4)
        assert await trunk_invites(trunk, gw.udp4) == []  # nothing of the attacker's
        # The ban expires.
        await trio.sleep(1.2)
        assert (await attacker.options()).status == 200
        await end_all(gw, trunk, [ringing])
    finally:
        attacker.close()
        neighbour.close()


@pytest.mark.parametrize("gateway_settings", [BAN_SETTINGS], ids=["3-failures"])
async def test_a_banned_source_keeps_the_call_it_had_set_up(
    gw: GatewayUnderTest, trunk: UdpPeer
) -> None:
    app = await UdpPeer.open(gw.udp4, host="127.0.0.4")
    same_host = await UdpPeer.open(gw.udp4, host="127.0.0.4")
    try:
        invite = await ready(app, "1001", TRUNK_NUMBER)
        await app.send(invite)
        at_trunk = await trunk.expect_request("INVITE")
        answer = make_response(at_trunk, 200, to_tag="carrier")
        answer.headers.set("Contact", f"<sip:carrier@127.0.0.1:{trunk.local[1]}>")
        answer.headers.set("Content-Type", "application/sdp")
        answer.body = sdp_offer("127.0.0.1", 43000)
        await trunk.send(answer, gw.udp4)
        ok = await app.expect_response(invite)
        assert ok.status == 200
        ack = in_dialog(invite, ok, "ACK", invite.cseq.seq, transport="UDP", local=app.local)
        await app.send(ack)
        await trunk.expect_request("ACK")

        for _ in range(3):
            assert (await fail_auth(same_host)).status == 403
        assert gw.running.core.stats.bans == 1
        await same_host.send(same_host.request("OPTIONS", f"sip:{same_host.domain}"))
        await same_host.expect_silence(0.3)

        # The established call's BYE still goes through, to the trunk and back.
        bye = in_dialog(invite, ok, "BYE", invite.cseq.seq + 1, transport="UDP", local=app.local)
        await app.send(bye)
        carried_bye = await trunk.expect_request("BYE")
        await trunk.reply(carried_bye, 200, to=gw.udp4)
        assert (await app.expect_response(bye)).status == 200
        # A new call from there is dropped.
        await app.send(app.invite("1001", TRUNK_NUMBER))
        await app.expect_silence(0.3)
    finally:
        app.close()
        same_host.close()


@pytest.mark.parametrize(
    "gateway_settings",
    [limits("auth_failures_before_ban = 3"), BAN_SETTINGS],
    ids=["default-exempt", "trunk-address"],
)
async def test_loopback_by_default_and_trunk_addresses_are_never_banned(
    gw: GatewayUnderTest, trunk: UdpPeer, gateway_settings: GatewaySettings
) -> None:
    # Default ban_exempt: every loopback source. With ban_exempt = []: 127.0.0.1 still,
    # because the trunk is there (forged failures must not cut a carrier off).
    host = "127.0.0.2" if "ban_exempt" not in gateway_settings.limits_toml else "127.0.0.1"
    source = await UdpPeer.open(gw.udp4, host=host)
    try:
        for _ in range(6):
            assert (await fail_auth(source)).status == 403
        assert (await source.options()).status == 200
        assert gw.running.core.stats.bans == 0
        assert await trunk_invites(trunk, gw.udp4, 0.1) == []
    finally:
        source.close()
