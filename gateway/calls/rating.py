"""Call rating: what a call costs and how long a prepaid balance lasts (sans-IO).

Money is `decimal.Decimal`, never float. A tariff is a price per minute for a
destination prefix with billing increments in the usual "first/next" notation
(60/60, 6/6, 30/6): the first `first_increment` seconds are billed as one
block, and every further started `next_increment` seconds as another block.

Rounding: a call's price is computed exactly (rational arithmetic, no
intermediate rounding) and rounded once, to cents, with ROUND_HALF_UP. One
rounding per call avoids the drift of rounding every block, and cents are what
a balance and the ledger hold. A consequence worth knowing: with sub-cent
per-block prices a short call can round to 0.00 (e.g. 6 s at 0.03/min).

Durations are seconds as floats, compared exactly (no epsilon): 60.0 s is one
60 s block, 60.001 s starts a second one. The caller measures the duration; a
clock's jitter above a boundary is billed, as carriers do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

CENTS_PER_UNIT = 100

_PRICE = re.compile(r"\d+(?:\.\d+)?")
_DIGITS = re.compile(r"\d*")
_E164 = re.compile(r"\+\d{1,15}")


class RatingError(ValueError):
    """A tariff, number, duration or amount that cannot be rated."""


@dataclass(frozen=True)
class Tariff:
    """Price per minute for numbers starting with `prefix` ("" matches every number).

    `trunk` names the trunk whose own tariff this is (the price of a number no retail
    tariff covers); None for a retail tariff.
    """

    prefix: str
    per_minute: Decimal
    first_increment: int
    next_increment: int
    name: str = ""
    trunk: str | None = None

    @property
    def free(self) -> bool:
        return self.per_minute == 0


def tariff(prefix: str, per_minute: str, increments: tuple[int, int], name: str = "") -> Tariff:
    """A validated Tariff from config values: prefix digits (a leading '+' is
    dropped), a price like "0.10", and (first, next) increments in seconds."""
    label = name or f"prefix {prefix!r}"
    if not isinstance(prefix, str) or not _DIGITS.fullmatch(prefix.removeprefix("+")):
        raise RatingError(f"tariff {label}: prefix must be digits, got {prefix!r}")
    if not isinstance(per_minute, str) or not _PRICE.fullmatch(per_minute):
        raise RatingError(
            f"tariff {label}: price per minute must be a non-negative decimal"
            f" string like '0.10', got {per_minute!r}"
        )
    if (
        not isinstance(increments, tuple)
        or len(increments) != 2
        or not all(type(step) is int and step >= 1 for step in increments)
    ):
        raise RatingError(
            f"tariff {label}: increments must be two whole seconds >= 1"
            f" like (60, 60), got {increments!r}"
        )
    first, following = increments
    return Tariff(prefix.removeprefix("+"), Decimal(per_minute), first, following, name)


class TariffTable:
    """Tariffs by destination prefix; a number gets the longest matching one."""

    def __init__(self, tariffs: Iterable[Tariff]) -> None:
        self._by_prefix: dict[str, Tariff] = {}
        for entry in tariffs:
            if entry.prefix in self._by_prefix:
                raise RatingError(
                    f"duplicate tariff prefix {entry.prefix!r}"
                    f" ({self._by_prefix[entry.prefix].name!r} and {entry.name!r})"
                )
            self._by_prefix[entry.prefix] = entry
        self._lengths = sorted({len(p) for p in self._by_prefix}, reverse=True)

    def __len__(self) -> int:
        return len(self._by_prefix)

    def lookup(self, e164: str) -> Tariff | None:
        """The tariff of the longest prefix of the digits after '+', or None."""
        if not isinstance(e164, str) or not _E164.fullmatch(e164):
            raise RatingError(f"not an E.164 number ('+' and 1-15 digits): {e164!r}")
        digits = e164[1:]
        for length in self._lengths:
            found = self._by_prefix.get(digits[:length]) if length <= len(digits) else None
            if found is not None:
                return found
        return None


def billable_seconds(duration: float, rate: Tariff) -> int:
    """Seconds billed for a call of `duration` seconds: 0 when unanswered (0 s),
    else the first block plus every started next block."""
    exact = _duration(duration)
    if exact == 0:
        return 0
    if exact <= rate.first_increment:
        return rate.first_increment
    blocks = math.ceil((exact - rate.first_increment) / rate.next_increment)
    return rate.first_increment + blocks * rate.next_increment


def cost(duration: float, rate: Tariff) -> Decimal:
    """Price of a call of `duration` seconds, in cents (2 places, ROUND_HALF_UP)."""
    return _price(billable_seconds(duration, rate), rate)


def affordable_seconds(balance: Decimal, rate: Tariff) -> int | None:
    """The longest call, in whole seconds, whose cost does not exceed `balance`.

    None means unlimited (a free tariff). A balance of zero or less allows no
    paid call at all (0), even where a first block would round to 0.00. The
    answer always ends on a block boundary: a call one second longer starts a
    block the balance cannot pay for.
    """
    amount = _amount(balance, "balance")
    if rate.free:
        return None
    if amount <= 0:
        return 0
    # cost(s) <= balance  <=>  exact price < whole cents of balance + half a cent
    # (ROUND_HALF_UP); so s < limit below, and whole seconds stop at ceil(limit) - 1.
    cents = math.floor(Fraction(amount) * CENTS_PER_UNIT)
    limit = Fraction(2 * cents + 1, 2 * CENTS_PER_UNIT) * 60 / Fraction(rate.per_minute)
    longest = math.ceil(limit) - 1
    if longest < rate.first_increment:
        return 0
    blocks = (longest - rate.first_increment) // rate.next_increment
    return rate.first_increment + blocks * rate.next_increment


def _price(seconds: int, rate: Tariff) -> Decimal:
    exact = Fraction(seconds) * Fraction(rate.per_minute) / 60 * CENTS_PER_UNIT
    cents = math.floor(exact + Fraction(1, 2))  # half up; prices are never negative
    # Built from a string so that no Decimal context can round a large amount.
    return Decimal(f"{cents // CENTS_PER_UNIT}.{cents % CENTS_PER_UNIT:02d}")


def _duration(duration: float) -> Fraction:
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        raise RatingError(f"call duration must be seconds as a number, got {duration!r}")
    if not math.isfinite(duration) or duration < 0:
        raise RatingError(f"call duration must be finite and >= 0 s, got {duration!r}")
    return Fraction(duration)  # exact: the float's own binary value


def _amount(value: Decimal, what: str) -> Decimal:
    # A float here would carry binary error into money; refuse it outright.
    if not isinstance(value, Decimal):
        raise RatingError(f"{what} must be a Decimal, got {type(value).__name__} {value!r}")
    if not value.is_finite():
        raise RatingError(f"{what} must be a finite amount, got {value!r}")
    return value
