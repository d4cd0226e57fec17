"""What the peers of a relayed call say about each other in the RTCP the relay forwards.

A relayed call passes RTCP end to end (RFC 3550 6): the gateway sends no reports of its
own and keeps no RTP sequence state. It can still read the reports going through it.
:class:`RelayedRtcp` takes each compound RTCP packet a leg's peer sent (plain, or SRTCP
after the relay unprotected it) and keeps per leg:

* the latest reception report block the peer sent about the stream it receives from the
  other peer (RFC 3550 6.4.1): fraction lost (1/256), cumulative lost, interarrival
  jitter in timestamp units, extended highest sequence number;
* the round trip between the gateway and that peer. An SR from one peer passes through
  the relay at time t1; the other peer's report block answers it with LSR (the SR's NTP
  middle 32 bits) and DLSR; the block reaches the relay at t2. ``t2 - t1 - DLSR`` is the
  gateway-to-peer-and-back time, on the gateway's own clock only (RFC 3550 6.4.1's
  A - LSR - DLSR with the SR's send time replaced by when it passed us), so the peers'
  clocks need not agree with ours.

Malformed RTCP is counted and otherwise ignored: the relay forwards it regardless.
Sans-IO: bytes and the caller's monotonic time (seconds) in, figures out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gateway.media.rtcp import (
    ReceiverReport,
    ReportBlock,
    RtcpError,
    SenderReport,
    ntp_short,
    parse_rtcp,
)

__all__ = ["RelayedRtcp"]

Leg = Literal["a", "b"]

# SRs remembered per peer for RTT matching: reports come every ~5 s, an answer names
# the latest SR its sender had, so a few cover reordering and a lost report or two.
_REMEMBERED_SRS: Final = 8
_DLSR_UNIT: Final = 65536.0  # DLSR is in 1/65536 s


@dataclass(slots=True)
class _LegReports:
    """One leg's peer as its RTCP shows it."""

    packets: int = 0
    parse_errors: int = 0
    ssrc: int | None = None
    """The peer's own SSRC (sender field of its SR/RR)."""
    block: ReportBlock | None = None
    block_at: float | None = None
    rtt: float | None = None
    sent_srs: OrderedDict[int, float] = field(default_factory=OrderedDict)
    """LSR value of each recent SR this peer sent -> when it passed the relay."""


class RelayedRtcp:
    """The latest RTCP reception reports of both legs' peers, and each leg's round trip."""

    def __init__(self) -> None:
        self._legs: dict[Leg, _LegReports] = {"a": _LegReports(), "b": _LegReports()}

    def observe(self, leg: Leg, data: bytes, now: float) -> None:
        """Read one compound RTCP packet ``leg``'s peer sent, which arrived at ``now``."""
        mine = self._legs[leg]
        other = self._legs["b" if leg == "a" else "a"]
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            mine.parse_errors += 1
            return
        mine.packets += 1
        for packet in packets:
            if isinstance(packet, SenderReport):
                self._remember_sr(mine, packet, now)
            if isinstance(packet, SenderReport | ReceiverReport):
                mine.ssrc = packet.ssrc
                self._take_reports(mine, other, packet.reports, now)

    @staticmethod
    def _remember_sr(mine: _LegReports, report: SenderReport, now: float) -> None:
        lsr = ntp_short(report.sender_info.ntp_timestamp)
        if lsr == 0:  # 0 means "no SR" in a report block: it could never be matched
            return
        mine.sent_srs[lsr] = now
        mine.sent_srs.move_to_end(lsr)
        while len(mine.sent_srs) > _REMEMBERED_SRS:
            mine.sent_srs.popitem(last=False)

    @staticmethod
    def _take_reports(
        mine: _LegReports, other: _LegReports, blocks: tuple[ReportBlock, ...], now: float
    ) -> None:
        if not blocks:
            return
        # The block about the other peer's stream; a peer receiving several sources
        # reports each, and before we know the other peer's SSRC the first is taken.
        block = next((b for b in blocks if b.ssrc == other.ssrc), blocks[0])
        mine.block, mine.block_at = block, now
        sent_at = other.sent_srs.get(block.last_sr) if block.last_sr else None
        if sent_at is not None:
            rtt = now - sent_at - block.delay_since_last_sr / _DLSR_UNIT
            if rtt >= 0:  # negative: a bogus DLSR; keep the last good figure
                mine.rtt = rtt

    def snapshot(self, leg: Leg) -> dict[str, Any]:
        """``leg``'s figures as plain data (jitter in RTP timestamp units, RTT in seconds)."""
        state = self._legs[leg]
        block = state.block
        return {
            "packets": state.packets,
            "parse_errors": state.parse_errors,
            "ssrc": state.ssrc,
            "reported_ssrc": None if block is None else block.ssrc,
            "fraction_lost": None if block is None else block.fraction_lost,
            "cumulative_lost": None if block is None else block.cumulative_lost,
            "highest_sequence": None if block is None else block.highest_sequence,
            "jitter": None if block is None else block.jitter,
            "rtt": state.rtt,
            "updated": state.block_at,
        }
