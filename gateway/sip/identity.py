"""Caller identity toward carriers: asserted identity, privacy and number presentation, sans-IO.

Implements:

* RFC 3325 9.1 and 9.2: the P-Asserted-Identity and P-Preferred-Identity headers (one sip or
  sips URI, one tel URI, or one of each; name-addr with a quoted display name or a bare
  addr-spec), and the trust-boundary rules of section 5: an asserted identity from a peer
  outside the trust domain is removed; toward a peer outside it the identity is withheld when
  the user asked for privacy, while a trusted peer gets it with `Privacy: id` (9.3) so that it
  withholds it in turn.
* RFC 3323 4.2: the Privacy header (`header`, `session`, `user`, `none`, `critical`, plus `id`
  of RFC 3325 9.3 and `history` of RFC 7044), and 4.1.1.3: the anonymous From
  `"Anonymous" <sip:anonymous@anonymous.invalid>`.
* Number presentation on trunks: an E.164 number written as a carrier wants it ("e164"
  +8613..., "e164-no-plus" 8613..., "national" 013... with the trunk prefix of the country's
  `NumberPlan`), and numbers arriving from carriers read back to E.164.

Unknown priv-values are kept in `Privacy.unknown` and otherwise ignored (RFC 3323 4.2 makes
the header extensible), except with `critical`: then the gateway cannot promise a privacy
function it does not know, and `parse_privacy` raises PrivacyError with status 500, the
rejection RFC 3323 asks for when critical privacy cannot be provided.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.calls.numbers import DEFAULT_PLAN, NumberError, NumberPlan, normalize
from gateway.sip.headers import HeaderError, NameAddr, parse_name_addr, split_header_list
from gateway.sip.message import Headers, Request, Response
from gateway.sip.uri import SipUri, TelUri, UriError, parse_uri

__all__ = [
    "ANONYMOUS_URI",
    "AssertedIdentity",
    "CallerPresentation",
    "IdentityError",
    "NumberFormat",
    "PrivValue",
    "Privacy",
    "PrivacyError",
    "accept_asserted_identity",
    "anonymous_from",
    "asserted_identity",
    "from_trunk_number",
    "make_identity",
    "message_privacy",
    "parse_identity",
    "parse_privacy",
    "preferred_identity",
    "present_caller",
    "to_trunk_number",
    "uri_number",
]

PAI = "P-Asserted-Identity"
PPI = "P-Preferred-Identity"
ANONYMOUS_URI = "sip:anonymous@anonymous.invalid"
ANONYMOUS_DISPLAY = "Anonymous"
MAX_DISPLAY_NAME = 128  # characters; longer names are refused rather than cut

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# A display name may hold any UTF-8 text but no control character: CR or LF would end the
# header line and let the rest be read as a header of its own.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_DIAL_CHARS = re.compile(r"\+?[0-9\-.()]+")
_SEPARATORS = str.maketrans("", "", " \t-.()/")


class IdentityError(ValueError):
    """An identity header or value that breaks RFC 3325 9.1; the message names the fault."""


class PrivacyError(ValueError):
    """A Privacy header the gateway cannot act on. `status` is the response to send: 400 for
    a malformed header, 500 for `critical` privacy the gateway cannot provide."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


# ---- Privacy (RFC 3323 4.2, RFC 3325 9.3) ----------------------------------------------------


class PrivValue(enum.StrEnum):
    HEADER = "header"
    SESSION = "session"
    USER = "user"
    NONE = "none"
    CRITICAL = "critical"
    ID = "id"
    HISTORY = "history"


# Values whose request means the caller's identity must not reach the callee.
_HIDING = frozenset({PrivValue.ID, PrivValue.USER, PrivValue.HEADER})


