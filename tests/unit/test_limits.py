"""Counting primitives of the fraud limits: token buckets, rate limiters, event windows."""

from __future__ import annotations

import pytest

from gateway.calls.limits import EventWindow, RateLimiter, TokenBucket


def test_burst_then_refill_at_the_rate() -> None:
    limiter = RateLimiter(rate=2.0)
    assert [limiter.allow("1001", 0.0) for _ in range(3)] == [True, True, False]
    assert not limiter.allow("1001", 0.25)  # half a token so far
    assert limiter.allow("1001", 0.5)
    assert not limiter.allow("1001", 0.5)


def test_keys_are_independent() -> None:
    limiter = RateLimiter(rate=1.0)
    assert limiter.allow("1001", 0.0)
    assert not limiter.allow("1001", 0.1)
    assert limiter.allow("1002", 0.1)


def test_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, max_keys=10)
    for n in range(1000):
        limiter.allow(f"user{n}", float(n))
    assert len(limiter) == 10


def test_refill_never_exceeds_the_burst() -> None:
    limiter = RateLimiter(rate=10.0, burst=3.0)
    limiter.allow("a", 0.0)
    allowed = sum(limiter.allow("a", 100.0) for _ in range(10))
    assert allowed == 3


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=0)


def test_rate_limiter_wait_says_when_the_next_attempt_is_allowed() -> None:
    limiter = RateLimiter(rate=2.0)
    assert limiter.wait("1001", 0.0) == 0.0  # an unknown key may go at once
    assert limiter.allow("1001", 0.0) and limiter.allow("1001", 0.0)
    assert limiter.wait("1001", 0.1) == pytest.approx(0.4)  # 0.8 of a token missing at 2/s
    assert not limiter.allow("1001", 0.1)
    assert limiter.wait("1001", 0.5) == 0.0
    assert limiter.allow("1001", 0.5)


def test_waiting_spends_nothing() -> None:
    limiter = RateLimiter(rate=1.0)
    for _ in range(5):
        assert limiter.wait("a", 0.0) == 0.0
    assert limiter.allow("a", 0.0)


def test_a_per_minute_bucket_refills_one_call_every_sixty_over_n_seconds() -> None:
    per_minute = TokenBucket(rate=3 / 60, burst=3)
    assert [per_minute.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert per_minute.wait(0.0) == pytest.approx(20.0)
    assert not per_minute.take(19.9)
    assert per_minute.take(20.0)


def test_a_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=1.0, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert bucket.wait(5.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [(0.0, None, "rate must be positive"), (-1.0, None, "rate"), (1.0, 0.5, "burst must be")],
)
def test_bad_bucket_parameters_get_a_value_error(
    rate: float, burst: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBucket(rate, burst)
    with pytest.raises(ValueError, match=message):
        RateLimiter(rate, burst)


def test_event_window_counts_only_the_last_window() -> None:
    window = EventWindow(window=10.0, cap=5)
    assert [window.add("198.51.100.7", t) for t in (0.0, 1.0, 2.0)] == [1, 2, 3]
    assert window.count("198.51.100.7", 10.5) == 2  # the event at 0 has left the window
    assert window.add("198.51.100.7", 12.5) == 1  # only that one: 1.0 and 2.0 left too
    assert window.count("203.0.113.9", 12.5) == 0


def test_event_window_keeps_at_most_cap_events_per_key() -> None:
    window = EventWindow(window=100.0, cap=3)
    counts = [window.add("flood", float(n) / 1000) for n in range(1000)]
    assert counts[-1] == 3 and max(counts) == 3


def test_event_window_clear_and_memory_bound() -> None:
    window = EventWindow(window=60.0, cap=2, max_keys=10)
    for n in range(1000):
        window.add(f"198.51.100.{n % 250}:{n}", float(n))
    assert len(window) == 10
    window.add("x", 0.0)
    window.clear("x")
    assert window.count("x", 0.0) == 0


def test_event_window_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="window must be positive"):
        EventWindow(window=0.0, cap=1)
    with pytest.raises(ValueError, match="cap must be at least 1"):
        EventWindow(window=1.0, cap=0)
