"""Admission control: whether a new call may start, and which sources are banned.

The SIP core asks `Admission` three things, and nothing it answers ever lets a refused
call reach a trunk (DESIGN rule 6):

* `banned(source)`: a source address that failed digest authentication too often
  (wrong password, unknown user) is banned for a while; the core drops its requests
  unanswered. Silence rather than 403: a scanner that gets no answer cannot tell it
  has been noticed and waits out its timeouts, and a request with a forged UDP source
  is not reflected at whoever owns that address. Trunks and `ban_exempt` networks
  (loopback by default) are never banned: forged failures must not cut off a carrier.
* `admit(...)` for an authenticated, routed INVITE, in this order: emergency calls
  always pass; a blocked destination prefix gets 403 (policy, not capacity); a box
  over its CPU or event-loop budget, or at `max_calls`, gets 503 (RFC 3261 21.5.4: try
  later or elsewhere); an account at its concurrent-call limit gets 403, since another
  gateway of the fleet would refuse it as well and a 503 would send a dispatcher there;
  the rate limits (the account's calls per second and per minute, then the box's) get
  503 with Retry-After (RFC 3261 20.33) saying when a token is there. The account's own
  limits are checked before the box's rate, so an account flooding past its limit does
  not spend the tokens of everyone else; a refused attempt spends no token at all.
* `call_started` / `call_ended` keep the per-account count of calls in progress.

`LoadMeter` turns CPU-time samples and event-loop lateness (fed by a small Trio task,
gateway.calls.overload) into the load figures. Time is passed in; nothing here reads
a clock or does I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.calls.limits import EventWindow, RateLimiter, TokenBucket
from gateway.config import LimitsConfig

# How far back the load figures look: long enough to average out one busy burst,
# short enough that a box refuses within a second of saturating.
LOAD_WINDOW = 1.0
# What an overloaded box asks callers to wait (the transaction layer's overload says 5).
OVERLOAD_RETRY_AFTER = 5
# Bans held at once; past this the oldest goes first (a source rotating through
# addresses costs bounded memory).
MAX_BANS = 100_000


class RefusalReason(enum.Enum):
    """Why a call was refused: the key it is counted under."""

    BLOCKED_DESTINATION = "blocked_destination"
    CPU = "cpu"
    LOOP_LAG = "loop_lag"
    MAX_CALLS = "max_calls"
    ACCOUNT_CALLS = "account_calls"
    ACCOUNT_RATE = "account_rate"
    ACCOUNT_PER_MINUTE = "account_per_minute"
    GLOBAL_RATE = "global_rate"

    @property
    def is_rate(self) -> bool:
        return self in _RATE_REASONS


_RATE_REASONS = frozenset(
    {RefusalReason.ACCOUNT_RATE, RefusalReason.ACCOUNT_PER_MINUTE, RefusalReason.GLOBAL_RATE}
)


_RATE_PHRASES = {
    RefusalReason.ACCOUNT_RATE: "Call Rate Limit Exceeded",
    RefusalReason.ACCOUNT_PER_MINUTE: "Calls Per Minute Exceeded",
    RefusalReason.GLOBAL_RATE: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class LimitRefusal:
    """The final response a refused INVITE gets."""

    reason: RefusalReason
    status: int
    phrase: str
    retry_after: int | None = None


@dataclass(frozen=True, slots=True)
class LoadSample:
    at: float  # seconds, any monotonic clock
    cpu: float  # the process's CPU seconds so far (every thread)
    lag: float  # how late the sampler woke, in seconds


class LoadMeter:
    """CPU use (fraction of one core) and mean event-loop lag over the last `window` s.

    The oldest sample kept is the last one at or before the window's start, so a
    sampler that could not run for a while (the loop was busy) still yields a figure
    over the whole gap rather than none.
    """

    def __init__(self, window: float = LOAD_WINDOW) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.window = window
        self._samples: deque[LoadSample] = deque()

    def sample(self, at: float, cpu: float, lag: float = 0.0) -> None:
        if self._samples and at <= self._samples[-1].at:
            return  # a clock that did not advance says nothing about a rate
        self._samples.append(LoadSample(at, cpu, max(0.0, lag)))
        start = at - self.window
        while len(self._samples) >= 2 and self._samples[1].at <= start:
            self._samples.popleft()

    def cpu(self) -> float | None:
        """CPU seconds per second over the window; None before two samples."""
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        return max(0.0, last.cpu - first.cpu) / (last.at - first.at)

    def lag(self) -> float | None:
        """The mean lateness of the sampler's wake-ups in the window; None without samples."""
        if not self._samples:
            return None
        recent = list(self._samples)[1:] or list(self._samples)
        return sum(s.lag for s in recent) / len(recent)


