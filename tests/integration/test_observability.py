"""Observability of a running gateway: /metrics scraped over HTTP after real calls, the
per-leg quality of a transcoded call (live and in its CDR), and structured logs that
follow one call across both legs.

The app (user 1001) offers PCMU only and the carrier trunk answers PCMA only, so the
gateway transcodes and runs its own RTCP and jitter buffers: the quality the E-model
rates comes from those. The app skips a few sequence numbers (lost packets) and a
stranger sprays the app leg's port (dropped as unexpected-source).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.sip.message import Request, Response, new_tag
from gateway.sip.sdp import parse_sdp
from gateway.transport.flow import hostport
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    ack_for_failure,
    free_sip_port,
    gateway_config_text,
    in_dialog,
    media_range,
    wait_for_sip,
)

TRUNK_NUMBER = "+4930123456"
REPO_ROOT = Path(__file__).resolve().parents[2]
PACKETS = 40  # 0.8 s of 20 ms packets each way
SKIPPED = {10, 11, 25}  # sequence numbers the app never sends: 3 of 40 lost


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    return GatewaySettings(ipv6=False)


@pytest.fixture
async def app(gw: GatewayUnderTest) -> AsyncIterator[UdpPeer]:
    peer = await UdpPeer.open(gw.udp4)
    try:
        yield peer
    finally:
        peer.close()


def sdp(port: int, pt: int, name: str, sid: int) -> bytes:
    lines = [
        "v=0",
        f"o=test {sid} {sid} IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        f"m=audio {port} RTP/AVP {pt}",
        f"a=rtpmap:{pt} {name}/8000",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


async def establish(
    gateway: tuple[str, int], app: UdpPeer, trunk: UdpPeer, app_port: int, trunk_port: int
) -> tuple[Request, Response, Request, int, int]:
    """App 1001's PCMU call to the trunk number, answered by the PCMA-only trunk."""
    invite = app.request(
        "INVITE", from_user="1001", to_user=TRUNK_NUMBER, body=sdp(app_port, 0, "PCMU", 1)
    )
    challenge = await app.transact(invite)
    assert challenge.status == 407
    invite = app.authorize(invite, challenge, "1001")
    await app.send(invite)
    carried = await trunk.expect_request("INVITE")
    trunk_leg = parse_sdp(carried.body).media[0].port
    await trunk.reply(
        carried,
        200,
        to_tag=new_tag(),
        body=sdp(trunk_port, 8, "PCMA", 2),
        contact=f"<sip:carrier@127.0.0.1:{trunk.local[1]}>",
        to=gateway,
    )
    response = await app.expect_response(invite)
    assert response.status == 200
    app_leg = parse_sdp(response.body).media[0].port
    ack = in_dialog(invite, response, "ACK", invite.cseq.seq, transport="UDP", local=app.local)
    await app.send(ack)
    await trunk.expect_request("ACK", call_id=carried.call_id)
    return invite, response, carried, app_leg, trunk_leg


async def hang_up(app: UdpPeer, trunk: UdpPeer, invite: Request, response: Response) -> None:
    bye = in_dialog(invite, response, "BYE", invite.cseq.seq + 1, transport="UDP", local=app.local)
    await app.send(bye)
    await trunk.reply(await trunk.expect_request("BYE"), 200)
    assert (await app.expect_response(bye)).status == 200


