"""Counting primitives of the fraud limits: token buckets and sliding windows of events.

A token bucket carries a rate with bursts (call attempts per second, calls per minute);
`RateLimiter` keeps one per key (an account), bounded in memory. `EventWindow` counts
events per key over the last few seconds (authentication failures of a source address).
Over-limit attempts are refused before any routing, so they never reach a trunk
(DESIGN rule 6). Time is passed in; nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict, deque


class TokenBucket:
    """`rate` tokens per second, holding at most `burst` (default: one second's worth).

    It starts full. `wait()` says how long until a token is there, so a refusal can
    carry a truthful Retry-After; `take()` spends one if there is one.
    """

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float | None = None, *, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")
        self.tokens = self.burst
        self.updated = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now

    def wait(self, now: float) -> float:
        """Seconds until `take()` would succeed; 0 when it would now."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RateLimiter:
    """`rate` attempts per second per key, with bursts of up to `burst` (default: one second)."""

    def __init__(self, rate: float, burst: float | None = None, *, max_keys: int = 100_000) -> None:
        TokenBucket(rate, burst)  # the same checks, before any key exists
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                # The least recently seen key goes; it comes back with a full bucket.
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def allow(self, key: str, now: float) -> bool:
        """Spend one of `key`'s tokens if it has one."""
        return self._bucket(key, now).take(now)

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may now (spends nothing)."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(now)

    def __len__(self) -> int:
        return len(self._buckets)


class EventWindow:
    """How many events each key had in the last `window` seconds, bounded in memory.

    Only the latest `cap` events of a key are kept: a caller that acts when a count
    reaches `cap` needs no more, and a key flooding events costs no more memory.
    """

    def __init__(self, window: float, cap: int, *, max_keys: int = 100_000) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        if cap < 1:
            raise ValueError(f"cap must be at least 1, got {cap}")
        self.window = window
        self.cap = cap
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def add(self, key: str, now: float) -> int:
        """Record an event of `key`; its count in the window, this one included (at most cap)."""
        events = self._events.get(key)
        if events is None:
            events = deque(maxlen=self.cap)
            self._events[key] = events
            if len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        events.append(now)
        return self._prune(events, now)

    def count(self, key: str, now: float) -> int:
        events = self._events.get(key)
        return 0 if events is None else self._prune(events, now)

    def clear(self, key: str) -> None:
        self._events.pop(key, None)

    def _prune(self, events: deque[float], now: float) -> int:
        start = now - self.window
        while events and events[0] <= start:
            events.popleft()
        return len(events)

    def __len__(self) -> int:
        return len(self._events)
