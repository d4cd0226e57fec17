"""Admission control, sans-IO: which new calls may start and which sources are banned.

Every refusal is named with what it gets: a blocked destination 403 "Destination
Blocked", an account at its concurrent-call limit 403 "Too Many Calls For Account", a box
over its CPU or loop-lag budget 503 "CPU Overloaded" / "Event Loop Overloaded" with
Retry-After, a box at max_calls 503 "Too Many Calls", the rate limits 503 with a
Retry-After that says when a token is there. Emergency calls pass all of them.
"""

from __future__ import annotations

import pytest

from gateway.calls.admission import (
    MAX_BANS,
    OVERLOAD_RETRY_AFTER,
    Admission,
    BanList,
    LimitRefusal,
    LoadMeter,
    RefusalReason,
)
from gateway.config import (
    ConfigError,
    LimitsConfig,
    default_config,
    dump_default_toml,
    parse_config,
)

PREMIUM = "+979123456789"
ORDINARY = "+8613800138000"


def limits(**overrides: object) -> LimitsConfig:
    base: dict[str, object] = {"max_cpu": 0.0, "max_loop_lag": 0.0}
    base.update(overrides)
    return LimitsConfig(**base)  # type: ignore[arg-type]


def admit(
    admission: Admission,
    account: str = "1001",
    destination: str | None = ORDINARY,
    *,
    now: float = 0.0,
    emergency: bool = False,
    active_calls: int = 0,
) -> LimitRefusal | None:
    return admission.admit(
        account, destination, emergency=emergency, active_calls=active_calls, now=now
    )


# ---- load meter ---------------------------------------------------------------------------


def test_cpu_is_cpu_seconds_per_second_over_the_window() -> None:
    meter = LoadMeter(window=1.0)
    assert meter.cpu() is None and meter.lag() is None
    for n in range(21):  # 2 s at 10 Hz, using 0.05 CPU-s per 0.1 s: half a core
        meter.sample(n / 10, n * 0.05)
    assert meter.cpu() == pytest.approx(0.5)


def test_cpu_follows_a_change_within_one_window() -> None:
    meter = LoadMeter(window=1.0)
    cpu = 0.0
    for n in range(1, 31):
        cpu += 0.01 if n <= 20 else 0.09  # 10 % of a core, then 90 %
        meter.sample(n / 10, cpu)
    assert meter.cpu() == pytest.approx(0.9)


def test_a_sampler_that_could_not_run_still_gives_a_figure() -> None:
    meter = LoadMeter(window=1.0)
    meter.sample(0.0, 0.0)
    meter.sample(0.1, 0.01)
    meter.sample(2.6, 2.5, lag=2.4)  # the loop was busy for 2.5 s: no samples meanwhile
    assert meter.cpu() == pytest.approx(2.49 / 2.5)
    assert meter.lag() == pytest.approx(2.4)


def test_lag_is_the_mean_over_the_window() -> None:
    meter = LoadMeter(window=1.0)
    for n in range(10):
        meter.sample(n * 0.1, 0.0, lag=0.0)
    meter.sample(1.5, 0.0, lag=0.5)  # one stall of half a second
    assert meter.lag() == pytest.approx(0.5 / 5)  # 0.6 .. 1.5: five samples, one late
    for n in range(16, 26):
        meter.sample(n * 0.1, 0.0, lag=0.3)  # every wake-up late: a saturated loop
    assert meter.lag() == pytest.approx(0.3)


def test_a_sample_whose_clock_did_not_advance_is_ignored() -> None:
    meter = LoadMeter()
    meter.sample(1.0, 0.0)
    meter.sample(1.0, 5.0)
    meter.sample(0.5, 5.0)
    assert meter.cpu() is None


def test_meter_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window must be positive"):
        LoadMeter(window=0)


# ---- bans ---------------------------------------------------------------------------------


def test_repeated_failures_within_the_window_ban_the_source_until_it_expires() -> None:
    bans = BanList(failures=3, window=10.0, duration=60.0)
    source = "198.51.100.7"
    assert [bans.failed(source, t) for t in (0.0, 1.0, 2.0)] == [False, False, True]
    assert bans.banned(source, 2.0) and bans.banned(source, 61.9)
    assert not bans.banned("203.0.113.9", 3.0)  # another address is not affected
    assert not bans.banned(source, 62.0)  # expired: gone
    assert len(bans) == 0
    # After the ban the count starts afresh: one more failure does not ban again.
    assert not bans.failed(source, 63.0)


