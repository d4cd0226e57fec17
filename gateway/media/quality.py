"""Call quality: the E-model (ITU-T G.107) and the per-leg quality of a call (sans-IO).

The E-model rates a connection with the transmission rating factor

    R = Ro - Is - Id - Ie,eff + A                                       (G.107 7.1)

and maps R to an estimated conversational MOS (MOS-CQE, G.107 Annex B). Every input
the gateway cannot know (loudness ratings, room noise, sidetone, echo loss) keeps its
G.107 Table 3 default; what it measures per leg goes in: the mean one-way delay
(half the RTCP round trip, RFC 3550 6.4.1), the jitter buffer's delay, the packet
size, the codec (its equipment impairment Ie and packet-loss robustness Bpl, ITU-T
G.113 Appendix I) and the packet loss with its burst ratio. With all defaults R is
93.2 and MOS-CQE 4.41.

Delays follow the usual single-path reading of G.107 for VoIP: the absolute delay Ta
is the mouth-to-ear delay (network + jitter buffer + packetisation + codec look-ahead),
the talker-echo path T equals Ta, and the listener-echo round trip Tr is 2 Ta.

:func:`call_quality` turns a call's media statistics (``MediaSession.stats()``) into
a :class:`LegQuality` per leg. Loss, jitter and round-trip time come from the
gateway's own RTCP and jitter buffers, which exist while a call is transcoded; for a
relayed call, :mod:`gateway.calls.call_quality` reads the RTCP reports the peers send
each other through the relay (:mod:`gateway.media.rtcp_relayed`); without them a leg
has packet counters only and no MOS (None, never a guess).

Nothing here reads a clock or a socket.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

__all__ = [
    "CODECS",
    "CallQuality",
    "Conditions",
    "Impairment",
    "LegQuality",
    "QualityError",
    "call_quality",
    "codec_impairment",
    "delay_impairment",
    "effective_equipment_impairment",
    "mos_from_r",
    "r_factor",
]


class QualityError(ValueError):
    """An E-model input out of its range, or a codec the model has no values for."""


# ---- G.107 Table 3 defaults (the parameters the gateway cannot measure) ----------------
_SLR: Final = 8.0  # send loudness rating, dB
_RLR: Final = 2.0  # receive loudness rating, dB
_STMR: Final = 15.0  # sidetone masking rating, dB
_LSTR: Final = 18.0  # listener sidetone rating, dB
_DS: Final = 3.0  # D-value of telephone, send side
_TELR: Final = 65.0  # talker echo loudness rating, dB
_WEPL: Final = 110.0  # weighted echo path loss, dB
_QDU: Final = 1.0  # quantizing distortion units
_NC: Final = -70.0  # circuit noise referred to the 0 dBr point, dBm0p
_NFOR: Final = -64.0  # noise floor at the receive side, dBmp
_PS: Final = 35.0  # room noise at the send side, dB(A)
_PR: Final = 35.0  # room noise at the receive side, dB(A)
_A: Final = 0.0  # advantage factor: wired/VoIP, no expectation bonus
_MT: Final = 100.0  # G.107 Table 1: mT, delay below which Idd is 0 (ms)


def _power_sum(*levels: float) -> float:
    return 10 * math.log10(sum(10 ** (level / 10) for level in levels))


def _noise_floor() -> float:
    """No (G.107 7-3 to 7-7): circuit, send-side room, receive-side room and floor noise."""
    olr = _SLR + _RLR
    nos = _PS - _SLR - _DS - 100 + 0.004 * (_PS - olr - _DS - 14) ** 2
    pre = _PR + 10 * math.log10(1 + 10 ** ((10 - _LSTR) / 10))
    nor = _RLR - 121 + pre + 0.008 * (pre - 35) ** 2
    nfo = _NFOR + _RLR
    return _power_sum(_NC, nos, nor, nfo)


_NO: Final = _noise_floor()
_RO: Final = 15 - 1.5 * (_SLR + _NO)  # G.107 7-2: basic signal-to-noise ratio


def _simultaneous_impairment(t: float) -> float:
    """Is = Iolr + Ist + Iq (G.107 7-9 to 7-17); Ist depends on the echo path delay T."""
    olr = _SLR + _RLR
    xolr = olr + 0.2 * (64 + _NO - _RLR)
    iolr = 20 * (math.pow(1 + (xolr / 8) ** 8, 1 / 8) - xolr / 8)
    stmro = -10 * math.log10(10 ** (-_STMR / 10) + math.exp(-t / 4) * 10 ** (-_TELR / 10))
    ist = (
        12 * math.pow(1 + ((stmro - 13) / 6) ** 8, 1 / 8)
        - 28 * math.pow(1 + ((stmro + 1) / 19.4) ** 35, 1 / 35)
        - 13 * math.pow(1 + ((stmro - 3) / 33) ** 13, 1 / 13)
        + 29
    )
    q = 37 - 15 * math.log10(_QDU)
    g = 1.07 + 0.258 * q + 0.0602 * q**2
    y = (_RO - 100) / 15 + 46 / 8.4 - g / 9
    z = 46 / 30 - g / 40
    iq = 15 * math.log10(1 + math.pow(10, y) + math.pow(10, z))
    return iolr + ist + iq


def _talker_echo(t: float) -> float:
    """Idte (G.107 7-19 to 7-22); below 1 ms the echo is heard as sidetone (no Idte)."""
    if t < 1:
        return 0.0
    terv = _TELR - 40 * math.log10((1 + t / 10) / (1 + t / 150)) + 6 * math.exp(-0.3 * t**2)
    roe = -1.5 * (_NO - _RLR)
    re = 80 + 2.5 * (terv - 14)
    return ((roe - re) / 2 + math.sqrt((roe - re) ** 2 / 4 + 100) - 1) * (1 - math.exp(-t))


def _listener_echo(tr: float) -> float:
    """Idle (G.107 7-25, 7-26)."""
    rle = 10.5 * (_WEPL + 7) * math.pow(tr + 1, -1 / 4)
    return (_RO - rle) / 2 + math.sqrt((_RO - rle) ** 2 / 4 + 169)


def _absolute_delay(ta: float) -> float:
    """Idd (G.107 7-27, 7-28): nothing up to mT, then the G.114 curve."""
    if ta <= _MT:
        return 0.0
    x = math.log10(ta / _MT) / math.log10(2)
    return 25 * (math.pow(1 + x**6, 1 / 6) - 3 * math.pow(1 + (x / 3) ** 6, 1 / 6) + 2)


def delay_impairment(ta_ms: float) -> float:
    """Id = Idte + Idle + Idd for a mouth-to-ear delay Ta (T = Ta, Tr = 2 Ta)."""
    _check_delay("mouth-to-ear delay", ta_ms)
    return _talker_echo(ta_ms) + _listener_echo(2 * ta_ms) + _absolute_delay(ta_ms)


# ---- codecs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Impairment:
    """What a codec costs on the R scale: Ie, Bpl, its look-ahead delay and the source."""

    ie: float
    bpl: float
    lookahead_ms: float
    source: str


# Ie and Bpl are the provisional planning values of ITU-T G.113 (11/2007) Appendix I
# (Table I.1 for Ie, Table I.3 for Bpl, random loss). G.107 Table 3 gives Bpl's range as
# 4.3 to 40, 4.3 being G.711 without concealment. G.722 and Opus are wideband codecs
# that Appendix I does not list (G.113 Appendix IV and G.107.1 rate wideband codecs on a
# separate 0-129 scale, not comparable with this one). On this narrowband scale neither
# loses anything to G.711 when no packet is lost, so Ie is 0; for their loss behaviour
# we take G.711-with-PLC's Bpl. That is our estimate, not an ITU-T figure: ITU-T
# publishes no narrowband Ie/Bpl for Opus (the Opus maintainers know of none either,
# github.com/xiph/opus/issues/51), and G.722's concealment (G.722 Appendices III/IV) is
# of the same waveform-extrapolation kind as G.711 Appendix I's.
CODECS: Final[Mapping[str, Impairment]] = {
    "g711": Impairment(0.0, 25.1, 0.0, "G.113 App. I: G.711 with PLC (G.711 App. I)"),
    "g711-noplc": Impairment(0.0, 4.3, 0.0, "G.113 App. I: G.711 without PLC"),
    # G.729A's 10 ms frame is part of the packet; its look-ahead is 5 ms (G.729 2).
    "g729": Impairment(11.0, 19.0, 5.0, "G.113 App. I: G.729A+VAD, 2 frames per packet"),
    # The QMF of G.722 delays 1.5 ms (G.722 1.6: 23 samples at 16 kHz, rounded).
    "g722": Impairment(0.0, 25.1, 1.5, "estimate: wideband, G.711-with-PLC Bpl"),
    # RFC 6716 2: Opus's look-ahead is 6.5 ms (2.5 ms CELT + 4 ms SILK resampling).
    "opus": Impairment(0.0, 25.1, 6.5, "estimate: wideband, G.711-with-PLC Bpl"),
}

_CODEC_NAMES: Final = {
    "pcma": "g711",
    "pcmu": "g711",
    "g711": "g711",
    "g729": "g729",
    "g729a": "g729",
    "g722": "g722",
    "opus": "opus",
}


def codec_impairment(codec: str, *, plc: bool = True) -> Impairment:
    """The impairment values of an SDP encoding name (PCMA, PCMU, G722, G729, opus)."""
    key = _CODEC_NAMES.get(codec.lower())
    if key is None:
        raise QualityError(f"no E-model values for codec {codec!r}: known are {_known()}")
    if key == "g711" and not plc:
        key = "g711-noplc"
    return CODECS[key]


def _known() -> str:
    return ", ".join(sorted(_CODEC_NAMES))


# ---- the model ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conditions:
    """What one direction of a call went through (milliseconds, percent)."""

    one_way_delay_ms: float = 0.0
    """Network delay, one way (half the round trip when only that is known)."""
    loss_pct: float = 0.0
    burst_ratio: float = 1.0
    """G.107 BurstR: 1 for random loss, above 1 for bursty loss."""
    jitter_buffer_ms: float = 0.0
    packet_ms: float = 0.0
    """Packetisation: the audio one packet carries, waited for before it is sent."""

    def mouth_to_ear(self, codec: Impairment) -> float:
        return self.one_way_delay_ms + self.jitter_buffer_ms + self.packet_ms + codec.lookahead_ms


def effective_equipment_impairment(codec: Impairment, loss_pct: float, burst_ratio: float) -> float:
    """Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl) (G.107 7-29)."""
    if not 0.0 <= loss_pct <= 100.0 or math.isnan(loss_pct):
        raise QualityError(f"packet loss must be 0-100 %, got {loss_pct}")
    if not burst_ratio >= 1.0:
        raise QualityError(f"burst ratio must be at least 1 (random loss), got {burst_ratio}")
    return codec.ie + (95 - codec.ie) * loss_pct / (loss_pct / burst_ratio + codec.bpl)


def r_factor(conditions: Conditions, codec: Impairment) -> float:
    """The transmission rating R (G.107 7-1) of ``conditions`` with ``codec``."""
    for name in ("one_way_delay_ms", "jitter_buffer_ms", "packet_ms"):
        _check_delay(name, getattr(conditions, name))
    ta = conditions.mouth_to_ear(codec)
    ie_eff = effective_equipment_impairment(codec, conditions.loss_pct, conditions.burst_ratio)
    return _RO - _simultaneous_impairment(ta) - delay_impairment(ta) - ie_eff + _A


def mos_from_r(r: float) -> float:
    """MOS-CQE from R (G.107 Annex B, B-4): 1 below R 0, 4.5 above R 100.

    The cubic dips under 1 for 0 < R < 6.5; MOS-CQE has no value below 1, so it is 1 there.
    """
    if math.isnan(r):
        raise QualityError("R is not a number")
    if r < 0:
        return 1.0
    if r > 100:
        return 4.5
    return max(1.0, 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6)


def _check_delay(name: str, value: float) -> None:
    if not 0.0 <= value < math.inf:
        raise QualityError(f"{name} must be a finite number of ms >= 0, got {value}")


# ---- per-leg quality from a call's media statistics --------------------------------------


@dataclass(frozen=True, slots=True)
class LegQuality:
    """One leg of a call as its peer's network treated it.

    ``loss_pct`` is the larger of the loss the gateway saw on the peer's stream and the
    loss the peer reported about ours (RTCP); ``jitter_ms`` likewise; ``rtt_ms`` is the
    RTCP round trip. All three and ``mos`` are None when nothing measured them.
    ``source`` says where the figures came from: "rtcp" (the gateway's own RTCP),
    "rtcp-relayed" (the peers' reports read in passing) or "none".
    """

    leg: str
    codec: str | None
    packets_in: int
    packets_out: int
    drops: int
    loss_pct: float | None
    jitter_ms: float | None
    rtt_ms: float | None
    r: float | None
    mos: float | None
    source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CallQuality:
    a: LegQuality
    b: LegQuality

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a.as_dict(), "b": self.b.as_dict()}


def call_quality(
    stats: Mapping[str, Any],
    codecs: Mapping[str, str | None],
    *,
    packet_ms: Mapping[str, float] | None = None,
) -> CallQuality:
    """Both legs' quality from ``MediaSession.stats()`` and each leg's SDP codec name."""
    sizes = packet_ms or {}
    return CallQuality(
        a=leg_quality(stats, "a", codecs.get("a"), sizes.get("a", 20.0)),
        b=leg_quality(stats, "b", codecs.get("b"), sizes.get("b", 20.0)),
    )


def leg_quality(
    stats: Mapping[str, Any], leg: str, codec: str | None, packet_ms: float = 20.0
) -> LegQuality:
    """One leg's :class:`LegQuality`; see :func:`call_quality`."""
    mine = stats[leg]
    other = stats["b" if leg == "a" else "a"]
    counters = (
        int(mine["packets_in"]),
        int(mine["packets_out"]),
        sum(int(count) for count in mine["drops"].values()),
    )
    transcoding = mine.get("transcoding")
    if transcoding is None:
        return LegQuality(leg, codec, *counters, None, None, None, None, None, "none")
    inbound, rtcp = transcoding["in"], transcoding["rtcp"]
    sent = other.get("transcoding", {}).get("in", {}).get("packets_out", 0)
    loss = _loss(inbound, rtcp, int(sent))
    jitter = _jitter(inbound, rtcp)
    rtt = None if rtcp.get("rtt") is None else float(rtcp["rtt"]) * 1000
    r: float | None = None
    if loss is not None and codec is not None and codec.lower() in _CODEC_NAMES:
        conditions = Conditions(
            one_way_delay_ms=0.0 if rtt is None else rtt / 2,
            loss_pct=loss,
            jitter_buffer_ms=float(inbound.get("buffer_delay", 0.0)) * 1000,
            packet_ms=packet_ms,
        )
        r = r_factor(conditions, codec_impairment(codec))
    return LegQuality(
        leg,
        codec,
        *counters,
        loss_pct=_rounded(loss),
        jitter_ms=_rounded(jitter),
        rtt_ms=_rounded(rtt),
        r=None if r is None else round(r, 1),
        mos=None if r is None else round(mos_from_r(r), 2),
        source="rtcp",
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _loss(inbound: Mapping[str, Any], rtcp: Mapping[str, Any], sent: int) -> float | None:
    """Percent lost: ours on the peer's stream, the peer's report on ours; the worse."""
    seen: list[float] = []
    received, lost = int(inbound.get("packets_in", 0)), int(inbound.get("lost", 0))
    if received + lost > 0:
        seen.append(100 * lost / (received + lost))
    if int(rtcp.get("packets_received", 0)) > 0 and sent > 0:
        cumulative = max(0, int(rtcp.get("remote_cumulative_lost", 0)))
        seen.append(min(100.0, 100 * cumulative / (sent + cumulative)))
    return max(seen) if seen else None


def _jitter(inbound: Mapping[str, Any], rtcp: Mapping[str, Any]) -> float | None:
    seen: list[float] = []
    if int(inbound.get("packets_in", 0)) > 0:
        seen.append(float(inbound.get("jitter", 0.0)) * 1000)
    if int(rtcp.get("packets_received", 0)) > 0:
        seen.append(float(rtcp.get("remote_jitter", 0.0)) * 1000)
    return max(seen) if seen else None
