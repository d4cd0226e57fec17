"""Tests for gateway.media.latching: the sans-IO latching decision (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.media.latching import (
    ACCEPT,
    RTCP_MIN_LENGTH,
    RTP_MIN_LENGTH,
    Drop,
    DropReason,
    Endpoint,
    SessionState,
    decide,
    forward,
    open_window,
    rebind,
    route,
)

SDP = ("198.51.100.10", 4000)
NAT = ("203.0.113.7", 31234)
RTP = 0x80  # first byte: version 2, no padding/extension/CSRC


def endpoint(*, window: float = 10.0, any_host: bool = True) -> Endpoint:
    ep = Endpoint(latch_window=window, symmetric_any_host=any_host)
    rebind(ep, SDP, now=0.0)
    return ep


def test_sdp_source_is_accepted_and_latched() -> None:
    ep = endpoint()
    assert decide(ep, SDP, 1.0) is ACCEPT
    assert ep.latched == SDP
    assert ep.latch_deadline is None
    assert ep.last_rx == 1.0


def test_strict_after_latch_other_port_same_host_dropped() -> None:
    ep = endpoint()
    decide(ep, SDP, 1.0)
    verdict = decide(ep, (SDP[0], SDP[1] + 2), 1.5)
    assert verdict == Drop(DropReason.UNEXPECTED_SOURCE)
    assert ep.latched == SDP
    assert ep.drops == {"unexpected-source": 1}
    assert ep.last_rx == 1.0


def test_strict_after_nat_latch_even_the_sdp_address_is_refused() -> None:
    ep = endpoint()
    assert decide(ep, NAT, 1.0) is ACCEPT
    assert ep.latched == NAT
    assert decide(ep, SDP, 2.0) == Drop(DropReason.UNEXPECTED_SOURCE)
    assert ep.latched == NAT


def test_nat_source_within_window_latches_when_any_host_allowed() -> None:
    ep = endpoint(window=5.0)
    assert decide(ep, NAT, 4.9) is ACCEPT
    assert ep.latched == NAT


def test_window_host_rule_without_any_host() -> None:
    ep = endpoint(window=5.0, any_host=False)
    assert decide(ep, NAT, 1.0) == Drop(DropReason.UNEXPECTED_SOURCE)
    assert ep.latched is None
    same_host_other_port = (SDP[0], 5555)
    assert decide(ep, same_host_other_port, 1.0) is ACCEPT
    assert ep.latched == same_host_other_port


def test_after_window_only_exact_sdp_address_is_accepted() -> None:
    ep = endpoint(window=5.0)
    assert decide(ep, NAT, 5.0) == Drop(DropReason.UNEXPECTED_SOURCE)
    assert decide(ep, (SDP[0], 4002), 6.0) == Drop(DropReason.UNEXPECTED_SOURCE)
    assert ep.latched is None
    assert decide(ep, SDP, 7.0) is ACCEPT
    assert ep.latched == SDP
    assert ep.drops == {"unexpected-source": 2}


def test_no_sdp_nothing_latches() -> None:
    ep = Endpoint()
    assert decide(ep, NAT, 0.0) == Drop(DropReason.UNEXPECTED_SOURCE)
    assert ep.latched is None


def test_unauthenticated_never_latches_nor_counts_as_activity() -> None:
    ep = endpoint()
    assert decide(ep, SDP, 1.0, authenticated=False) == Drop(DropReason.UNAUTHENTICATED)
    assert ep.latched is None
    decide(ep, SDP, 2.0)
    assert decide(ep, SDP, 3.0, authenticated=False) == Drop(DropReason.UNAUTHENTICATED)
    assert ep.last_rx == 2.0
    assert ep.drops == {"unauthenticated": 2}


def test_ipv6_four_tuple_source_matches_two_tuple_address() -> None:
    ep = Endpoint()
    rebind(ep, ("2001:db8::5", 4000), 0.0)
    assert decide(ep, ("2001:db8::5", 4000, 0, 0), 0.1) is ACCEPT
    assert ep.latched == ("2001:db8::5", 4000)
    assert decide(ep, ("2001:db8::5", 4000, 0, 0), 0.2) is ACCEPT
    assert decide(ep, ("2001:db8::6", 4000, 0, 0), 0.3) == Drop(DropReason.UNEXPECTED_SOURCE)


def test_rebind_keeps_old_latch_until_new_side_speaks() -> None:
    ep = endpoint(window=5.0)
    decide(ep, NAT, 1.0)
    new_sdp = ("198.51.100.20", 6000)
    rebind(ep, new_sdp, 100.0)
    assert ep.latch_deadline == 105.0
    assert decide(ep, NAT, 100.5) is ACCEPT  # old latch still valid
    assert decide(ep, new_sdp, 101.0) is ACCEPT
    assert ep.latched == new_sdp
    assert decide(ep, NAT, 101.5) == Drop(DropReason.UNEXPECTED_SOURCE)


def test_rebind_window_latches_new_nat_source_then_strict() -> None:
    ep = endpoint(window=5.0)
    decide(ep, SDP, 1.0)
    rebind(ep, ("198.51.100.20", 6000), 50.0)
    new_nat = ("203.0.113.99", 40000)
    assert decide(ep, new_nat, 52.0) is ACCEPT
    assert ep.latched == new_nat
    assert decide(ep, SDP, 52.5) == Drop(DropReason.UNEXPECTED_SOURCE)
    assert decide(ep, ("203.0.113.98", 40000), 53.0) == Drop(DropReason.UNEXPECTED_SOURCE)


def test_rebind_window_expired_old_latch_remains() -> None:
    ep = endpoint(window=5.0)
    decide(ep, NAT, 1.0)
    rebind(ep, ("198.51.100.20", 6000), 50.0)
    assert decide(ep, ("203.0.113.99", 1), 56.0) == Drop(DropReason.UNEXPECTED_SOURCE)
    assert decide(ep, NAT, 57.0) is ACCEPT
    # The exact new SDP address may still take over, with no time limit.
    assert decide(ep, ("198.51.100.20", 6000), 500.0) is ACCEPT
    assert ep.latched == ("198.51.100.20", 6000)
    assert ep.rebind_pending is False
    assert decide(ep, NAT, 501.0) == Drop(DropReason.UNEXPECTED_SOURCE)


def test_rebind_to_none_disables_the_stream() -> None:
    ep = endpoint()
    decide(ep, SDP, 1.0)
    rebind(ep, None, 2.0)
    assert ep.expected is None
    assert ep.latched is None
    assert ep.destination is None
    assert decide(ep, SDP, 3.0) == Drop(DropReason.UNEXPECTED_SOURCE)


def test_open_window_only_for_unlatched_endpoints() -> None:
    ep = endpoint(window=5.0)
    assert decide(ep, NAT, 30.0) == Drop(DropReason.UNEXPECTED_SOURCE)
    assert open_window(ep, 30.0) is True
    assert decide(ep, NAT, 31.0) is ACCEPT
    assert open_window(ep, 40.0) is False
    assert ep.latch_deadline is None
    assert open_window(Endpoint(), 40.0) is False


def test_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="latch_window must be >= 0"):
        Endpoint(latch_window=-1.0)


def pair() -> tuple[Endpoint, Endpoint]:
    src, dst = endpoint(), endpoint()
    rebind(dst, ("198.51.100.50", 7000), 0.0)
    return src, dst


@pytest.mark.parametrize(
    ("length", "first_byte"),
    [(11, RTP), (0, RTP), (172, 0x00), (172, 0x40), (172, 0xC0), (172, 0x01)],
)
def test_not_rtp_is_dropped_before_latching(length: int, first_byte: int) -> None:
    src, dst = pair()
    assert forward(src, dst, length, SDP, 1.0, first_byte) is None
    assert src.drops == {"not-rtp": 1}
    assert src.latched is None
    assert src.packets_in == 0


def test_rtcp_minimum_is_eight_bytes() -> None:
    state = SessionState.create(latch_window=5.0)
    rebind(state.a_rtcp, SDP, 0.0)
    rebind(state.b_rtcp, ("198.51.100.50", 7001), 0.0)
    assert route(state, "a", "rtcp", RTCP_MIN_LENGTH - 1, SDP, 1.0, 0x81) is None
    assert route(state, "a", "rtcp", RTCP_MIN_LENGTH, SDP, 1.0, 0x81) == ("198.51.100.50", 7001)
    assert state.a_rtcp.drops == {"not-rtp": 1}
    assert state.a_rtp.min_length == RTP_MIN_LENGTH


def test_forward_counts_and_returns_sdp_destination() -> None:
    src, dst = pair()
    assert forward(src, dst, 172, SDP, 1.0, RTP) == ("198.51.100.50", 7000)
    assert forward(src, dst, 100, SDP, 1.1, RTP) == ("198.51.100.50", 7000)
    assert (src.packets_in, src.bytes_in) == (2, 272)
    assert src.drops == {}
    # Sending is the caller's job: out counters stay untouched here.
    assert (dst.packets_out, dst.bytes_out) == (0, 0)


def test_forward_prefers_destination_latch_over_its_sdp() -> None:
    src, dst = pair()
    decide(dst, NAT, 0.5)
    assert forward(src, dst, 172, SDP, 1.0, RTP) == NAT


def test_no_destination_drop_still_latches_own_side() -> None:
    src, dst = endpoint(), Endpoint()
    assert forward(src, dst, 172, NAT, 1.0, RTP) is None
    assert src.drops == {"no-destination": 1}
    assert src.latched == NAT
    assert src.last_rx == 1.0
    assert src.packets_in == 0


def test_forward_unexpected_source_counted_not_forwarded() -> None:
    src, dst = pair()
    forward(src, dst, 172, SDP, 1.0, RTP)
    assert forward(src, dst, 172, NAT, 1.1, RTP) is None
    assert src.drops == {"unexpected-source": 1}
    assert src.packets_in == 1


def test_route_maps_legs_and_streams() -> None:
    state = SessionState.create(latch_window=5.0)
    b_addr = ("198.51.100.60", 8000)
    rebind(state.a_rtp, SDP, 0.0)
    rebind(state.b_rtp, b_addr, 0.0)
    assert route(state, "a", "rtp", 172, SDP, 1.0, RTP) == b_addr
    assert route(state, "b", "rtp", 172, b_addr, 1.0, RTP) == SDP
    assert state.a_rtp.packets_in == 1
    assert state.b_rtp.packets_in == 1
    # RTCP endpoints are separate: no SDP there yet.
    assert route(state, "a", "rtcp", 80, SDP, 1.0, RTP) is None
    assert state.a_rtcp.drops == {"unexpected-source": 1}


def test_route_rejects_unknown_leg_and_stream() -> None:
    state = SessionState.create(latch_window=5.0)
    with pytest.raises(ValueError, match="unknown leg 'c'"):
        route(state, "c", "rtp", 172, SDP, 1.0, RTP)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown stream 'srtp'"):
        route(state, "a", "srtp", 172, SDP, 1.0, RTP)  # type: ignore[arg-type]


hosts = st.sampled_from(["198.51.100.10", "198.51.100.11", "203.0.113.7", "203.0.113.8"])
sources = st.tuples(hosts, st.integers(min_value=1, max_value=65535))


@given(first=sources, later=st.lists(st.tuples(sources, st.floats(0.0, 100.0)), max_size=50))
def test_rtp_bleed_only_the_latched_source_is_ever_accepted(
    first: tuple[str, int], later: list[tuple[tuple[str, int], float]]
) -> None:
    ep = endpoint(window=5.0)
    assert decide(ep, first, 1.0) is ACCEPT
    for src, now in later:
        verdict = decide(ep, src, now)
        assert (verdict is ACCEPT) == (src == first)
        assert ep.latched == first
    rejected = sum(1 for src, _ in later if src != first)
    assert ep.drops.get("unexpected-source", 0) == rejected


@given(packets=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255), sources)))
def test_counters_are_disjoint(packets: list[tuple[int, int, tuple[str, int]]]) -> None:
    src, dst = pair()
    for length, first_byte, addr in packets:
        forward(src, dst, length, addr, 1.0, first_byte)
    assert src.packets_in + sum(src.drops.values()) == len(packets)
