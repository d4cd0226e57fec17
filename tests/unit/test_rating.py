"""Call rating: tariffs, billing increments, cost and affordable duration."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.calls.rating import (
    RatingError,
    Tariff,
    TariffTable,
    affordable_seconds,
    billable_seconds,
    cost,
    tariff,
)

D = Decimal


def test_tariff_from_config_values() -> None:
    made = tariff("+86", "0.10", (30, 6), name="china")
    assert made == Tariff("86", D("0.10"), 30, 6, "china")
    assert tariff("", "0", (1, 1)).free


@pytest.mark.parametrize(
    ("prefix", "price", "increments", "named"),
    [
        ("86a", "0.10", (60, 60), "prefix"),  # letters in the prefix
        ("+", "0.10", (60, 60), None),  # a lone '+' is the empty prefix: accepted below
        ("8 6", "0.10", (60, 60), "prefix"),  # a space
        ("86", "-0.10", (60, 60), "price"),  # negative price
        ("86", "0,10", (60, 60), "price"),  # decimal comma
        ("86", "NaN", (60, 60), "price"),
        ("86", "1e3", (60, 60), "price"),  # exponent notation
        ("86", "", (60, 60), "price"),
        ("86", 0.1, (60, 60), "price"),  # a float, not a string
        ("86", "0.10", (0, 60), "increments"),
        ("86", "0.10", (60, -6), "increments"),
        ("86", "0.10", (60,), "increments"),
        ("86", "0.10", (6.0, 6), "increments"),
        ("86", "0.10", (True, 6), "increments"),
    ],
)
def test_malformed_tariffs_are_refused_with_the_field_named(
    prefix: Any, price: Any, increments: Any, named: str | None
) -> None:
    if named is None:
        assert tariff(prefix, price, increments).prefix == ""
        return
    with pytest.raises(RatingError, match=named):
        tariff(prefix, price, increments, name="t")


def test_longest_prefix_wins() -> None:
    table = TariffTable(
        [
            tariff("", "0.50", (60, 60), "world"),
            tariff("86", "0.10", (6, 6), "china"),
            tariff("86139", "0.20", (6, 6), "china-mobile"),
        ]
    )
    assert len(table) == 3
    assert table.lookup("+8613900139002") == table.lookup("+86139")
    assert table.lookup("+8613900139002").name == "china-mobile"  # type: ignore[union-attr]
    assert table.lookup("+8613800138000").name == "china"  # type: ignore[union-attr]
    assert table.lookup("+8613").name == "china"  # type: ignore[union-attr]
    assert table.lookup("+14155550100").name == "world"  # type: ignore[union-attr]


def test_a_tariff_names_its_trunk_only_when_it_is_a_trunk_tariff() -> None:
    assert tariff("86", "0.10", (60, 60)).trunk is None
    carried = Tariff("", D("0.10"), 60, 60, "trunk t", trunk="t")
    assert carried.trunk == "t" and carried != Tariff("", D("0.10"), 60, 60, "trunk t")


def test_no_matching_prefix_is_none() -> None:
    table = TariffTable([tariff("86", "0.10", (60, 60))])
    assert table.lookup("+14155550100") is None
    assert TariffTable([]).lookup("+86") is None


def test_duplicate_prefixes_are_refused() -> None:
    with pytest.raises(RatingError, match="duplicate tariff prefix '86'"):
        TariffTable([tariff("86", "0.10", (60, 60), "a"), tariff("+86", "0.20", (6, 6), "b")])


@pytest.mark.parametrize("number", ["8613900139002", "+86 139", "+", "+1234567890123456", 86])
def test_lookup_refuses_what_is_not_e164(number: Any) -> None:
    with pytest.raises(RatingError, match=r"E\.164"):
        TariffTable([tariff("", "0.10", (60, 60))]).lookup(number)


@pytest.mark.parametrize(
    ("increments", "duration", "billed"),
    [
        ((60, 60), 0, 0),  # unanswered
        ((60, 60), 0.0, 0),
        ((60, 60), 0.001, 60),
        ((60, 60), 1, 60),
        ((60, 60), 60.0, 60),  # exactly one block
        ((60, 60), 60.001, 120),  # just over
        ((60, 60), 61, 120),
        ((6, 6), 7, 12),
        ((6, 6), 12, 12),
        ((30, 6), 1, 30),
        ((30, 6), 30, 30),
        ((30, 6), 31, 36),
        ((30, 6), 36.5, 42),
        ((1, 1), 59.2, 60),
    ],
)
def test_billable_seconds(increments: tuple[int, int], duration: float, billed: int) -> None:
    assert billable_seconds(duration, tariff("", "0.10", increments)) == billed


@pytest.mark.parametrize("duration", [-1, -0.001, float("nan"), float("inf"), "60", True, None])
def test_bad_durations_are_refused(duration: Any) -> None:
    with pytest.raises(RatingError, match="duration"):
        billable_seconds(duration, tariff("", "0.10", (60, 60)))


@pytest.mark.parametrize(
    ("price", "increments", "duration", "expected"),
    [
        ("0.10", (60, 60), 0, "0.00"),  # unanswered costs nothing
        ("0.10", (60, 60), 1, "0.10"),
        ("0.10", (60, 60), 61, "0.20"),
        ("0.10", (6, 6), 7, "0.02"),  # 12 s = 0.02
        ("0.10", (6, 6), 6, "0.01"),  # 0.01 exactly
        ("0.05", (6, 6), 6, "0.01"),  # 0.005 rounds half up
        ("0.04", (6, 6), 6, "0.00"),  # 0.004 rounds down
        ("0.03", (6, 6), 6, "0.00"),  # sub-cent block: documented as free
        ("0.07", (1, 1), 10, "0.01"),  # 0.011666...
        ("0.07", (1, 1), 30, "0.04"),  # 0.035 half up, no binary error
        ("1.2345", (60, 60), 60, "1.23"),  # carrier 4-place price, cents out
        ("1.2355", (60, 60), 60, "1.24"),
        ("0", (60, 60), 3600, "0.00"),  # free tariff
    ],
)
def test_cost(price: str, increments: tuple[int, int], duration: float, expected: str) -> None:
    charged = cost(duration, tariff("", price, increments))
    assert isinstance(charged, Decimal)
    assert str(charged) == expected


def test_cost_of_a_very_long_call_keeps_every_digit() -> None:
    # 10^30 minutes at 0.01: beyond the default 28-digit Decimal context.
    assert cost(60 * 10**30, tariff("", "0.01", (60, 60))) == D(10**28)
    assert str(cost(60 * 10**30, tariff("", "0.01", (60, 60)))).endswith(".00")


@pytest.mark.parametrize(
    ("balance", "price", "increments", "seconds"),
    [
        ("0.10", "0.10", (60, 60), 60),  # exact boundary
        ("0.09", "0.10", (60, 60), 0),  # one cent short of the first block
        ("0.11", "0.10", (60, 60), 60),
        ("0.19", "0.10", (60, 60), 60),
        ("0.20", "0.10", (60, 60), 120),
        ("0.05", "0.10", (6, 6), 30),
        ("0.04", "0.10", (6, 6), 24),
        ("0.01", "0.10", (6, 6), 6),
        ("0.01", "0.10", (30, 6), 0),  # first block costs 0.05
        ("0.05", "0.10", (30, 6), 30),
        ("0.06", "0.10", (30, 6), 36),
        ("0.01", "0.05", (6, 6), 12),  # 12 s = 0.01; 18 s = 0.015 -> 0.02
        ("0.00", "0.10", (60, 60), 0),
        ("0.00", "0.03", (6, 6), 0),  # no credit, no paid call, even a 0.00 one
        ("-5.00", "0.10", (60, 60), 0),  # negative balance
        ("0.009", "0.10", (6, 6), 0),  # sub-cent balance counts as whole cents
        ("1000000000000000000000000000000.00", "0.60", (1, 1), 10**32),  # huge
    ],
)
def test_affordable_seconds(
    balance: str, price: str, increments: tuple[int, int], seconds: int
) -> None:
    rate = tariff("", price, increments)
    assert affordable_seconds(D(balance), rate) == seconds


def test_a_free_tariff_is_unlimited() -> None:
    free = tariff("", "0.00", (60, 60))
    assert affordable_seconds(D("0.00"), free) is None
    assert affordable_seconds(D("-1"), free) is None


@pytest.mark.parametrize(
    ("balance", "message"),
    [
        (0.10, "Decimal"),
        ("0.10", "Decimal"),
        (10, "Decimal"),
        (D("NaN"), "finite"),
        (D("Infinity"), "finite"),
    ],
)
def test_balance_must_be_a_finite_decimal(balance: Any, message: str) -> None:
    with pytest.raises(RatingError, match=message):
        affordable_seconds(balance, tariff("", "0.10", (60, 60)))


prices = st.decimals(min_value=D("0.0001"), max_value=D("20"), places=4).map(str)
increment_pairs = st.tuples(st.integers(1, 120), st.integers(1, 120))
balances = st.decimals(min_value=D("0.01"), max_value=D("100000"), places=2)


@given(prices, increment_pairs, balances)
def test_affordable_is_exactly_the_limit(
    price: str, increments: tuple[int, int], balance: Decimal
) -> None:
    """For a paid tariff and a positive balance, `a = affordable_seconds`:
    cost(a) <= balance, and cost(a + 1 s) > balance (a ends on a block
    boundary, or is 0, so one more second always starts an unpaid block);
    cost never decreases with duration, so no longer call is affordable."""
    rate = tariff("", price, increments)
    affordable = affordable_seconds(balance, rate)
    assert affordable is not None
    assert cost(affordable, rate) <= balance
    assert cost(affordable + 1, rate) > balance
    assert affordable == billable_seconds(affordable, rate)


@given(prices, increment_pairs, st.floats(0, 1e6), st.floats(0, 1e6))
def test_cost_never_decreases_with_duration(
    price: str, increments: tuple[int, int], one: float, other: float
) -> None:
    rate = tariff("", price, increments)
    shorter, longer = sorted((one, other))
    assert billable_seconds(shorter, rate) <= billable_seconds(longer, rate)
    assert cost(shorter, rate) <= cost(longer, rate)