def test_failures_spread_wider_than_the_window_never_ban() -> None:
    bans = BanList(failures=3, window=10.0, duration=60.0)
    assert not any(bans.failed("198.51.100.7", t * 6.0) for t in range(20))
    assert not bans.banned("198.51.100.7", 200.0)


def test_exempt_networks_and_hosts_are_never_banned() -> None:
    bans = BanList(1, 10.0, 60.0, exempt=["127.0.0.0/8", "::1/128", "203.0.113.5", "sbc.example"])
    for source in ("127.0.0.1", "127.0.0.2", "::1", "203.0.113.5", "sbc.example"):
        assert not bans.failed(source, 0.0)
        assert not bans.banned(source, 0.0)
    assert bans.failed("203.0.113.6", 0.0)


def test_zero_failures_means_never_ban() -> None:
    bans = BanList(failures=0, window=10.0, duration=60.0)
    assert not any(bans.failed("198.51.100.7", float(t)) for t in range(100))


def test_bans_are_bounded_in_memory() -> None:
    bans = BanList(failures=1, window=10.0, duration=1e9, max_bans=100)
    for n in range(1000):  # a source rotating through its /64
        bans.failed(f"2001:db8::{n:x}", 0.0)
    assert len(bans) == 100
    assert not bans.banned("2001:db8::0", 1.0)  # the oldest ban made room
    assert bans.banned(f"2001:db8::{999:x}", 1.0)
    assert BanList(1, 1.0, 1.0).max_bans == MAX_BANS


def test_admission_never_bans_the_hosts_it_is_told_to_spare() -> None:
    admission = Admission(
        limits(auth_failures_before_ban=1, ban_exempt=[]), never_ban=["198.51.100.1"]
    )
    assert not admission.auth_failed("198.51.100.1", 0.0)  # a trunk
    assert admission.auth_failed("198.51.100.2", 0.0)
    assert admission.banned("198.51.100.2", 1.0)
    assert admission.auth_failed("127.0.0.1", 0.0)  # ban_exempt emptied: loopback too


def test_default_limits_never_ban_loopback() -> None:
    admission = Admission(LimitsConfig())
    assert not any(admission.auth_failed("127.0.0.1", float(t)) for t in range(100))
    assert not any(admission.auth_failed("::1", float(t)) for t in range(100))


# ---- admit ---------------------------------------------------------------------------------


def test_blocked_prefix_gets_403_destination_blocked_and_emergency_passes() -> None:
    admission = Admission(limits(blocked_prefixes=["979", "1"]))
    refusal = admit(admission, destination=PREMIUM)
    assert refusal == LimitRefusal(RefusalReason.BLOCKED_DESTINATION, 403, "Destination Blocked")
    assert admit(admission, destination="+12025550123") is not None
    assert admit(admission, destination="911", emergency=True) is None
    assert admit(admission, destination=ORDINARY) is None
    assert admit(admission, destination=None) is None  # app to app has no destination number


def test_default_blocked_prefixes_are_the_premium_and_satellite_codes() -> None:
    admission = Admission(limits())
    for number in ("+979123456789", "+8816123456", "+88234567890", "+8833456789", "+870772"):
        refusal = admit(admission, destination=number)
        assert refusal is not None and refusal.status == 403, number
    for number in ("+8613800138000", "+88612345678", "+8801712345678", "+85212345678"):
        assert admit(admission, destination=number) is None, number


def test_account_concurrent_calls_get_403_and_free_up_when_calls_end() -> None:
    admission = Admission(limits(calls_per_account=2))
    for _ in range(2):
        assert admit(admission) is None
        admission.call_started("1001")
    refusal = admit(admission)
    assert refusal == LimitRefusal(RefusalReason.ACCOUNT_CALLS, 403, "Too Many Calls For Account")
    assert admit(admission, "1002") is None  # another account has its own count
    assert admit(admission, emergency=True, destination="110") is None
    admission.call_ended("1001")
    assert admission.active("1001") == 1
    assert admit(admission) is None


