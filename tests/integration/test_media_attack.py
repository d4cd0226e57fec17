"""RTP Bleed and SRTP replay against a live call: nothing reaches the clients, audio stays.

Two baresip clients in namespace A talk over SRTP (SDES over TLS) through the gateway
in G, each sending its own tone. Meanwhile:

* an attacker in the carrier namespace C sprays every media port of the gateway, from
  before the call exists until it ends, with plain RTP carrying a 3 kHz tone, with SRTP
  under keys of its own (forged), and with junk;
* an attacker on the app LAN (namespace A) sniffs the caller's genuine SRTP off the wire
  and sends it again, once from its own address and once with the caller's own address
  and port forged in a raw IP header (a replay from the latched source).

What must hold: each client hears only the other's tone for the whole call (never the
3 kHz tone), the relay stays latched to the clients, and the gateway counts the attack
by reason: forged SRTP as ``srtp-auth``, foreign sources as ``unexpected-source``, the
forged-source replays as ``srtp-replay``.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.media.g711 import G711Codec
from gateway.media.srtp import SrtpSender, SrtpSuite, new_crypto
from tests.integration.baresip import Sine, baresip_binary
from tests.integration.netns import (
    APP_ADDRESSES,
    CARRIER_ADDRESSES,
    GATEWAY_APP_ADDRESS,
    EdgeTopology,
    Namespace,
)
from tests.integration.test_baresip import (
    CALLEE_TONE,
    CALLER_TONE,
    CallLab,
)
from tests.speech import read_wav, tone_seconds

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        baresip_binary() is None, reason="baresip not on PATH (Debian package baresip-core)"
    ),
]

MEDIA_PORTS = range(30000, 30100)  # test_baresip's config: media.port_min/port_max
ATTACK_TONE = 3000
SNIFFER_ADDRESS = "203.0.113.12"
ETH_P_IP = 0x0800
# Frames a host sends reach only packet sockets of every protocol (ETH_P_ALL), not ones
# bound to IP: the sniffer must take everything and pick IPv4 itself.
ETH_P_ALL = 0x0003


PCMU = G711Codec("PCMU")


def pcmu_tone(seq: int) -> bytes:
    """20 ms of a loud 3 kHz tone in PCMU, the attacker's audible payload."""
    samples = [
        int(12000 * math.sin(2 * math.pi * ATTACK_TONE * (seq * 160 + i) / 8000))
        for i in range(160)
    ]
    return PCMU.encode(struct.pack(f"<{len(samples)}h", *samples))


def rtp(seq: int, ssrc: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc)
    return header + payload


class Sprayer(threading.Thread):
    """Plain RTP, forged SRTP and junk to every media port, round and round."""

    def __init__(self, namespace: Namespace) -> None:
        super().__init__(daemon=True)
        with namespace.entered():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((CARRIER_ADDRESSES[1], 0))
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        forger = SrtpSender(new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80))
        ssrc = secrets.randbits(32)
        seq = 0
        while not self.stop.is_set():
            seq += 1
            plain = rtp(seq, ssrc, pcmu_tone(seq))
            packets = (plain, forger.protect_rtp(plain), secrets.token_bytes(60))
            for port in MEDIA_PORTS:
                with contextlib.suppress(OSError):
                    self.sock.sendto(packets[port % 3], (GATEWAY_APP_ADDRESS, port))
                    self.sent += 1
            time.sleep(0.02)  # each port about 50 packets a second
        self.sock.close()


