"""Number plans: normalization to E.164, rejected inputs, emergency short codes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.calls.numbers import (
    DEFAULT_EMERGENCY,
    PLANS,
    Dialled,
    DialledKind,
    NumberError,
    NumberPlan,
    classify,
    is_emergency,
    normalize,
)

VALID = [
    # China (default plan)
    ("CN", "+8613800138000", "+8613800138000"),
    ("CN", "008613800138000", "+8613800138000"),
    ("CN", "13800138000", "+8613800138000"),
    ("CN", "013800138000", "+8613800138000"),
    ("CN", "01012345678", "+861012345678"),
    ("CN", "010-1234-5678", "+861012345678"),
    ("CN", "075512345678", "+8675512345678"),
    ("CN", "05311234567", "+865311234567"),
    ("CN", "+86 138-0013-8000", "+8613800138000"),
    ("CN", " +86 (10) 1234.5678 ", "+861012345678"),
    ("CN", "0044 20 7946 0018", "+442079460018"),
    ("CN", "+1 (212) 555-1234", "+12125551234"),
    ("CN", "+2901234", "+2901234"),
    # United States (NANP)
    ("US", "2125551234", "+12125551234"),
    ("US", "1 212 555 1234", "+12125551234"),
    ("US", "(212) 555-1234", "+12125551234"),
    ("US", "+1-212-555-1234", "+12125551234"),
    ("US", "011 86 138 0013 8000", "+8613800138000"),
    ("US", "01144 20 7946 0018", "+442079460018"),
    # United Kingdom
    ("GB", "020 7946 0018", "+442079460018"),
    ("GB", "07911 123456", "+447911123456"),
    ("GB", "01632 96012", "+44163296012"),
    ("GB", "+44 20 7946 0018", "+442079460018"),
    ("GB", "0049 30 12345678", "+493012345678"),
    # Germany
    ("DE", "030 12345678", "+493012345678"),
    ("DE", "0151 12345678", "+4915112345678"),
    ("DE", "089 123456", "+4989123456"),
    ("DE", "+49 30 12345678901", "+493012345678901"),  # 13 national digits, 15 in all
    ("DE", "00 86 10 1234 5678", "+861012345678"),
]


@pytest.mark.parametrize(("country", "dialled", "expected"), VALID)
def test_valid_inputs_normalize_to_e164(country: str, dialled: str, expected: str) -> None:
    assert normalize(dialled, PLANS[country]) == expected


INVALID = [
    ("CN", "", "empty"),
    ("CN", " - ", "empty"),
    ("CN", "+", "no digits after '+'"),
    ("CN", "1380013800a", "invalid character 'a'"),
    ("CN", "tel:13800138000", "invalid character 't'"),
    ("CN", "+86+13800138000", "invalid character '+'"),
    ("CN", "*86#", "service code"),
    ("CN", "#31#13800138000", "service code"),
    ("CN", "+0123456789", "country code cannot start with 0"),
    ("CN", "000123456789", "country code cannot start with 0"),
    ("CN", "00", "nothing after the international prefix"),
    ("CN", "+1234567890123456", "too long: 16 digits"),
    ("CN", "+123456", "too short: 6 digits"),
    ("CN", "+86110", "too short"),
    ("CN", "1380013800", "not a +86 number"),
    ("CN", "23456789", "not a +86 number"),
    ("CN", "0123456789012", "has 12 digits; +86 numbers have 10-11"),
    ("CN", "+86 138001380001", "has 12 digits"),
    ("CN", "+86 (0)10 1234 5678", "national prefix '0' after country code +86"),
    ("US", "1234567890", "has 9 digits; +1 numbers have 10"),
    ("US", "+1 1125551234", "national prefix '1' after country code +1"),
    ("US", "555123", "not a +1 number"),
    ("GB", "2079460018", "dial it with the national prefix '0'"),
    ("GB", "020 7946 00181", "has 11 digits; +44 numbers have 9-10"),
    ("DE", "030 12", "has 4 digits; +49 numbers have 6-13"),
]


@pytest.mark.parametrize(("country", "dialled", "fragment"), INVALID)
def test_invalid_inputs_raise_number_error(country: str, dialled: str, fragment: str) -> None:
    with pytest.raises(NumberError) as info:
        normalize(dialled, PLANS[country])
    assert fragment in str(info.value)
    assert repr(dialled) in str(info.value)  # the message names the input
    assert info.value.dialled == dialled


def test_number_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        normalize("", PLANS["CN"])


@pytest.mark.parametrize("code", sorted(DEFAULT_EMERGENCY))
def test_default_emergency_numbers_in_china(code: str) -> None:
    assert is_emergency(code, PLANS["CN"])
    assert classify(code, PLANS["CN"]) == Dialled(DialledKind.EMERGENCY, code)


@pytest.mark.parametrize(
    ("country", "dialled", "expected"),
    [
        ("CN", " 1-1-0 ", True),  # separators do not hide an emergency call
        ("CN", "+86110", False),  # emergency numbers are dialled short only
        ("CN", "0086110", False),
        ("CN", "0110", False),
        ("CN", "1100", False),
        ("CN", "999", False),
        ("CN", "*110#", False),
        ("CN", "", False),
        ("US", "911", True),
        ("US", "110", False),
        ("GB", "999", True),
        ("GB", "112", True),
        ("DE", "110", True),
    ],
)
def test_emergency_detection(country: str, dialled: str, expected: bool) -> None:
    assert is_emergency(dialled, PLANS[country]) is expected


def test_configured_emergency_list_replaces_the_default() -> None:
    plan = NumberPlan("86", "0", "00", (10, 11), frozenset({"12110"}))
    assert is_emergency("12110", plan)
    assert not is_emergency("110", plan)


def test_classify_gives_e164_or_raises() -> None:
    plan = PLANS["CN"]
    assert classify("138 0013 8000", plan) == Dialled(DialledKind.E164, "+8613800138000")
    with pytest.raises(NumberError, match="too short"):
        classify("+86110", plan)
    with pytest.raises(NumberError, match="service code"):
        classify("*110#", plan)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"country_code": "086"}, "country code"),
        ({"country_code": "1234"}, "country code"),
        ({"national_prefix": "o"}, "national_prefix must be digits"),
        ({"international_prefix": ""}, "international_prefix must be digits"),
        ({"national_lengths": ()}, "national_lengths"),
        ({"national_lengths": (14,)}, "exceeds E.164"),
        ({"emergency": frozenset({"11O"})}, "emergency numbers must be digits"),
    ],
)
def test_bad_plan_is_refused(kwargs: dict[str, object], fragment: str) -> None:
    fields: dict[str, object] = {
        "country_code": "86",
        "national_prefix": "0",
        "international_prefix": "00",
        "national_lengths": (10, 11),
    }
    fields.update(kwargs)
    with pytest.raises(ValueError, match=fragment):
        NumberPlan(**fields)  # type: ignore[arg-type]


cn_e164 = st.builds(
    lambda first, rest: "+86" + first + rest,
    st.sampled_from("123456789"),
    st.one_of(
        st.text("0123456789", min_size=9, max_size=9),
        st.text("0123456789", min_size=10, max_size=10),
    ),
)


@given(cn_e164)
def test_cn_e164_round_trips(e164: str) -> None:
    plan = PLANS["CN"]
    assert normalize(e164, plan) == e164
    assert normalize("00" + e164[1:], plan) == e164
    assert normalize("0" + e164[3:], plan) == e164  # national form with the trunk prefix


@given(
    st.sampled_from(["44", "49", "1", "33", "290"]),
    st.text("0123456789", min_size=5, max_size=12),
)
def test_foreign_numbers_keep_their_digits_from_china(cc: str, national: str) -> None:
    digits = cc + national
    plan = PLANS["CN"]
    try:
        expected = normalize("+" + digits, plan)
    except NumberError:
        # Too long for E.164, or a NANP/foreign check the "+" form fails too.
        with pytest.raises(NumberError):
            normalize("00" + digits, plan)
        return
    assert expected == "+" + digits
    assert normalize("00" + digits, plan) == expected
