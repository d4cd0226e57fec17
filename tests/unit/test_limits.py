"""Per-account call-attempt rate limits."""

from __future__ import annotations

import pytest

from gateway.calls.limits import RateLimiter


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
