"""A call's per-leg quality, from what its media already measures.

Reads the call's relay counters and RTCP/jitter-buffer statistics
(:meth:`~gateway.media.relay.MediaSession.stats`) with the codecs and packet sizes
the offer/answer agreed, and rates each leg by the E-model
(:mod:`gateway.media.quality`). ``Call.summary()`` shows it live; the call's record
keeps the last one for its CDR.
"""

from __future__ import annotations

from gateway.calls.call_media import CallMedia
from gateway.media.quality import CallQuality, call_quality

__all__ = ["measure"]


def measure(media: CallMedia) -> CallQuality:
    """Both legs' quality now (counters only, MOS None, while nothing was negotiated)."""
    plan = media.plan
    if plan is None:
        codecs: dict[str, str | None] = {"a": None, "b": None}
        sizes: dict[str, float] = {}
    else:
        codecs = {"a": plan.a.codec.encoding, "b": plan.b.codec.encoding}
        sizes = {"a": float(plan.a.ptime), "b": float(plan.b.ptime)}
    return call_quality(media.session.stats(), codecs, packet_ms=sizes)