@dataclass(frozen=True)
class Privacy:
    """The privacy a message asks for: known values, and unknown ones kept as written."""

    values: frozenset[PrivValue] = frozenset()
    unknown: tuple[str, ...] = ()

    @property
    def none(self) -> bool:
        """`none`: the caller forbids every privacy function, whatever its profile says."""
        return PrivValue.NONE in self.values

    @property
    def critical(self) -> bool:
        return PrivValue.CRITICAL in self.values

    @property
    def hides_identity(self) -> bool:
        """`id`, `user` or `header`: the callee must not learn who calls."""
        return bool(self.values & _HIDING)

    def __str__(self) -> str:
        known = [value.value for value in PrivValue if value in self.values]
        return ";".join([*known, *self.unknown])


def parse_privacy(values: Iterable[str]) -> Privacy:
    """Parse every Privacy header value of a message.

    The RFC separates priv-values with ";"; "," (seen from some user agents, and the
    separator of repeated headers) is read the same way. Names are case-insensitive.
    """
    known: set[PrivValue] = set()
    unknown: list[str] = []
    for value in values:
        for piece in re.split(r"[;,]", value):
            token = piece.strip(" \t")
            if not token:
                continue
            if not _TOKEN.fullmatch(token):
                raise PrivacyError(f"Bad Privacy value: {token!r}", 400)
            _add_priv_value(token, known, unknown)
    privacy = Privacy(frozenset(known), tuple(unknown))
    _check_privacy(privacy)
    return privacy


def _add_priv_value(token: str, known: set[PrivValue], unknown: list[str]) -> None:
    try:
        known.add(PrivValue(token.lower()))
    except ValueError:
        if token.lower() not in (u.lower() for u in unknown):
            unknown.append(token)


def _check_privacy(privacy: Privacy) -> None:
    if PrivValue.NONE in privacy.values and (len(privacy.values) > 1 or privacy.unknown):
        # RFC 3323 4.2: a Privacy header holding "none" holds no other value.
        raise PrivacyError("Privacy 'none' cannot be combined with other values", 400)
    if privacy.critical and privacy.unknown:
        raise PrivacyError(
            f"Privacy is critical but {', '.join(privacy.unknown)!s} cannot be provided", 500
        )


def message_privacy(message: Request | Response) -> Privacy:
    """The Privacy of `message` (an empty Privacy when it has no Privacy header)."""
    return parse_privacy(message.headers.get_all("Privacy"))


def anonymous_from(tag: str) -> NameAddr:
    """The From of RFC 3323 4.1.1.3 with our `tag`."""
    if not tag or not _TOKEN.fullmatch(tag):
        raise IdentityError(f"From tag {tag!r} is not a token")
    uri = parse_uri(ANONYMOUS_URI)
    return NameAddr(ANONYMOUS_DISPLAY, uri, {"tag": tag})


# ---- P-Asserted-Identity / P-Preferred-Identity (RFC 3325 9.1, 9.2) --------------------------


@dataclass(frozen=True)
class AssertedIdentity:
    """An identity as RFC 3325 9.1 allows it: one sip/sips URI, one tel URI, or one of each.
    Entries carry no header parameters; a display name is optional on each."""

    entries: tuple[NameAddr, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.entries) <= 2:
            raise IdentityError(f"An identity has 1 or 2 URIs, not {len(self.entries)}")
        kinds = [isinstance(entry.uri, TelUri) for entry in self.entries]
        if len(kinds) == 2 and kinds[0] == kinds[1]:
            kind = "tel" if kinds[0] else "sip/sips"
            raise IdentityError(f"Two {kind} URIs in one identity (one of each is allowed)")
        for entry in self.entries:
            if entry.params:
                raise IdentityError("An identity takes no header parameters")
            if entry.display is not None:
                check_display_name(entry.display)

    @property
    def sip(self) -> SipUri | None:
        return next((e.uri for e in self.entries if isinstance(e.uri, SipUri)), None)

    @property
    def tel(self) -> TelUri | None:
        return next((e.uri for e in self.entries if isinstance(e.uri, TelUri)), None)

    @property
    def display(self) -> str | None:
        return next((e.display for e in self.entries if e.display is not None), None)

    @property
    def number(self) -> str | None:
        """The E.164 number the identity carries (tel URI first), or None."""
        for uri in (self.tel, self.sip):
            number = None if uri is None else uri_number(uri)
            if number is not None and _E164.fullmatch(number):
                return number
        return None

    def primary(self) -> NameAddr:
        """The entry to show in a From: the sip/sips one when present."""
        return next((e for e in self.entries if isinstance(e.uri, SipUri)), self.entries[0])

    def header_value(self) -> str:
        return ", ".join(str(entry) for entry in self.entries)


