"""A call's per-leg quality, from what its media already measures.

Reads the call's relay counters and RTCP/jitter-buffer statistics
(:meth:`~gateway.media.relay.MediaSession.stats`) with the codecs and packet sizes
the offer/answer agreed, and rates each leg by the E-model
(:mod:`gateway.media.quality`). ``Call.summary()`` shows it live; the call's record
keeps the last one for its CDR.

A transcoded call is rated from the gateway's own RTCP and jitter buffers. A relayed
call is rated from the peers' RTCP that the relay read on its way through
(:mod:`gateway.media.rtcp_relayed`), source "rtcp-relayed": a leg's figures are what
that leg's peer reported about the stream it receives (end to end, from the other
peer through the gateway), and its round trip is between the gateway and that peer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.calls.call_media import CallMedia
from gateway.media.quality import (
    CallQuality,
    Conditions,
    LegQuality,
    QualityError,
    call_quality,
    codec_impairment,
    mos_from_r,
    r_factor,
)

__all__ = ["measure", "relayed_leg"]

_SIDES = ("a", "b")


def measure(media: CallMedia) -> CallQuality:
    """Both legs' quality now (counters only, MOS None, while nothing was negotiated)."""
    plan = media.plan
    codecs: dict[str, str | None] = {"a": None, "b": None}
    sizes: dict[str, float] = {}
    clocks: dict[str, int] = {}
    if plan is not None:
        for side in _SIDES:
            leg = plan.a if side == "a" else plan.b
            codecs[side] = leg.codec.encoding
            sizes[side] = float(leg.ptime)
            clocks[side] = leg.codec.clock_rate
    stats = media.session.stats()
    quality = call_quality(stats, codecs, packet_ms=sizes)
    if quality.a.source != "none" or quality.b.source != "none":
        return quality  # transcoded: the gateway's own RTCP rated it
    a = relayed_leg(stats, "a", codecs["a"], clocks.get("a"), sizes.get("a", 20.0))
    b = relayed_leg(stats, "b", codecs["b"], clocks.get("b"), sizes.get("b", 20.0))
    return CallQuality(a=a or quality.a, b=b or quality.b)


def relayed_leg(
    stats: Mapping[str, Any],
    leg: str,
    codec: str | None,
    clock_rate: int | None,
    packet_ms: float = 20.0,
) -> LegQuality | None:
    """One relayed leg rated from its peer's latest RTCP report; None without one.

    Loss is the worse of the peer's last interval (fraction lost) and the call so far
    (cumulative lost against the packets the relay delivered to the peer). Jitter is
    converted to ms by the RTP clock of the leg's codec. The one-way delay is half the
    sum of both legs' round trips (the stream the peer hears crosses both); an unknown
    round trip counts as 0. The peer's jitter buffer is not visible to a relay: it is
    taken as twice the reported jitter.
    """
    mine = stats[leg]
    other = stats["b" if leg == "a" else "a"]
    report = mine.get("rtcp_relayed") or {}
    if report.get("fraction_lost") is None:
        return None
    loss = _loss(report, int(mine["rtp"]["packets_out"]))
    jitter = None if not clock_rate else 1000 * float(report["jitter"]) / clock_rate
    rtt = _ms(report.get("rtt"))
    other_rtt = _ms((other.get("rtcp_relayed") or {}).get("rtt"))
    r = _rating(codec, loss, jitter, (rtt or 0.0) + (other_rtt or 0.0), packet_ms)
    return LegQuality(
        leg,
        codec,
        int(mine["packets_in"]),
        int(mine["packets_out"]),
        sum(int(count) for count in mine["drops"].values()),
        loss_pct=round(loss, 2),
        jitter_ms=None if jitter is None else round(jitter, 2),
        rtt_ms=None if rtt is None else round(rtt, 2),
        r=None if r is None else round(r, 1),
        mos=None if r is None else round(mos_from_r(r), 2),
        source="rtcp-relayed",
    )


def _loss(report: Mapping[str, Any], delivered: int) -> float:
    seen = [100 * int(report["fraction_lost"]) / 256]
    cumulative = max(0, int(report.get("cumulative_lost") or 0))
    if delivered + cumulative > 0:
        seen.append(100 * cumulative / (delivered + cumulative))
    return max(seen)


def _ms(seconds: Any) -> float | None:
    return None if seconds is None else float(seconds) * 1000


def _rating(
    codec: str | None, loss: float, jitter: float | None, round_trips: float, packet_ms: float
) -> float | None:
    if codec is None:
        return None
    try:
        impairment = codec_impairment(codec)
    except QualityError:  # a codec the E-model has no values for: figures, no MOS
        return None
    conditions = Conditions(
        one_way_delay_ms=round_trips / 2,
        loss_pct=loss,
        jitter_buffer_ms=2 * (jitter or 0.0),
        packet_ms=packet_ms,
    )
    return r_factor(conditions, impairment)