async def send_rtp(
    sock: trio.socket.SocketType, to: tuple[str, int], pt: int, skip: set[int]
) -> None:
    """PCMU/PCMA silence in real time, 20 ms a packet; sequence numbers in `skip` never go."""
    silence = (b"\xff" if pt == 0 else b"\xd5") * 160
    start = trio.current_time()
    for seq in range(PACKETS):
        if seq not in skip:
            header = bytes([0x80, pt]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
            await sock.sendto(header + (0x5EED0000 + pt).to_bytes(4, "big") + silence, to)
        await trio.sleep_until(start + (seq + 1) * 0.02)


async def udp_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return samples(response.text)


async def test_metrics_and_quality_after_a_transcoded_call(
    gw: GatewayUnderTest, app: UdpPeer, trunk: UdpPeer
) -> None:
    base = f"http://{gw.running.config.http.listen}"
    app_media, trunk_media, stranger = await udp_socket(), await udp_socket(), await udp_socket()
    async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
        # A call from the carrier to a number nobody owns: refused by routing.
        unowned = "+4930999000"
        inbound = trunk.request(
            "INVITE", f"sip:{unowned}@{hostport(gw.udp4)}", from_user="+4930777", to_user=unowned
        )
        await trunk.send(inbound, gw.udp4)
        refused = await trunk.expect_response(inbound)
        assert refused.status >= 400
        await trunk.send(ack_for_failure(inbound, refused), gw.udp4)

        invite, response, _carried, app_leg, trunk_leg = await establish(
            gw.udp4, app, trunk, app_media.getsockname()[1], trunk_media.getsockname()[1]
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_rtp, app_media, ("127.0.0.1", app_leg), 0, SKIPPED)
            nursery.start_soon(send_rtp, trunk_media, ("127.0.0.1", trunk_leg), 8, set())
            await trio.sleep(0.3)  # the app's source is latched by now
            await stranger.sendto(b"\x80\x00" + bytes(170), ("127.0.0.1", app_leg))
        (call,) = gw.running.core.calls.values()
        live = call.summary()["quality"]
        assert isinstance(live, dict)
        assert live["a"]["codec"] == "PCMU" and live["b"]["codec"] == "PCMA"
        assert live["a"]["loss_pct"] == pytest.approx(100 * 3 / 40, abs=0.1)
        during = await scrape(client)
        await hang_up(app, trunk, invite, response)
        with trio.fail_after(5):
            while (cdrs := await gw.running.store.list_cdrs()) == []:
                await trio.sleep(0.02)
        after = await scrape(client)
    for sock in (app_media, trunk_media, stranger):
        sock.close()

    assert during[("edgegw_calls_active", ())] == 1
    assert during[("edgegw_calls_transcoding", ())] == 1
    assert during[("edgegw_media_packets_total", (("direction", "in"),))] > 40
    assert after[("edgegw_calls_transcoding", ())] == 0
    assert after[("edgegw_calls_active", ())] == 0
    # Counters never go back when the call's packets move from live to finished.
    for direction in ("in", "out"):
        key = ("edgegw_media_packets_total", (("direction", direction),))
        assert after[key] >= during[key]
    assert after[("edgegw_media_drops_total", (("reason", "unexpected-source"),))] >= 1
    assert after[("edgegw_srtp_auth_failures_total", ())] == 0
    assert after[("edgegw_call_refusals_total", (("reason", "route"),))] == 1
    ended = (
        "edgegw_calls_ended_total",
        (("disposition", "answered"), ("end_reason", "caller-bye")),
    )
    assert after[ended] == 1
    trunk_label = (("trunk", "test-carrier"),)
    assert after[("edgegw_trunk_seizures_total", trunk_label)] == 1
    assert after[("edgegw_trunk_answers_total", trunk_label)] == 1
    assert after[("edgegw_trunk_answer_seizure_ratio", trunk_label)] == 1.0
    assert 0.5 < after[("edgegw_trunk_average_call_duration_seconds", trunk_label)] < 10
    assert after[("edgegw_event_loop_lag_seconds", ())] >= 0.0
    for leg in ("a", "b"):
        assert after[("edgegw_call_mos_count", (("leg", leg),))] == 1
    assert after[("edgegw_call_mos_bucket", (("le", "+Inf"), ("leg", "a")))] == 1

    (cdr,) = cdrs
    assert cdr.mos_a is not None and cdr.mos_b is not None
    assert 1.0 <= cdr.mos_a < cdr.mos_b <= 4.5  # leg a lost 7.5 % of its packets
    assert cdr.loss_a == pytest.approx(7.5, abs=0.1) and cdr.loss_b == 0.0
    assert cdr.jitter_a is not None and cdr.jitter_a >= 0.0
    assert after[("edgegw_call_mos_sum", (("leg", "a"),))] == pytest.approx(cdr.mos_a)


# ---- structured logs --------------------------------------------------------------------

_JOURNALD = re.compile(r"^<(?P<priority>[2-7])>(?P<rest>event=.*)$")
# The string-valued pairs (a list or a number is skipped: the test needs only strings).
_PAIR = re.compile(r"(?:^| )(\w+)=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")(?= |$)")


def parse_line(line: str, fmt: str) -> dict[str, Any]:
    """One log line as a dict; fails the test when it is not one whole event."""
    if fmt == "json":
        parsed = json.loads(line)
        assert isinstance(parsed, dict)
        return parsed
    match = _JOURNALD.match(line)
    assert match is not None, f"not a journald line: {line!r}"
    fields = {k: ast.literal_eval(v) for k, v in _PAIR.findall(match["rest"])}
    return {**fields, "priority": int(match["priority"])}


@pytest.mark.parametrize("fmt", ["json", "journald"])
async def test_every_call_event_line_carries_the_call_id(
    short_tmp: Path, trunk: UdpPeer, fmt: str
) -> None:
    sip_port = free_sip_port(["127.0.0.1"])
    settings = GatewaySettings(ipv6=False)
    text = gateway_config_text(short_tmp / "var", sip_port, media_range(), trunk.local[1], settings)
    text = text.replace('log_level = "warning"', f'log_level = "info"\nlog_format = "{fmt}"', 1)
    config = short_tmp / "edgegw.toml"
    config.write_text(text)
    stderr = short_tmp / "stderr.log"
    with stderr.open("wb") as sink:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.control.cli", "run", "--config", str(config)],
            cwd=short_tmp,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        )
        try:
            await wait_for_sip(("127.0.0.1", sip_port), timeout=20)
            app = await UdpPeer.open(("127.0.0.1", sip_port))
            try:
                invite, response, carried, _, _ = await establish(
                    ("127.0.0.1", sip_port), app, trunk, 40000, 40002
                )
                await hang_up(app, trunk, invite, response)
            finally:
                app.close()
            await trio.sleep(0.3)  # the CDR's "call ended" line
        finally:
            gateway.terminate()
            gateway.wait(timeout=10)
    lines = stderr.read_text().splitlines()
    events = [parse_line(line, fmt) for line in lines]  # every line is one whole event
    started = next(e for e in events if e.get("sip_call_id") == invite.call_id)
    call_id = started["call"]
    mine = [e for e in events if e.get("call") == call_id]
    names = [e["event"] for e in mine]
    for expected in ("call started", "media negotiated", "call answered", "call ended"):
        assert expected in names, names
    assert "bye received" in names
    answered = next(e for e in mine if e["event"] == "call answered")
    assert answered["leg"] == "b" and answered["sip_call_id"] == carried.call_id
    # Whatever names either leg's SIP Call-ID is a line of this call: one grep follows it.
    for line, event in zip(lines, events, strict=True):
        if invite.call_id in line or carried.call_id in line:
            assert event.get("call") == call_id, line
        if call_id in line:
            assert event.get("call") == call_id, line
    if fmt == "journald":
        assert {e["priority"] for e in mine} <= {3, 4, 6, 7}
        assert all("timestamp" not in e for e in events)
    else:
        assert all("timestamp" in e and "level" in e for e in events)