def check_display_name(display: str) -> None:
    """Raise IdentityError for a display name that could not be sent safely."""
    if _CONTROL.search(display):
        raise IdentityError("Display name contains a control character (CR, LF, NUL...)")
    if len(display) > MAX_DISPLAY_NAME:
        raise IdentityError(f"Display name longer than {MAX_DISPLAY_NAME} characters")


def parse_identity(values: Sequence[str], header: str = PAI) -> AssertedIdentity:
    """Parse the values of every P-Asserted-Identity (or P-Preferred-Identity) header of a
    message. A bare addr-spec keeps its `;params` in the URI: these headers have no
    parameters of their own (RFC 3325 9.1), so `sip:+86...@host;user=phone` means the URI."""
    entries: list[NameAddr] = []
    try:
        for value in values:
            entries += [_identity_entry(item) for item in split_header_list(value)]
        return AssertedIdentity(tuple(entries))
    except (HeaderError, UriError, IdentityError) as exc:
        raise IdentityError(f"Bad {header}: {exc}") from None


def _identity_entry(item: str) -> NameAddr:
    if "<" in item:
        return parse_name_addr(item)
    return NameAddr(None, parse_uri(item))


def asserted_identity(message: Request | Response) -> AssertedIdentity | None:
    """The P-Asserted-Identity of `message`, None without one; IdentityError when malformed."""
    values = message.headers.get_all(PAI)
    return parse_identity(values, PAI) if values else None


def preferred_identity(message: Request | Response) -> AssertedIdentity | None:
    """The P-Preferred-Identity of `message` (a user's hint which of its identities to
    assert, RFC 3325 9.2), None without one; IdentityError when malformed."""
    values = message.headers.get_all(PPI)
    return parse_identity(values, PPI) if values else None


def accept_asserted_identity(headers: Headers, *, trusted: bool) -> AssertedIdentity | None:
    """The asserted identity of a received message, screened at the trust boundary.

    From a peer that is not `trusted` every P-Asserted-Identity is removed from `headers`
    and None returned (RFC 3325 5: only the trust domain asserts identities). From a trusted
    peer it is parsed; a malformed one raises IdentityError and `headers` stay as they were.
    """
    values = headers.get_all(PAI)
    if not trusted:
        headers.remove(PAI)
        return None
    return parse_identity(values, PAI) if values else None


def make_identity(
    user: str,
    host: str,
    *,
    display: str | None = None,
    tel: str | None = None,
    port: int | None = None,
) -> AssertedIdentity:
    """The identity `"display" <sip:user@host[:port];user=phone>` (user=phone when `user`
    is a telephone number), with `<tel:tel>` as a second entry when `tel` (E.164) is given."""
    if display is not None:
        check_display_name(display)
    if tel is not None and not _E164.fullmatch(tel):
        raise IdentityError(f"Bad identity: tel number {tel!r} is not E.164")
    params: dict[str, str | None] = {"user": "phone"} if _DIAL_CHARS.fullmatch(user) else {}
    try:
        sip = parse_uri(str(SipUri("sip", user, None, host, port, params)))
        entries = [NameAddr(display, sip)]
        if tel is not None:
            entries.append(NameAddr(display, parse_uri(f"tel:{tel}")))
    except UriError as exc:
        raise IdentityError(f"Bad identity: {exc}") from None
    return AssertedIdentity(tuple(entries))


# ---- what a callee is shown (RFC 3325 5, RFC 3323 4.1.1.3) -----------------------------------


@dataclass(frozen=True)
class CallerPresentation:
    """The From and the identity headers of an outgoing request."""

    from_: NameAddr
    headers: tuple[tuple[str, str], ...] = field(default=())

    def apply(self, headers: Headers) -> None:
        """Write the From and replace any P-Asserted-Identity, P-Preferred-Identity and
        Privacy in `headers` by ours."""
        headers.set("From", str(self.from_))
        for name in (PAI, PPI, "Privacy"):
            headers.remove(name)
        for name, value in self.headers:
            headers.add(name, value)


