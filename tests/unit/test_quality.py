"""The E-model (ITU-T G.107) and the per-leg quality of a call's media statistics."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from gateway.media.quality import (
    CODECS,
    Conditions,
    QualityError,
    call_quality,
    codec_impairment,
    delay_impairment,
    effective_equipment_impairment,
    mos_from_r,
    r_factor,
)

G711 = codec_impairment("PCMA")


def test_defaults_give_the_g107_reference_rating() -> None:
    # G.107 7.7: with every parameter at its default, R = 93.2.
    r = r_factor(Conditions(), G711)
    assert r == pytest.approx(93.2, abs=0.05)
    assert mos_from_r(r) == pytest.approx(4.41, abs=0.005)


@pytest.mark.parametrize(
    ("r", "mos"),
    # G.109 Table 1's category bounds, read through G.107 Annex B (B-4).
    [(90, 4.34), (80, 4.03), (70, 3.60), (60, 3.10), (50, 2.58)],
)
def test_mos_at_the_g109_category_bounds(r: float, mos: float) -> None:
    assert mos_from_r(r) == pytest.approx(mos, abs=0.01)


def test_mos_is_clamped_outside_0_to_100() -> None:
    assert mos_from_r(-5) == 1.0
    assert mos_from_r(0) == 1.0
    assert mos_from_r(5) == 1.0  # the cubic dips to 0.99 here
    assert mos_from_r(100) == pytest.approx(4.5)
    assert mos_from_r(120) == 4.5


def test_absolute_delay_follows_the_g107_curve() -> None:
    # Up to mT = 100 ms only echo terms count; Ta = 200 ms is X = 1, Idd = 3.04.
    assert delay_impairment(200) - delay_impairment(100) > 3.0
    assert r_factor(Conditions(one_way_delay_ms=400), G711) < 65


def test_codec_values_from_g113_appendix_i() -> None:
    assert (G711.ie, G711.bpl) == (0.0, 25.1)
    no_plc = codec_impairment("PCMU", plc=False)
    assert (no_plc.ie, no_plc.bpl) == (0.0, 4.3)
    g729 = codec_impairment("G729")
    assert (g729.ie, g729.bpl) == (11.0, 19.0)
    # G.729A loses its Ie (and a little for its look-ahead) against G.711.
    assert r_factor(Conditions(), g729) == pytest.approx(93.2 - 11, abs=0.3)
    assert {"g711", "g711-noplc", "g729", "g722", "opus"} == set(CODECS)


def test_effective_impairment_of_one_percent_loss_without_plc() -> None:
    # Ie,eff = 95 * 1 / (1 + 4.3) = 17.9 (G.107 7-29, random loss).
    no_plc = codec_impairment("PCMU", plc=False)
    assert effective_equipment_impairment(no_plc, 1.0, 1.0) == pytest.approx(17.92, abs=0.01)


def test_rating_falls_with_every_impairment() -> None:
    for codec in CODECS.values():
        losses = [r_factor(Conditions(loss_pct=p), codec) for p in (0, 1, 2, 5, 10, 20, 50)]
        assert losses == sorted(losses, reverse=True)
        delays = [r_factor(Conditions(one_way_delay_ms=d), codec) for d in range(0, 600, 25)]
        assert all(b <= a for a, b in itertools.pairwise(delays))
        bursts = [r_factor(Conditions(loss_pct=3, burst_ratio=b), codec) for b in (1, 1.5, 2, 4)]
        assert bursts == sorted(bursts, reverse=True)
    buffers = [r_factor(Conditions(jitter_buffer_ms=j), G711) for j in (0, 60, 120, 200)]
    assert buffers == sorted(buffers, reverse=True)
    moses = [mos_from_r(r) for r in range(0, 101, 5)]
    assert moses == sorted(moses)


def test_concealment_keeps_the_rating_up_under_loss() -> None:
    lossy = Conditions(loss_pct=2)
    assert r_factor(lossy, G711) > r_factor(lossy, codec_impairment("PCMU", plc=False)) + 15


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        (Conditions(loss_pct=-1), "packet loss must be 0-100 %"),
        (Conditions(loss_pct=101), "packet loss must be 0-100 %"),
        (Conditions(loss_pct=math.nan), "packet loss must be 0-100 %"),
        (Conditions(burst_ratio=0.5), "burst ratio must be at least 1"),
        (Conditions(one_way_delay_ms=-3), "one_way_delay_ms must be a finite number"),
        (Conditions(jitter_buffer_ms=math.inf), "jitter_buffer_ms must be a finite number"),
    ],
)
def test_out_of_range_inputs_are_refused(conditions: Conditions, message: str) -> None:
    with pytest.raises(QualityError, match=message):
        r_factor(conditions, G711)


def test_unknown_codec_is_refused_by_name() -> None:
    with pytest.raises(QualityError, match="no E-model values for codec 'GSM'"):
        codec_impairment("GSM")


# ---- per-leg quality ----------------------------------------------------------------------


def _leg(packets_in: int, transcoding: dict[str, Any] | None = None) -> dict[str, Any]:
    leg: dict[str, Any] = {
        "packets_in": packets_in,
        "packets_out": packets_in,
        "drops": {"unexpected-source": 2, "srtp-auth": 1},
    }
    if transcoding is not None:
        leg["transcoding"] = transcoding
    return leg


def test_a_relayed_call_has_counters_and_no_mos() -> None:
    quality = call_quality({"a": _leg(100), "b": _leg(90)}, {"a": "PCMA", "b": "PCMA"})
    assert quality.a.packets_in == 100 and quality.a.drops == 3
    assert quality.a.mos is None and quality.a.loss_pct is None and quality.a.source == "none"


def _transcoded(lost: int, remote_lost: int, rtt: float | None) -> dict[str, Any]:
    def side(lost_here: int) -> dict[str, Any]:
        return {
            "in": {
                "packets_in": 100 - lost_here,
                "lost": lost_here,
                "packets_out": 100,
                "jitter": 0.004,
                "buffer_delay": 0.04,
            },
            "rtcp": {
                "packets_received": 3,
                "remote_cumulative_lost": remote_lost,
                "remote_jitter": 0.010,
                "rtt": rtt,
            },
        }

    return {"a": _leg(100, side(lost)), "b": _leg(100, side(0))}


def test_a_transcoded_leg_is_rated_from_rtcp_and_the_jitter_buffer() -> None:
    clean = call_quality(_transcoded(0, 0, 0.02), {"a": "opus", "b": "PCMA"})
    assert clean.a.loss_pct == 0.0 and clean.a.jitter_ms == 10.0 and clean.a.rtt_ms == 20.0
    assert clean.a.mos is not None and clean.a.mos > 4.3
    lossy = call_quality(_transcoded(5, 0, 0.02), {"a": "opus", "b": "PCMA"})
    assert lossy.a.loss_pct == 5.0
    assert lossy.a.mos is not None and lossy.a.mos < clean.a.mos
    # The peer's report of loss on our stream counts too: 10 of 110 sent is 9.09 %.
    reported = call_quality(_transcoded(0, 10, None), {"a": "opus", "b": "PCMA"})
    assert reported.a.loss_pct == pytest.approx(9.09, abs=0.01)
    assert reported.a.rtt_ms is None and reported.a.mos is not None
    assert reported.as_dict()["a"]["source"] == "rtcp"