def test_ending_a_call_that_was_never_counted_does_not_go_negative() -> None:
    admission = Admission(limits(calls_per_account=1))
    admission.call_ended("1001")
    assert admission.active("1001") == 0
    admission.call_started("1001")
    assert admit(admission) is not None


def test_account_rate_gets_503_with_retry_after() -> None:
    admission = Admission(limits(cps_per_account=2))
    assert admit(admission) is None and admit(admission) is None
    refusal = admit(admission, now=0.1)
    assert refusal == LimitRefusal(
        RefusalReason.ACCOUNT_RATE, 503, "Call Rate Limit Exceeded", retry_after=1
    )
    assert refusal.reason.is_rate
    assert admit(admission, emergency=True, destination="110", now=0.1) is None
    assert admit(admission, now=0.5) is None


def test_calls_per_minute_get_503_with_the_seconds_until_the_next_one() -> None:
    admission = Admission(limits(calls_per_minute_per_account=2))
    assert admit(admission, now=0.0) is None
    assert admit(admission, now=1.0) is None
    refusal = admit(admission, now=2.0)
    assert refusal is not None
    assert (refusal.reason, refusal.status, refusal.phrase) == (
        RefusalReason.ACCOUNT_PER_MINUTE,
        503,
        "Calls Per Minute Exceeded",
    )
    assert refusal.retry_after == 28  # one call every 30 s: 2 s of refill so far
    assert admit(admission, "1002", now=2.0) is None
    assert admit(admission, emergency=True, destination="110", now=2.0) is None
    assert admit(admission, now=30.0) is None


def test_global_rate_counts_every_account_together() -> None:
    admission = Admission(limits(cps=2))
    assert admit(admission, "1001") is None
    assert admit(admission, "1002") is None
    refusal = admit(admission, "1003")
    assert refusal == LimitRefusal(
        RefusalReason.GLOBAL_RATE, 503, "Service Unavailable", retry_after=1
    )
    assert admit(admission, "1003", emergency=True, destination="110") is None
    assert admit(admission, "1003", now=0.5) is None


def test_an_account_over_its_own_limit_spends_nobody_elses_tokens() -> None:
    admission = Admission(limits(cps=3, cps_per_account=1))
    assert admit(admission, "1001") is None
    for _ in range(50):  # 1001 floods past its own limit...
        refusal = admit(admission, "1001")
        assert refusal is not None and refusal.reason is RefusalReason.ACCOUNT_RATE
    # ...and the box's budget is still there for the others.
    assert admit(admission, "1002") is None
    assert admit(admission, "1003") is None


def test_a_refused_attempt_spends_no_token() -> None:
    admission = Admission(limits(cps=1, cps_per_account=5, calls_per_minute_per_account=5))
    assert admit(admission, "1001") is None
    for _ in range(10):
        refusal = admit(admission, "1001")
        assert refusal is not None and refusal.reason is RefusalReason.GLOBAL_RATE
    # Still 4 of 5 per-minute calls left: the refused ones were not charged.
    for second in range(1, 5):
        assert admit(admission, "1001", now=float(second)) is None
    refusal = admit(admission, "1001", now=5.0)
    assert refusal is not None and refusal.reason is RefusalReason.ACCOUNT_PER_MINUTE


def test_max_calls_gets_503_too_many_calls() -> None:
    admission = Admission(limits(max_calls=10))
    assert admit(admission, active_calls=9) is None
    assert admit(admission, active_calls=10) == LimitRefusal(
        RefusalReason.MAX_CALLS, 503, "Too Many Calls"
    )
    assert admit(admission, active_calls=10, emergency=True, destination="110") is None


def feed(admission: Admission, cpu_per_tick: float, lag: float = 0.0, *, start: float = 0) -> None:
    """1.2 s of samples at 10 Hz from `start`, as the sampler task would give them."""
    for n in range(12):
        admission.load.sample(start + n / 10, 100 * start + n * cpu_per_tick, lag=lag)


def test_cpu_over_the_threshold_gets_503_cpu_overloaded() -> None:
    admission = Admission(limits(max_cpu=0.85))
    assert admission.watches_load
    feed(admission, 0.08)  # 80 % of a core
    assert admit(admission) is None
    feed(admission, 0.095, start=10)  # 95 %
    refusal = admit(admission)
    assert refusal == LimitRefusal(
        RefusalReason.CPU, 503, "CPU Overloaded", retry_after=OVERLOAD_RETRY_AFTER
    )
    assert admit(admission, emergency=True, destination="110") is None