def present_caller(
    identity: AssertedIdentity,
    *,
    from_tag: str,
    privacy: Privacy,
    trusted: bool,
    send_pai: bool = True,
) -> CallerPresentation:
    """What the next hop sees of the caller `identity`.

    Without privacy: From is the identity (its sip entry when it has one), and the identity
    is asserted when `send_pai`. With privacy (`id`, `user` or `header`): From is anonymous;
    a `trusted` peer still gets the P-Asserted-Identity with `Privacy: id`, so it bills and
    traces the call but does not pass the identity on; an untrusted one gets neither.
    """
    hide = privacy.hides_identity
    if hide:
        from_ = anonymous_from(from_tag)
    else:
        shown = identity.primary()
        from_ = NameAddr(shown.display, shown.uri, {"tag": _tag(from_tag)})
    headers: list[tuple[str, str]] = []
    if send_pai and (trusted or not hide):
        headers.append((PAI, identity.header_value()))
        if hide:
            headers.append(("Privacy", PrivValue.ID.value))
    return CallerPresentation(from_, tuple(headers))


def _tag(tag: str) -> str:
    if not tag or not _TOKEN.fullmatch(tag):
        raise IdentityError(f"From tag {tag!r} is not a token")
    return tag


# ---- number presentation on trunks ----------------------------------------------------------


class NumberFormat(enum.StrEnum):
    """How a trunk writes numbers (the `number_format` key of a trunk's config)."""

    E164 = "e164"
    E164_NO_PLUS = "e164-no-plus"
    NATIONAL = "national"


def to_trunk_number(
    e164: str, number_format: NumberFormat | str, plan: NumberPlan = DEFAULT_PLAN
) -> str:
    """`e164` ("+8613800138000") as the trunk writes it: "+8613800138000", "8613800138000"
    or, in `plan`'s country, "013800138000" (national; foreign numbers get the international
    prefix, "0044..."). Raises NumberError for a number that is not E.164."""
    fmt = NumberFormat(number_format)
    if not _E164.fullmatch(e164):
        raise NumberError(e164, "not an E.164 number (+ and 7-15 digits, no leading 0)")
    digits = e164[1:]
    if fmt is NumberFormat.E164:
        return e164
    if fmt is NumberFormat.E164_NO_PLUS:
        return digits
    if digits.startswith(plan.country_code):
        return plan.national_prefix + digits[len(plan.country_code) :]
    return plan.international_prefix + digits


def from_trunk_number(
    number: str, number_format: NumberFormat | str, plan: NumberPlan = DEFAULT_PLAN
) -> str:
    """A number from a carrier (a user part or tel number) as E.164 with "+".

    "+..." is always international. On an "e164-no-plus" trunk, digits not starting with 0
    are country code first; everything else is read in `plan`'s dialling format (the
    international prefix, the national prefix, or a bare national number). Raises
    NumberError naming what is wrong.
    """
    fmt = NumberFormat(number_format)
    cleaned = number.strip().translate(_SEPARATORS)
    if fmt is NumberFormat.E164_NO_PLUS and cleaned[:1].isdigit() and cleaned[0] != "0":
        return normalize("+" + cleaned, plan)
    return normalize(cleaned, plan)


def uri_number(uri: SipUri | TelUri) -> str | None:
    """The telephone number a URI carries, separators removed: a tel URI's number, or the
    user part of a sip/sips URI when it is written as a number ("+8613...", "013...");
    None for a name such as "alice"."""
    # RFC 3261 19.1.1: a telephone-subscriber user part may carry ";" parameters.
    text = uri.number if isinstance(uri, TelUri) else (uri.user or "").partition(";")[0]
    if not _DIAL_CHARS.fullmatch(text):
        return None
    cleaned = text.translate(_SEPARATORS)
    return cleaned if cleaned.strip("+") else None
