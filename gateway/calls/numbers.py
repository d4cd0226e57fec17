"""Number plans: dialled digits to E.164 (ITU-T E.164 / E.123), and emergency numbers.

A `NumberPlan` is a small rule table for one country: its country code, the
national (trunk) prefix, the international prefix, the lengths a national
significant number may have, which national numbers may be dialled without the
trunk prefix, and the emergency short codes. `normalize` turns what a user
dialled (with the caller's `tel:`/`sip:` user part already extracted) into
"+<country code><national significant number>"; `classify` tells the router
whether a dialled string is an emergency call or an E.164 destination.

Only the caller's own country is checked against its plan's lengths. Numbers
in other countries are checked against E.164 alone (non-zero leading digit,
at most 15 digits): we keep no table of foreign numbering, so a wrong foreign
number is left for the carrier to refuse.

Emergency numbers are short codes dialled as such: "110" is an emergency call,
"+86110" or "0086110" is not (no network routes those to the police, and
treating them as emergencies would give free, unblockable carrier calls to any
string that ends in a short code). They are therefore matched exactly, after
separators are removed, and `normalize` rejects them as too short.

Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

E164_MAX_DIGITS = 15
# The shortest numbers in service worldwide have 7 digits with their country
# code (e.g. +290 XXXX); anything shorter is a short code, not an E.164 number.
E164_MIN_DIGITS = 7
DEFAULT_EMERGENCY = frozenset({"110", "119", "120", "122", "112", "911"})

_SEPARATORS = str.maketrans("", "", " \t-.()/")


class NumberError(ValueError):
    """A dialled string that is not a number this plan can route; names the input and the fault."""

    def __init__(self, dialled: str, reason: str) -> None:
        super().__init__(f"dialled number {dialled!r}: {reason}")
        self.dialled = dialled
        self.reason = reason


@dataclass(frozen=True)
class BareRule:
    """National significant numbers starting with `prefix` and of one of `lengths` may be
    dialled without the trunk prefix (Chinese mobiles, any NANP number)."""

    prefix: str
    lengths: tuple[int, ...]


@dataclass(frozen=True)
class NumberPlan:
    """Dialling rules of one country. Lengths count the national significant number,
    i.e. without the trunk prefix and without the country code."""

    country_code: str
    national_prefix: str
    international_prefix: str
    national_lengths: tuple[int, ...]
    emergency: frozenset[str] = DEFAULT_EMERGENCY
    bare_national: tuple[BareRule, ...] = ()

    def __post_init__(self) -> None:
        cc = self.country_code
        if not (cc.isdigit() and cc[0] != "0" and len(cc) <= 3):
            raise ValueError(f"country code must be 1-3 digits not starting with 0, got {cc!r}")
        for name in ("national_prefix", "international_prefix"):
            value = getattr(self, name)
            if not value.isdigit():
                raise ValueError(f"{name} must be digits, got {value!r}")
        if not self.national_lengths or min(self.national_lengths) < 1:
            raise ValueError(f"national_lengths must be positive, got {self.national_lengths}")
        if len(cc) + max(self.national_lengths) > E164_MAX_DIGITS:
            raise ValueError(
                f"+{cc} with {max(self.national_lengths)} national digits exceeds "
                f"E.164's {E164_MAX_DIGITS}"
            )
        for code in self.emergency:
            if not code.isdigit():
                raise ValueError(f"emergency numbers must be digits, got {code!r}")


class DialledKind(StrEnum):
    EMERGENCY = "emergency"
    E164 = "e164"


@dataclass(frozen=True)
class Dialled:
    """What the router gets: an emergency short code (as dialled, separators removed)
    or an E.164 number with its "+"."""

    kind: DialledKind
    number: str = field(default="")


PLANS: dict[str, NumberPlan] = {
    # Mobiles (11 digits, leading 1) are dialled bare or after 0; fixed lines are
    # 0 + area code (2-3 digits) + 7-8 digits, i.e. 10-11 significant digits.
    "CN": NumberPlan("86", "0", "00", (10, 11), bare_national=(BareRule("1", (11,)),)),
    # NANP: 10 digits (area code + 7), dialled bare or after the trunk prefix 1.
    "US": NumberPlan("1", "1", "011", (10,), frozenset({"911", "112"}), (BareRule("", (10,)),)),
    "GB": NumberPlan("44", "0", "00", (9, 10), frozenset({"999", "112"})),
    "DE": NumberPlan("49", "0", "00", tuple(range(6, 14)), frozenset({"110", "112"})),
}
DEFAULT_PLAN = PLANS["CN"]


def _clean(dialled: str) -> str:
    """Separators removed; only digits and one leading "+" survive."""
    cleaned = dialled.strip().translate(_SEPARATORS)
    if not cleaned:
        raise NumberError(dialled, "empty")
    if "*" in cleaned or "#" in cleaned:
        raise NumberError(dialled, "contains '*' or '#' (a service code, not a number)")
    body = cleaned[1:] if cleaned.startswith("+") else cleaned
    if not body:
        raise NumberError(dialled, "no digits after '+'")
    for char in body:
        if not ("0" <= char <= "9"):
            raise NumberError(dialled, f"invalid character {char!r}")
    return cleaned


def _international(dialled: str, digits: str, plan: NumberPlan) -> str:
    """`digits` is country code + national number, as after "+" or the international prefix."""
    if digits[0] == "0":
        raise NumberError(dialled, "country code cannot start with 0")
    if len(digits) > E164_MAX_DIGITS:
        raise NumberError(dialled, f"too long: {len(digits)} digits, E.164 allows at most 15")
    if len(digits) < E164_MIN_DIGITS:
        raise NumberError(dialled, f"too short: {len(digits)} digits, E.164 numbers have 7-15")
    if digits.startswith(plan.country_code):
        _check_national(dialled, digits[len(plan.country_code) :], plan)
    return "+" + digits


def _check_national(dialled: str, national: str, plan: NumberPlan) -> None:
    if national.startswith(plan.national_prefix):
        # "+86 (0)10 ..." written out: the trunk prefix never follows the country code
        # (in NANP, where both are "1", no area code starts with 1 either).
        raise NumberError(
            dialled,
            f"national prefix {plan.national_prefix!r} after country code +{plan.country_code}",
        )
    if len(national) not in plan.national_lengths:
        raise NumberError(
            dialled,
            f"national number {national!r} has {len(national)} digits; "
            f"+{plan.country_code} numbers have {_lengths(plan.national_lengths)}",
        )


def _lengths(lengths: tuple[int, ...]) -> str:
    if len(lengths) > 1 and lengths == tuple(range(lengths[0], lengths[-1] + 1)):
        return f"{lengths[0]}-{lengths[-1]}"
    return "/".join(str(n) for n in lengths)


def normalize(dialled: str, plan: NumberPlan = DEFAULT_PLAN) -> str:
    """E.164 with "+" for a number dialled in international or `plan`'s national format.

    Precedence: "+", then the international prefix, then the national prefix, then
    the plan's bare national forms. Raises NumberError for anything else.
    """
    cleaned = _clean(dialled)
    if cleaned.startswith("+"):
        return _international(dialled, cleaned[1:], plan)
    if cleaned.startswith(plan.international_prefix):
        rest = cleaned[len(plan.international_prefix) :]
        if not rest:
            raise NumberError(dialled, "nothing after the international prefix")
        return _international(dialled, rest, plan)
    if cleaned.startswith(plan.national_prefix):
        national = cleaned[len(plan.national_prefix) :]
        _check_national(dialled, national, plan)
        return _international(dialled, plan.country_code + national, plan)
    for rule in plan.bare_national:
        if cleaned.startswith(rule.prefix) and len(cleaned) in rule.lengths:
            return _international(dialled, plan.country_code + cleaned, plan)
    raise NumberError(
        dialled,
        f"not a +{plan.country_code} number: dial it with the national prefix "
        f"{plan.national_prefix!r} or in international format",
    )


def is_emergency(dialled: str, plan: NumberPlan = DEFAULT_PLAN) -> bool:
    """True when `dialled`, separators removed, is exactly one of the plan's short codes."""
    return dialled.strip().translate(_SEPARATORS) in plan.emergency


def classify(dialled: str, plan: NumberPlan = DEFAULT_PLAN) -> Dialled:
    """Emergency short code, or E.164 destination; NumberError when it is neither."""
    if is_emergency(dialled, plan):
        return Dialled(DialledKind.EMERGENCY, dialled.strip().translate(_SEPARATORS))
    return Dialled(DialledKind.E164, normalize(dialled, plan))
