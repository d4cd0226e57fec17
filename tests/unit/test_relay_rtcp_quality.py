"""The relay reads the RTCP it forwards on a relayed call: per-leg loss, jitter and RTT.

Real sockets on loopback, a real :class:`MediaSession` relaying (no transcoding), RTCP
built with :mod:`gateway.media.rtcp`. Peer A sends an SR; peer B's RR answers it with a
known fraction lost, cumulative lost, jitter and LSR/DLSR. What must hold: the packets
reach the other peer unchanged; the relay keeps B's report as leg b's figures and the
gateway-to-B round trip from the SR's passage and the RR's; malformed RTCP is counted
and still forwarded; SRTCP is read after unprotect.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import trio

from gateway.calls.call_quality import relayed_leg
from gateway.media.relay import LocalPorts, MediaSession, PortAllocator
from gateway.media.rtcp import (
    ReceiverReport,
    ReportBlock,
    SenderInfo,
    SenderReport,
    build_rtcp,
    ntp_short,
    ntp_timestamp,
)
from gateway.media.srtp import SrtpReceiver, SrtpSender, SrtpSuite, new_crypto
from tests.unit.test_relay import LOOPBACK, Peer, session_for, start

A_SSRC, B_SSRC = 0xA0A0A0A0, 0xB0B0B0B0
SR_NTP = ntp_timestamp(1_700_000_000.25)


@pytest.fixture
def allocator() -> PortAllocator:
    base = random.randrange(54000, 58000, 2)
    return PortAllocator(LOOPBACK, base, base + 99)


@pytest.fixture
async def peers() -> AsyncIterator[dict[str, tuple[Peer, Peer]]]:
    """Per leg the peer's RTP and RTCP sockets."""
    socks = {leg: (await Peer.bind(), await Peer.bind()) for leg in ("a", "b")}
    yield socks
    for rtp_peer, rtcp_peer in socks.values():
        rtp_peer.close()
        rtcp_peer.close()


async def relayed(
    nursery: trio.Nursery, allocator: PortAllocator, peers: dict[str, tuple[Peer, Peer]]
) -> tuple[MediaSession, LocalPorts]:
    session = session_for(allocator)
    ports = await start(nursery, session)
    for leg, (rtp_peer, rtcp_peer) in peers.items():
        session.set_remote(leg, LOOPBACK, rtp_peer.port, rtcp_peer.port)
    return session, ports


def sender_report() -> bytes:
    return build_rtcp([SenderReport(A_SSRC, SenderInfo(SR_NTP, 16000, 100, 16000))])


def receiver_report(*, dlsr: float, lsr: int = ntp_short(SR_NTP)) -> bytes:
    block = ReportBlock(
        ssrc=A_SSRC,
        fraction_lost=64,  # 25 %
        cumulative_lost=10,
        highest_sequence=0x1_0010,
        jitter=160,  # 20 ms at 8 kHz
        last_sr=lsr,
        delay_since_last_sr=round(dlsr * 65536),
    )
    # A stray block about another source comes first: the one about A must be chosen.
    stray = ReportBlock(0x5555, 255, 999, 1, 8000, 0, 0)
    return build_rtcp([ReceiverReport(B_SSRC, (stray, block))])