def test_loop_lag_over_the_threshold_gets_503_event_loop_overloaded() -> None:
    admission = Admission(limits(max_loop_lag=0.25))
    feed(admission, 0.01, lag=0.1)
    assert admit(admission) is None
    feed(admission, 0.01, lag=0.4, start=10)
    refusal = admit(admission)
    assert refusal is not None and refusal.reason is RefusalReason.LOOP_LAG
    assert (refusal.status, refusal.phrase) == (503, "Event Loop Overloaded")
    assert refusal.retry_after == OVERLOAD_RETRY_AFTER
    assert admit(admission, emergency=True, destination="110") is None


def test_load_limits_set_to_zero_are_off() -> None:
    admission = Admission(limits())
    assert not admission.watches_load
    feed(admission, 0.5, lag=3.0)  # five cores and three seconds late: nobody asks
    assert admit(admission) is None


def test_policy_refusals_come_before_capacity_ones() -> None:
    admission = Admission(limits(max_calls=1, max_cpu=0.5))
    feed(admission, 0.1)
    refusal = admit(admission, destination=PREMIUM, active_calls=5)
    assert refusal is not None and refusal.reason is RefusalReason.BLOCKED_DESTINATION
    refusal = admit(admission, active_calls=5)
    assert refusal is not None and refusal.reason is RefusalReason.CPU


# ---- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        ("calls_per_account = 0", "limits.calls_per_account: must be at least 1, got 0"),
        ("cps = -1", "limits.cps: must be 0 (off) or more, got -1"),
        (
            "calls_per_minute_per_account = -2",
            "limits.calls_per_minute_per_account: must be 0 (off) or more, got -2",
        ),
        (
            "max_cpu = 85",  # a percentage where a fraction belongs
            "limits.max_cpu: must be a fraction of one core from 0 (off) to 1, got 85.0",
        ),
        ("max_cpu = nan", "limits.max_cpu: must be a fraction of one core"),
        ("max_loop_lag = -0.5", "limits.max_loop_lag: must be 0 (off) or a number of seconds"),
        ("ban_seconds = 0", "limits.ban_seconds: must be a number of seconds greater than 0"),
        ("auth_failure_window = -1", "limits.auth_failure_window: must be a number of seconds"),
        (
            'blocked_prefixes = ["979", "+881"]',
            "limits.blocked_prefixes[1]: must be 1 to 15 digits of an E.164 number without '+'",
        ),
        ('blocked_prefixes = [""]', "limits.blocked_prefixes[0]: must be 1 to 15 digits"),
        ('ban_exempt = ["10.0.0.1/8"]', "limits.ban_exempt[0]: must be an IP network"),
        ('ban_exempt = ["loopback"]', "limits.ban_exempt[0]: must be an IP network"),
        ('max_cpu = "high"', "limits.max_cpu: expected"),
    ],
)
def test_bad_limits_are_refused_naming_the_key(toml: str, error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"[limits]\n{toml}\n", source="edgegw.toml")
    assert error in str(raised.value)
    assert str(raised.value).startswith("edgegw.toml: limits.")


def test_limits_defaults_and_a_valid_override() -> None:
    limits_ = parse_config("", source="empty.toml").limits
    assert (limits_.calls_per_account, limits_.cps, limits_.calls_per_minute_per_account) == (
        2000,
        0,
        0,
    )
    assert (limits_.max_cpu, limits_.max_loop_lag) == (0.85, 0.25)
    assert limits_.blocked_prefixes == ["870", "881", "882", "883", "979"]
    assert limits_.ban_exempt == ["127.0.0.0/8", "::1/128"]
    assert default_config().limits.ban_exempt == ["127.0.0.0/8", "::1/128"]  # DESIGN: demo
    text = '[limits]\ncps = 300\nmax_cpu = 0\nblocked_prefixes = []\nban_exempt = ["10.0.0.0/8"]\n'
    custom = parse_config(text, source="x.toml").limits
    assert (custom.cps, custom.max_cpu, custom.blocked_prefixes) == (300, 0.0, [])
    assert parse_config(dump_default_toml(), source="d.toml") == default_config()