def checksum(header: bytes) -> int:
    total = int(sum(struct.unpack(f"!{len(header) // 2}H", header)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Replayer(threading.Thread):
    """Sniffs the caller's media off A's link and sends every packet again, twice.

    Once from the attacker's own address, once with the caller's address and port
    forged (IP_HDRINCL), after the original has gone through.
    """

    def __init__(self, namespace: Namespace, interface: str) -> None:
        super().__init__(daemon=True)
        with namespace.entered():
            self.sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sniff.bind((interface, ETH_P_ALL))
            self.sniff.settimeout(0.2)
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.own.bind((SNIFFER_ADDRESS, 0))
        self.stop = threading.Event()
        self.seen: set[bytes] = set()
        self.replayed = 0

    def run(self) -> None:
        caller = socket.inet_aton(APP_ADDRESSES[0])
        gateway = socket.inet_aton(GATEWAY_APP_ADDRESS)
        while not self.stop.is_set() and self.replayed < 300:
            try:
                frame = self.sniff.recv(2048)
            except TimeoutError:
                continue
            ip = frame[14:]
            if frame[12:14] != b"\x08\x00" or len(ip) < 28 or ip[9] != socket.IPPROTO_UDP:
                continue
            if ip[12:16] != caller or ip[16:20] != gateway:
                continue
            ihl = (ip[0] & 0x0F) * 4
            sport, dport = struct.unpack("!HH", ip[ihl : ihl + 4])
            payload = ip[ihl + 8 :]
            if dport not in MEDIA_PORTS or payload in self.seen:
                continue
            self.seen.add(payload)
            time.sleep(0.03)  # the original is relayed first: this is a replay
            self.own.sendto(payload, (GATEWAY_APP_ADDRESS, dport))
            self.raw.sendto(
                self.forged(caller, gateway, sport, dport, payload),
                (
                    GATEWAY_APP_ADDRESS,
                    0,
                ),
            )
            self.replayed += 1
        for sock in (self.sniff, self.raw, self.own):
            sock.close()

    @staticmethod
    def forged(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
        udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0, src, dst
        )
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        return header + udp


def link_interface(namespace: Namespace) -> str:
    """The one non-loopback interface of ``namespace``."""
    listing = namespace.run(["ip", "-o", "link", "show"]).stdout
    names = [line.split(": ")[1].split("@")[0] for line in listing.splitlines()]
    (name,) = [n for n in names if n != "lo"]
    return name


@contextlib.contextmanager
def running(*threads: Sprayer | Replayer) -> Iterator[None]:
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for thread in threads:
            thread.stop.set()
        for thread in threads:
            thread.join(timeout=5)


@pytest.fixture
def lab(short_tmp: Path, edge: EdgeTopology) -> Iterator[CallLab]:
    with contextlib.ExitStack() as stack:
        yield CallLab(short_tmp, edge, stack)


def call_media(lab: CallLab) -> dict[str, dict[str, object]]:
    assert lab.gateway is not None
    done = lab.gateway.cli("calls", "--json")
    assert done.returncode == 0, done.stderr
    (call,) = json.loads(done.stdout)
    media: dict[str, dict[str, object]] = call["media"]
    return media


def test_spray_forgery_and_replay_reach_no_one_and_the_call_keeps_its_audio(
    lab: CallLab,
) -> None:
    interface = link_interface(lab.edge.app)
    lab.edge.app.run(["ip", "addr", "add", f"{SNIFFER_ADDRESS}/24", "dev", interface])
    lab.start_gateway()
    sprayer = Sprayer(lab.edge.carrier)
    replayer = Replayer(lab.edge.app, interface)
    with running(sprayer, replayer):
        time.sleep(0.5)  # the spray is on before the call and its ports exist
        callee = lab.client("1002", Sine(CALLEE_TONE), ("PCMU/8000/1",))
        caller = lab.client("1001", Sine(CALLER_TONE), ("PCMU/8000/1",))
        mark = caller.dial(f"sip:1002@{GATEWAY_APP_ADDRESS}")
        caller.wait_established(since=mark)
        callee.wait_established()
        connected = time.monotonic()
        time.sleep(5.0)
        media = call_media(lab)
        caller.wait_terminated(since=caller.hangup())
        duration = time.monotonic() - connected
        callee.wait_terminated()
    for client in (caller, callee):
        assert client.quit() == 0, client.describe()
        assert client.srtp_suites(), client.describe()

    drops = {leg: media[leg]["drops"] for leg in ("a", "b")}
    print(
        f"sprayed {sprayer.sent} packets, replayed {replayer.replayed} twice; drops {drops}; "
        f"latched a={media['a']['rtp']['latched']} b={media['b']['rtp']['latched']}"  # type: ignore[index]
    )
    for leg in ("a", "b"):
        rtp_stats = media[leg]["rtp"]
        # No NAT here: the latch is exactly the address the client's SDP gave.
        assert rtp_stats["latched"] == rtp_stats["expected"], media  # type: ignore[index]
        assert rtp_stats["latched"][0] in APP_ADDRESSES  # type: ignore[index]
    total = {
        reason: sum(drops[leg].get(reason, 0) for leg in ("a", "b"))  # type: ignore[attr-defined]
        for reason in ("srtp-auth", "srtp-replay", "unexpected-source")
    }
    # Forged SRTP that reached a leg before it latched fails authentication; after the
    # latch every foreign source is refused before any SRTP work; the forged-source
    # replays pass the source check and fail libsrtp's replay check.
    assert total["srtp-auth"] > 0, drops
    assert total["srtp-replay"] >= 10, drops
    for leg in ("a", "b"):
        assert drops[leg].get("unexpected-source", 0) > 0, drops  # type: ignore[attr-defined]

    for client, other in ((caller, CALLEE_TONE), (callee, CALLER_TONE)):
        heard = read_wav(client.received_wav())
        print(
            f"{client.user}: {other} Hz for {tone_seconds(heard, other):.2f} s of "
            f"{duration:.2f} s; {ATTACK_TONE} Hz for {tone_seconds(heard, ATTACK_TONE):.2f} s"
        )
        assert tone_seconds(heard, other) >= 0.8 * duration
        assert tone_seconds(heard, ATTACK_TONE) == 0.0
