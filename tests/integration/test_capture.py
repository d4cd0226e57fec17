"""`edgegw capture` against the real gateway: a call's SIP and RTP read back from the pcap.

The gateway runs as `edgegw run` (peers.gateway_process, through test_calls' Lab). User 1001
calls a carrier number with sipp; its media is an RtpPeer on another loopback address and
the carrier (sipp -rtp_echo) echoes what the relay sends it. Once the call is answered,
`edgegw capture start ID` (the real command) starts a capture; RTP then flows both ways
through the relay, the caller hangs up, and the capture stops by itself when the call ends.
The file is read with tests/pcap_reader.py (lengths and checksums checked) and with tshark:
both legs' BYE and 200 with their own Call-IDs, RTP in all four directions on the relay's
ports, timestamps increasing.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.peers import external_media, sdp_media_address, sipp_binary
from tests.integration.test_calls import (
    CALLER_MEDIA_HOST,
    CARRIER_NUMBER,
    GATEWAY_HOST,
    Lab,
    is_response,
)
from tests.pcap_reader import Captured, read_pcap, tshark_binary, tshark_fields

pytestmark = pytest.mark.skipif(
    sipp_binary() is None, reason="sipp not on PATH (Debian package sip-tester)"
)

PACKETS = 25


@pytest.fixture
def lab() -> Iterator[Lab]:
    with tempfile.TemporaryDirectory(prefix="egw-") as name, contextlib.ExitStack() as stack:
        yield Lab(Path(name), stack)


def captures(lab: Lab) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = lab.cli_json("capture", "list")
    return result


def wait_stopped(lab: Lab, timeout: float = 8.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        (capture,) = captures(lab)
        if capture["state"] == "stopped" or time.monotonic() > deadline:
            return capture
        time.sleep(0.1)


def sip_of(records: list[Captured]) -> list[tuple[str, str, Captured]]:
    """(first line, Call-ID, record) of every SIP message in the capture."""
    found = []
    for record in records:
        text = record.payload.decode("utf-8", "replace")
        if text.startswith(("SIP/2.0 ", "INVITE ", "ACK ", "BYE ", "OPTIONS ")):
            head = text.split("\r\n\r\n", 1)[0].split("\r\n")
            call_id = next(
                line.split(":", 1)[1].strip()
                for line in head
                if line.lower().startswith(("call-id:", "i:"))
            )
            found.append((head[0], call_id, record))
    return found


def first_word(line: str) -> str:
    """A request's method, a response's status code."""
    words = line.split(" ")
    return words[1] if line.startswith("SIP/2.0 ") else words[0]


def is_rtp(payload: bytes) -> bool:
    # RFC 3550 5.1 version 2; RFC 5761 4: RTCP packet types 200-204 fill the second byte.
    return len(payload) >= 12 and payload[0] >> 6 == 2 and not 200 <= payload[1] <= 204


def rtp_seq(payload: bytes) -> int:
    return int.from_bytes(payload[2:4], "big")


def test_capture_of_a_call_holds_both_legs_sip_and_rtp(lab: Lab) -> None:
    gw = lab.start_gateway()
    sip = (GATEWAY_HOST, lab.sip_port)
    carrier = lab.carrier(rtp_echo=True)
    caller_media = lab.rtp_peer(CALLER_MEDIA_HOST)
    uac = lab.caller(
        external_media("uac_call", lab.tmp / "uac_ext.xml", caller_media.address),
        CARRIER_NUMBER,
        duration_ms=2500,
    )
    uac.start()
    relay_a = sdp_media_address(uac.wait_for_message(is_response(200), timeout=5).body)
    (call,) = lab.calls()
    leg_a_id, leg_b_id = call["caller_call_id"], call["callee_call_id"]
    relay_b = tuple(call["media"]["b"]["rtp"]["local"])

    refused = gw.cli("capture", "start", "no-such-call")
    assert refused.returncode == 1 and "no call 'no-such-call' in progress" in refused.stderr

    started = gw.cli("capture", "start", call["id"], "--json")
    assert started.returncode == 0, started.stderr
    path = Path(json.loads(started.stdout)["file"])
    assert path.parent == gw.var_dir / "captures" and path.name.startswith(call["id"] + "-")
    again = gw.cli("capture", "start", call["id"])
    assert again.returncode == 1 and "already being captured" in again.stderr

    caller_media.send_stream(relay_a, count=PACKETS)
    assert caller_media.wait_for(PACKETS, timeout=5), f"{caller_media.received} came back"
    (running,) = captures(lab)
    assert (running["call_id"], running["state"]) == (call["id"], "running")
    table = gw.cli("capture", "list")
    assert table.returncode == 0 and "running" in table.stdout and call["id"] in table.stdout

    assert uac.wait().ok
    assert carrier.wait(timeout=5).ok
    stopped = wait_stopped(lab)  # the call ended: the capture stops without a command
    assert (stopped["state"], stopped["stop_reason"]) == ("stopped", "call ended"), stopped
    assert (stopped["dropped"], stopped["tls_not_captured"]) == (0, 0)
    late = gw.cli("capture", "stop", call["id"])
    assert late.returncode == 1 and "no capture of call" in late.stderr

    records = read_pcap(path)  # every IP/UDP length and checksum is checked here
    assert stopped["packets"] == len(records) and stopped["bytes"] == path.stat().st_size - 24 - (
        16 * len(records)
    )
    times = [record.time for record in records]
    assert times == sorted(times) and times[-1] > times[0]
    assert abs(times[0] - time.time()) < 60

    messages = sip_of(records)
    summary = [(first_word(line), cid) for line, cid, _ in messages]
    # Both legs' BYE and 200, each leg with its own Call-ID; nothing of another call.
    assert Counter(summary) == Counter(
        [("BYE", leg_a_id), ("200", leg_a_id), ("BYE", leg_b_id), ("200", leg_b_id)]
    ), summary
    for line, cid, record in messages:
        if cid == leg_b_id:  # the carrier side: between our SIP port and the trunk
            assert {record.source, record.destination} == {sip, ("127.0.0.1", lab.trunk_port)}
        else:
            assert sip in (record.source, record.destination), line

    rtp = [r for r in records if is_rtp(r.payload)]
    assert len(rtp) + len(messages) == len(records)
    directions = Counter((r.source, r.destination) for r in rtp)
    carrier_media = ("127.0.0.1", carrier.media_port)
    assert directions == {
        (caller_media.address, relay_a): PACKETS,  # in on leg a
        (relay_b, carrier_media): PACKETS,  # out on leg b
        (carrier_media, relay_b): PACKETS,  # the echo, in on leg b
        (relay_a, caller_media.address): PACKETS,  # out on leg a
    }, directions
    sent = [rtp_seq(r.payload) for r in rtp if r.source == caller_media.address]
    assert sent == [(sent[0] + i) & 0xFFFF for i in range(PACKETS)]

    if tshark_binary() is None:  # justw installs tshark for the tests, so CI never skips this
        pytest.skip("tshark not installed (Debian package tshark)")
    rows = tshark_fields(
        path,
        ["ip.src", "udp.srcport", "sip.Method", "rtp.seq", "sip.Call-ID"],
        "--enable-heuristic",
        "rtp_udp",
    )
    assert len(rows) == len(records)
    byes = sorted(row[4] for row in rows if row[2] == "BYE")
    assert byes == sorted([leg_a_id, leg_b_id])
    from_caller = [
        int(row[3]) for row in rows if (row[0], int(row[1])) == caller_media.address and row[3]
    ]
    assert from_caller == sent
