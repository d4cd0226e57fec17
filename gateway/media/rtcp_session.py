"""The gateway's own RTCP on one leg of a transcoded call (sans-IO).

In relay mode RTCP passes end to end. When a call is transcoded, each leg is an
RTP session of its own between its peer and the gateway (RFC 3550 6; a
translator that changes the encoding must not pass the reports on, RFC 3550
7.2 / RFC 7667 3.2.1.3), so the gateway terminates the peer's RTCP and sends
its own:

* every report interval (:class:`~gateway.media.rtcp.RtcpScheduler`: RFC 3550
  6.2/6.3/A.7, 5 s minimum, halved before the first; a fixed interval for
  tests) a compound packet of an SR about the stream we send to the leg (an
  RR until we have sent), with one report block about the stream we receive
  from it (loss, extended highest sequence, jitter, LSR/DLSR, RFC 3550 6.4.1),
  then an SDES with our CNAME (RFC 3550 6.5.1; a random one, RFC 7022);
* from what the peer sends: an SR updates the LSR/DLSR of our next block, and
  a block about our stream gives the loss the peer sees and the round-trip
  time (RFC 3550 6.4.1: A - LSR - DLSR).

:class:`LegRtcp` reads the reception and sender statistics that the leg's two
:class:`~gateway.media.transcode.Transcoder` objects keep: the one fed by the
leg (what we receive) and the one sending to it (what we send, on its SSRC).
Times are seconds on the caller's clock; the wall clock (Unix seconds) is asked
for where NTP timestamps are made or compared.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Final

from gateway.media.rtcp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    RtcpScheduler,
    SdesChunk,
    SdesItem,
    SdesType,
    SenderReport,
    SourceDescription,
    build_rtcp,
    ntp_timestamp,
    parse_rtcp,
    round_trip_time,
)
from gateway.media.transcode import Transcoder

__all__ = ["LegRtcp", "LegRtcpStats"]

# RFC 3550 6.2: report sizes count the UDP and IP headers (IPv4 here).
_UDP_IP_OVERHEAD: Final = 28
_NTP_SHORT_UNIT: Final = 65536


@dataclass(slots=True)
class LegRtcpStats:
    """What one leg's RTCP told us, and how much of it there was."""

    reports_sent: int = 0
    packets_received: int = 0
    malformed: int = 0
    """Compound packets that did not parse (dropped whole, RFC 3550 A.2)."""
    sender_reports: int = 0
    """SRs from the peer about the stream we receive."""
    remote_fraction_lost: float = 0.0
    """Share of our packets the peer lost in its last interval (0..1)."""
    remote_cumulative_lost: int = 0
    remote_jitter: float = 0.0
    """Interarrival jitter of our stream at the peer, seconds."""
    rtt: float | None = None
    """Round-trip time from the last block that carried an LSR, seconds."""
    byes: int = 0


class LegRtcp:
    """RTCP of the gateway on one transcoded leg; see the module documentation.

    ``inbound`` is the transcoder fed by this leg, ``outbound`` the one sending to
    it. ``fixed_interval`` replaces the RFC 3550 interval (tests); ``rng`` drives
    the interval's randomisation and the CNAME.
    """

    def __init__(
        self,
        inbound: Transcoder,
        outbound: Transcoder,
        now: float,
        *,
        min_interval: float = 5.0,
        fixed_interval: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.inbound = inbound
        self.outbound = outbound
        token = secrets.token_hex(8) if rng is None else f"{rng.getrandbits(64):016x}"
        self.cname = f"edgegw-{token}".encode("ascii")
        self._scheduler = RtcpScheduler(
            now, min_interval=min_interval, fixed_interval=fixed_interval, rng=rng
        )
        self.stats = LegRtcpStats()

    def next_deadline(self) -> float:
        """When :meth:`poll` should next be called."""
        return self._scheduler.next_report

    def _membership(self) -> tuple[int, bool]:
        we_sent = self.outbound.sender.has_sent
        return int(we_sent) + int(self.inbound.reception is not None), we_sent

    def poll(self, now: float, wallclock: float) -> bytes | None:
        """The compound report to send now, or None when it is not due (reconsidered)."""
        senders, we_sent = self._membership()
        if not self._scheduler.poll(now, members=2, senders=senders, we_sent=we_sent):
            return None
        packet = self.report(now, wallclock)
        self._scheduler.sent(
            len(packet) + _UDP_IP_OVERHEAD, now, members=2, senders=senders, we_sent=we_sent
        )
        self.stats.reports_sent += 1
        return packet

    def report(self, now: float, wallclock: float) -> bytes:
        """SR (or RR before we sent) with the block about what we receive, then SDES CNAME."""
        blocks: tuple[ReportBlock, ...] = ()
        reception = self.inbound.reception
        if reception is not None:
            block = reception.report_block(now)
            if block is not None:
                blocks = (block,)
        sender = self.outbound.sender
        first: RtcpPacket
        if sender.has_sent:
            first = sender.sender_report(now, wallclock, blocks)
        else:
            first = ReceiverReport(self.outbound.ssrc, blocks)
        sdes = SourceDescription(
            (SdesChunk(self.outbound.ssrc, (SdesItem(SdesType.CNAME, self.cname),)),)
        )
        return build_rtcp([first, sdes])

    def receive(self, data: bytes, now: float, wallclock: float) -> None:
        """A plain (already SRTCP-unprotected) compound packet from the leg's peer."""
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            self.stats.malformed += 1
            return
        self.stats.packets_received += 1
        self._scheduler.received(len(data) + _UDP_IP_OVERHEAD)
        for packet in packets:
            match packet:
                case SenderReport():
                    self._on_sender_report(packet, now)
                    self._on_blocks(packet.reports, wallclock)
                case ReceiverReport():
                    self._on_blocks(packet.reports, wallclock)
                case Bye():
                    self.stats.byes += 1
                case _:
                    pass  # SDES, APP, feedback: nothing the gateway acts on

    def _on_sender_report(self, report: SenderReport, now: float) -> None:
        reception = self.inbound.reception
        if reception is not None and report.ssrc == reception.ssrc:
            reception.on_sender_report(report, now)
            self.stats.sender_reports += 1

    def _on_blocks(self, blocks: tuple[ReportBlock, ...], wallclock: float) -> None:
        ours = self.outbound.ssrc
        clock = self.outbound.encoder.rtp_clock
        for block in blocks:
            if block.ssrc != ours:
                continue
            stats = self.stats
            stats.remote_fraction_lost = block.fraction_lost / 256
            stats.remote_cumulative_lost = block.cumulative_lost
            stats.remote_jitter = block.jitter / clock
            rtt = round_trip_time(block, ntp_timestamp(wallclock))
            if rtt is not None:
                stats.rtt = rtt / _NTP_SHORT_UNIT

    def snapshot(self) -> dict[str, Any]:
        return asdict(self.stats)