class BanList:
    """Source addresses banned after repeated authentication failures."""

    def __init__(
        self,
        failures: int,
        window: float,
        duration: float,
        exempt: Iterable[str] = (),
        *,
        max_bans: int = MAX_BANS,
    ) -> None:
        self.failures = failures
        self.max_bans = max_bans
        self.duration = duration
        self._window = EventWindow(window, max(1, failures))
        self._until: OrderedDict[str, float] = OrderedDict()
        self._exempt_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._exempt_hosts: set[str] = set()
        for item in exempt:
            try:
                self._exempt_networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self._exempt_hosts.add(item)  # a trunk given by name: matched as written

    def exempt(self, source: str) -> bool:
        if source in self._exempt_hosts:
            return True
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return False
        return any(address in network for network in self._exempt_networks)

    def banned(self, source: str, now: float) -> bool:
        if not self._until:
            return False
        until = self._until.get(source)
        if until is None:
            return False
        if now >= until:
            del self._until[source]
            return False
        return True

    def failed(self, source: str, now: float) -> bool:
        """Record a failed authentication from `source`; True when it starts a ban."""
        if self.failures == 0 or self.exempt(source):
            return False
        if self._window.add(source, now) < self.failures:
            return False
        self._window.clear(source)
        self._until[source] = now + self.duration
        self._until.move_to_end(source)
        while len(self._until) > self.max_bans:
            self._until.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._until)


class Admission:
    """The limits of `LimitsConfig`, as one policy object the SIP core asks."""

    def __init__(self, limits: LimitsConfig, *, never_ban: Iterable[str] = ()) -> None:
        self.limits = limits
        self.account_rate = RateLimiter(limits.cps_per_account)
        per_minute = limits.calls_per_minute_per_account
        self.account_per_minute = (
            RateLimiter(per_minute / 60.0, burst=per_minute) if per_minute else None
        )
        self.global_rate = TokenBucket(limits.cps) if limits.cps else None
        self.load = LoadMeter()
        self.bans = BanList(
            limits.auth_failures_before_ban,
            limits.auth_failure_window,
            limits.ban_seconds,
            exempt=[*limits.ban_exempt, *never_ban],
        )
        self._blocked = tuple(limits.blocked_prefixes)
        self._active: dict[str, int] = {}

    # ---- sources ---------------------------------------------------------------------

    def banned(self, source: str, now: float) -> bool:
        return self.bans.banned(source, now)

    def auth_failed(self, source: str, now: float) -> bool:
        """A failed digest authentication from `source`; True when it starts a ban."""
        return self.bans.failed(source, now)

    # ---- calls -----------------------------------------------------------------------

    @property
    def watches_load(self) -> bool:
        return self.limits.max_cpu > 0 or self.limits.max_loop_lag > 0

    def admit(
        self,
        account: str,
        destination: str | None,
        *,
        emergency: bool,
        active_calls: int,
        now: float,
    ) -> LimitRefusal | None:
        """None if `account` may start a call to `destination` (E.164 of a trunk route,
        None for app to app) now; else the refusal. Spends the rate tokens when admitted."""
        if emergency:
            return None
        if destination is not None and destination.lstrip("+").startswith(self._blocked):
            return LimitRefusal(RefusalReason.BLOCKED_DESTINATION, 403, "Destination Blocked")
        refusal = self._box_full(active_calls)
        if refusal is None and self._active.get(account, 0) >= self.limits.calls_per_account:
            refusal = LimitRefusal(RefusalReason.ACCOUNT_CALLS, 403, "Too Many Calls For Account")
        if refusal is None:
            refusal = self._rates(account, now)
        return refusal

    def _box_full(self, active_calls: int) -> LimitRefusal | None:
        limits = self.limits
        cpu = self.load.cpu() if limits.max_cpu > 0 else None
        if cpu is not None and cpu > limits.max_cpu:
            return _overloaded(RefusalReason.CPU)
        lag = self.load.lag() if limits.max_loop_lag > 0 else None
        if lag is not None and lag > limits.max_loop_lag:
            return _overloaded(RefusalReason.LOOP_LAG)
        if active_calls >= limits.max_calls:
            return LimitRefusal(RefusalReason.MAX_CALLS, 503, "Too Many Calls")
        return None

    def _rates(self, account: str, now: float) -> LimitRefusal | None:
        waits = [(RefusalReason.ACCOUNT_RATE, self.account_rate.wait(account, now))]
        if self.account_per_minute is not None:
            waits.append(
                (RefusalReason.ACCOUNT_PER_MINUTE, self.account_per_minute.wait(account, now))
            )
        if self.global_rate is not None:
            waits.append((RefusalReason.GLOBAL_RATE, self.global_rate.wait(now)))
        for reason, wait in waits:
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                return LimitRefusal(reason, 503, _RATE_PHRASES[reason], retry_after)
        self.account_rate.allow(account, now)
        if self.account_per_minute is not None:
            self.account_per_minute.allow(account, now)
        if self.global_rate is not None:
            self.global_rate.take(now)
        return None

    def call_started(self, account: str) -> None:
        self._active[account] = self._active.get(account, 0) + 1

    def call_ended(self, account: str) -> None:
        count = self._active.get(account, 0)
        if count <= 1:
            self._active.pop(account, None)  # also for a call that was never counted
        else:
            self._active[account] = count - 1

    def active(self, account: str) -> int:
        return self._active.get(account, 0)


def _overloaded(reason: RefusalReason) -> LimitRefusal:
    phrase = "CPU Overloaded" if reason is RefusalReason.CPU else "Event Loop Overloaded"
    return LimitRefusal(reason, 503, phrase, retry_after=OVERLOAD_RETRY_AFTER)