def rtp(seq: int, ssrc: int) -> bytes:
    header = bytes([0x80, 8]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
    return header + ssrc.to_bytes(4, "big") + b"\xd5" * 160


async def through(sender: Peer, port: int, receiver: Peer, data: bytes) -> bytes:
    await sender.send(data, port)
    received, _ = await receiver.recv()
    return received


async def test_rr_answering_a_relayed_sr_gives_leg_b_loss_jitter_and_rtt(
    nursery: trio.Nursery,
    allocator: PortAllocator,
    peers: dict[str, tuple[Peer, Peer]],
) -> None:
    session, ports = await relayed(nursery, allocator, peers)
    (a_rtp, a_rtcp), (b_rtp, b_rtcp) = peers["a"], peers["b"]
    # Leg a's RTP first, so the cumulative loss has packets delivered to compare with.
    await b_rtp.send(rtp(1, B_SSRC), ports["b"][0])  # b latches first
    for seq in range(40):
        assert await through(a_rtp, ports["a"][0], b_rtp, rtp(seq, A_SSRC)) == rtp(seq, A_SSRC)
    sr = sender_report()
    assert await through(a_rtcp, ports["a"][1], b_rtcp, sr) == sr
    # B holds the SR 150 ms but claims it answered at once (DLSR 0): the relay, which
    # times only its own side, sees a 150 ms round trip to B.
    await trio.sleep(0.15)
    rr = receiver_report(dlsr=0.0)
    assert await through(b_rtcp, ports["b"][1], a_rtcp, rr) == rr

    stats = session.stats()
    b = stats["b"]["rtcp_relayed"]
    assert b["packets"] == 1 and b["parse_errors"] == 0
    assert b["ssrc"] == B_SSRC and b["reported_ssrc"] == A_SSRC
    assert (b["fraction_lost"], b["cumulative_lost"], b["jitter"]) == (64, 10, 160)
    assert 0.15 <= b["rtt"] < 0.3
    a = stats["a"]["rtcp_relayed"]
    assert a["packets"] == 1 and a["ssrc"] == A_SSRC
    assert a["fraction_lost"] is None and a["rtt"] is None  # an SR without blocks

    quality = relayed_leg(stats, "b", "PCMA", 8000, 20.0)
    assert quality is not None and quality.source == "rtcp-relayed"
    assert quality.loss_pct == 25.0  # the interval's 25 %, worse than 10 of 10 + 40 (20 %)
    assert quality.jitter_ms == 20.0
    assert quality.rtt_ms is not None and 150 <= quality.rtt_ms < 300
    assert quality.mos is not None and 1.0 <= quality.mos < 3.0  # 25 % loss is bad
    assert relayed_leg(stats, "a", "PCMA", 8000, 20.0) is None  # nothing reported on a
    # A clean last interval does not hide the loss earlier in the call.
    stats["b"]["rtcp_relayed"]["fraction_lost"] = 0
    later = relayed_leg(stats, "b", "PCMA", 8000, 20.0)
    assert later is not None and later.loss_pct == 20.0
    assert later.mos is not None and later.mos > quality.mos
    # A codec the E-model has no values for: the figures, but no MOS.
    unknown = relayed_leg(stats, "b", "speex", 8000, 20.0)
    assert unknown is not None and unknown.loss_pct == 20.0 and unknown.mos is None


async def test_dlsr_is_taken_off_and_an_unknown_lsr_gives_no_rtt(
    nursery: trio.Nursery,
    allocator: PortAllocator,
    peers: dict[str, tuple[Peer, Peer]],
) -> None:
    session, ports = await relayed(nursery, allocator, peers)
    (_, a_rtcp), (_, b_rtcp) = peers["a"], peers["b"]
    await b_rtcp.send(receiver_report(dlsr=0.0, lsr=0x1234_5678), ports["b"][1])
    await a_rtcp.recv()
    assert session.stats()["b"]["rtcp_relayed"]["rtt"] is None  # no SR of that LSR passed
    await through(a_rtcp, ports["a"][1], b_rtcp, sender_report())
    await trio.sleep(0.12)
    await through(b_rtcp, ports["b"][1], a_rtcp, receiver_report(dlsr=0.1))
    rtt = session.stats()["b"]["rtcp_relayed"]["rtt"]
    assert rtt is not None and 0.0 <= rtt < 0.1  # 120 ms held, 100 ms of it declared


async def test_malformed_rtcp_is_counted_and_still_forwarded(
    nursery: trio.Nursery,
    allocator: PortAllocator,
    peers: dict[str, tuple[Peer, Peer]],
) -> None:
    session, ports = await relayed(nursery, allocator, peers)
    (_, a_rtcp), (_, b_rtcp) = peers["a"], peers["b"]
    # An RR whose length field claims 16 words but carries one: RtcpError in the parser.
    truncated = bytes([0x80, 201, 0x00, 0x10]) + A_SSRC.to_bytes(4, "big")
    assert await through(a_rtcp, ports["a"][1], b_rtcp, truncated) == truncated
    # A packet type outside RFC 5761's RTCP range.
    wrong_type = bytes([0x80, 180, 0x00, 0x01]) + A_SSRC.to_bytes(4, "big")
    assert await through(a_rtcp, ports["a"][1], b_rtcp, wrong_type) == wrong_type
    a = session.stats()["a"]["rtcp_relayed"]
    assert (a["packets"], a["parse_errors"]) == (0, 2)
    assert session.stats()["a"]["drops"] == {}


async def test_rtp_is_not_read_as_rtcp(
    nursery: trio.Nursery,
    allocator: PortAllocator,
    peers: dict[str, tuple[Peer, Peer]],
) -> None:
    session, ports = await relayed(nursery, allocator, peers)
    (a_rtp, _), (b_rtp, _) = peers["a"], peers["b"]
    for seq in range(5):
        await through(a_rtp, ports["a"][0], b_rtp, rtp(seq, A_SSRC))
    a = session.stats()["a"]["rtcp_relayed"]
    assert (a["packets"], a["parse_errors"]) == (0, 0)


async def test_srtcp_is_read_after_unprotect(
    nursery: trio.Nursery,
    allocator: PortAllocator,
    peers: dict[str, tuple[Peer, Peer]],
) -> None:
    """Leg b speaks SRTP (an app), leg a plain RTP: b's SRTCP report is read in clear."""
    session, ports = await relayed(nursery, allocator, peers)
    suite = SrtpSuite.AES_CM_128_HMAC_SHA1_80
    app_key, relay_key = new_crypto(1, suite), new_crypto(1, suite)
    session.configure("b", receiver=SrtpReceiver(app_key), sender=SrtpSender(relay_key))
    app_tx, app_rx = SrtpSender(app_key), SrtpReceiver(relay_key)
    (_, a_rtcp), (_, b_rtcp) = peers["a"], peers["b"]

    sr = sender_report()
    protected_sr = await through(a_rtcp, ports["a"][1], b_rtcp, sr)
    assert app_rx.unprotect_rtcp(protected_sr) == sr
    rr = receiver_report(dlsr=0.0)
    assert await through(b_rtcp, ports["b"][1], a_rtcp, app_tx.protect_rtcp(rr)) == rr
    b = session.stats()["b"]["rtcp_relayed"]
    assert (b["fraction_lost"], b["cumulative_lost"], b["jitter"]) == (64, 10, 160)
    assert b["rtt"] is not None and b["rtt"] >= 0.0
    # A tampered SRTCP packet fails authentication and is dropped before anything reads it.
    tampered = bytearray(app_tx.protect_rtcp(receiver_report(dlsr=0.0)))
    tampered[12] ^= 0x01
    await b_rtcp.send(bytes(tampered), ports["b"][1])
    await a_rtcp.assert_quiet()
    after = session.stats()["b"]
    assert after["rtcp_relayed"]["packets"] == 1
    assert after["drops"] == {"srtp-auth": 1}
