"""gateway.control.capture: the registry with a real relay on loopback, read back from the file.

A real MediaSession relays RTP between two UDP peers while a capture of its call runs; SIP
is handed to the registry through the tap hook the SIP endpoint calls (raw bytes and flow),
over UDP, TCP and TLS. The file is read with tests/pcap_reader.py. Also: start refused for
an unknown call and on a nearly full disk, a capture that stops when the disk fills, one
that stops when its call ends, and the taps cleared when nothing runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from gateway.control.capture import CaptureError, CaptureRegistry, sip_call_id
from gateway.media.relay import MediaSession, PortAllocator
from gateway.transport.endpoint import SipTap
from gateway.transport.flow import Flow
from tests.pcap_reader import read_pcap
from tests.unit.test_relay import LOOPBACK, Peer, free_pair, rtp, session_for

GW_SIP = ("127.0.0.1", 5060)
APP_SIP = ("127.0.0.1", 40000)
TRUNK_SIP = ("127.0.0.1", 5080)


@dataclass
class Leg:
    call_id: str


@dataclass
class CallUnderTest:
    """The parts of gateway.calls.b2bua.Call a capture reads, around a real MediaSession."""

    id: str
    a: Leg
    b: Leg
    media: MediaSession
    ended: trio.Event = field(default_factory=trio.Event)


@dataclass
class Endpoint:
    tap: SipTap | None = None


def message(first_line: str, call_id: str, compact: bool = False) -> bytes:
    name = "i" if compact else "Call-ID"
    return (
        f"{first_line}\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n"
        f"{name}:  {call_id} \r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_call_id_is_read_from_raw_bytes_in_both_header_forms() -> None:
    assert sip_call_id(message("BYE sip:x SIP/2.0", "abc@h")) == "abc@h"
    assert sip_call_id(message("SIP/2.0 200 OK", "c0mpact", compact=True)) == "c0mpact"
    assert sip_call_id(b"BYE sip:x SIP/2.0\r\nCALL-ID:up\r\n\r\n") == "up"
    # A Call-ID line in the body is not the message's.
    assert sip_call_id(b"BYE sip:x SIP/2.0\r\nCSeq: 1 BYE\r\n\r\nCall-ID: body") is None


async def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def test_capture_of_relay_and_sip_reads_back(tmp_path: Path) -> None:
    base = free_pair(2)
    session = session_for(PortAllocator(LOOPBACK, base, base + 3))
    a, b = await Peer.bind(), await Peer.bind()
    disk = {"low": False}
    call = CallUnderTest("c1", Leg("leg-a@app"), Leg("leg-b@gw"), session)
    endpoint = Endpoint()
    registry = CaptureRegistry(
        tmp_path / "captures",
        calls={"c1": call},
        endpoint=endpoint,
        disk_low=lambda: disk["low"],
        linger=0.05,
    )
    try:
        async with trio.open_nursery() as nursery:
            ports = session.open(nursery)
            session.set_remote("a", LOOPBACK, a.port)
            session.set_remote("b", LOOPBACK, b.port)
            await nursery.start(registry.run)
            with pytest.raises(CaptureError, match="no call 'nope' in progress"):
                await registry.start("nope")
            with pytest.raises(CaptureError, match="must be an absolute path"):
                await registry.start("c1", Path("relative.pcap"))
            started = await registry.start("c1")
            path = Path(started["file"])
            assert path.parent == tmp_path / "captures" and started["state"] == "running"
            assert endpoint.tap is not None and session.tap is not None

            await a.send(rtp(1), ports["a"][0])
            assert (await b.recv())[0] == rtp(1)
            tap = endpoint.tap
            tap(message("BYE sip:gw SIP/2.0", "leg-a@app"), Flow("udp", GW_SIP, APP_SIP), False)
            tap(message("BYE sip:trunk SIP/2.0", "leg-b@gw"), Flow("tcp", GW_SIP, TRUNK_SIP), True)
            tap(message("SIP/2.0 200 OK", "leg-b@gw", True), Flow("tcp", GW_SIP, TRUNK_SIP), False)
            tap(message("BYE sip:gw SIP/2.0", "leg-a@app"), Flow("tls", GW_SIP, APP_SIP), False)
            tap(message("BYE sip:gw SIP/2.0", "other@call"), Flow("udp", GW_SIP, APP_SIP), False)

            stopped = await registry.stop("c1")
            assert (stopped["state"], stopped["stop_reason"]) == ("stopped", "stopped by command")
            assert endpoint.tap is None and session.tap is None
            assert stopped["tls_not_captured"] == 1 and "over TLS not captured" in stopped["note"]
            records = read_pcap(path)
            assert stopped["packets"] == len(records) == 5
            rtp_in, rtp_out, bye_a, bye_b, ok_b = records
            assert (rtp_in.source, rtp_in.destination) == (
                (LOOPBACK, a.port),
                (LOOPBACK, ports["a"][0]),
            )
            assert (rtp_out.source, rtp_out.destination) == (
                (LOOPBACK, ports["b"][0]),
                (LOOPBACK, b.port),
            )
            assert rtp_in.payload == rtp_out.payload == rtp(1)
            assert (bye_a.protocol, bye_a.source, bye_a.destination) == ("udp", APP_SIP, GW_SIP)
            assert (bye_b.protocol, bye_b.source, bye_b.destination) == ("tcp", GW_SIP, TRUNK_SIP)
            assert (ok_b.protocol, ok_b.source) == ("tcp", TRUNK_SIP)
            assert ok_b.ack == (bye_b.seq or 0) + len(bye_b.payload)  # one TCP stream

            with pytest.raises(CaptureError, match="no capture of call 'c1' is running"):
                await registry.stop("c1")
            disk["low"] = True
            with pytest.raises(CaptureError, match="disk nearly full"):
                await registry.start("c1")
            disk["low"] = False
            second = await registry.start("c1", tmp_path / "second.pcap")
            with pytest.raises(CaptureError, match="already being captured"):
                await registry.start("c1")
            disk["low"] = True  # the writer asks before each write: the capture gives up
            await a.send(rtp(2), ports["a"][0])
            await b.recv()
            await wait_until(lambda: registry.list()[-1]["state"] == "stopped")
            assert registry.list()[-1]["stop_reason"] == "disk nearly full"
            assert read_pcap(Path(second["file"])) == []  # the header only

            disk["low"] = False
            with pytest.raises(CaptureError, match="already exists"):
                await registry.start("c1", tmp_path / "second.pcap")
            await registry.start("c1", tmp_path / "third.pcap")
            call.ended.set()  # the call ends: the capture stops after its linger
            await wait_until(lambda: registry.list()[-1]["state"] == "stopped")
            assert registry.list()[-1]["stop_reason"] == "call ended"
            assert [c["file"] for c in registry.list()] == [
                str(path),
                str(tmp_path / "second.pcap"),
                str(tmp_path / "third.pcap"),
            ]
            nursery.cancel_scope.cancel()
    finally:
        session.close()
        a.close()
        b.close()
